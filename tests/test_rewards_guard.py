"""RewardRunner's limits: threads stuck past their time limit are capped (the function then runs in a child process),
memory limits that cannot be enforced say so; and `module:function` rewards are imported only on request."""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time

import pytest

from alignlab.errors import ConfigError
from alignlab.rewards import RewardRunner
from alignlab.rewards.custom import import_reward

can_fork = pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")


def _stuck_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"reward:{name}" and t.is_alive()]


@can_fork
def test_stuck_threads_are_capped_then_the_function_runs_in_a_process():
    release = threading.Event()

    def never_returns(prompts=None, completions=(), **kwargs):
        release.wait()  # in a child process the event is a copy: it waits until it is killed
        return [1.0] * len(completions)

    def quick(prompts=None, completions=(), **kwargs):
        return [0.5] * len(completions)

    warnings = []
    runner = RewardRunner([never_returns, quick], timeout_s=0.1, warn=warnings.append)  # max_stuck=3
    try:
        start = time.perf_counter()
        for _ in range(10):
            assert runner(None, ["a", "b"]) == {"never_returns": [None, None], "quick": [0.5, 0.5]}
        assert time.perf_counter() - start < 10
        assert len(_stuck_threads("never_returns")) == 3  # not 10: the cap
        assert runner.stats["never_returns"].timeouts == 10 and runner.stats["quick"].timeouts == 0
        assert not [c for c in multiprocessing.active_children() if c.is_alive()]  # the children were killed
    finally:
        release.set()
    assert len(warnings) == 2 and all("\n" not in w for w in warnings)
    assert "timed out after 0.1 s" in warnings[0]
    assert "'never_returns' has 3 calls still running" in warnings[1] and "child process" in warnings[1]
    for t in _stuck_threads("never_returns"):
        t.join(5)


def test_memory_limit_in_threads_warns_once():
    warnings = []
    runner = RewardRunner([lambda completions, **kw: [1.0] * len(completions)], memory_mb=256, warn=warnings.append)
    runner(None, ["a"])
    runner(None, ["b"])
    assert len(warnings) == 1 and "memory_mb=256" in warnings[0] and "isolation='process'" in warnings[0]
    quiet = []
    RewardRunner([lambda completions, **kw: [1.0]], warn=quiet.append)(None, ["a"])  # no limit asked: nothing said
    assert quiet == []


@can_fork
def test_process_isolation_keeps_its_default_memory_limit():
    runner = RewardRunner([lambda completions, **kw: [1.0]], isolation="process", warn=lambda m: None)
    assert runner.memory_mb == 1024
    assert RewardRunner([lambda completions, **kw: [1.0]], isolation="process", memory_mb=64).memory_mb == 64


def test_runner_options_are_config_errors():
    with pytest.raises(ConfigError, match="isolation"):
        RewardRunner([lambda completions, **kw: [1.0]], isolation="container")
    with pytest.raises(ConfigError, match="2 reward weights for 1"):
        RewardRunner([lambda completions, **kw: [1.0]], weights=[1, 2])


# --- module:function -----------------------------------------------------------------------------------------------

REWARDS_PY = """
def brevity(prompts=None, completions=(), **kwargs):
    return [1.0 / (1 + len(c)) for c in completions]

class Rewards:
    @staticmethod
    def loud(prompts=None, completions=(), **kwargs):
        return [float(c.isupper()) for c in completions]

NOT_A_FUNCTION = 3
"""


@pytest.fixture
def reward_dir(tmp_path, monkeypatch):
    (tmp_path / "alignlab_test_rewards.py").write_text(REWARDS_PY)
    (tmp_path / "alignlab_test_broken.py").write_text("def oops(:\n")
    (tmp_path / "alignlab_test_needs.py").write_text("import alignlab_no_such_dependency\n")
    monkeypatch.chdir(tmp_path)  # found in the current directory, as `alignlab` run from there would
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    yield tmp_path
    for name in ("alignlab_test_rewards", "alignlab_test_broken", "alignlab_test_needs"):
        sys.modules.pop(name, None)


def test_import_reward_needs_the_opt_in(reward_dir):
    with pytest.raises(ConfigError, match="allow_custom_rewards=true"):
        import_reward("alignlab_test_rewards:brevity", allow_code=False)
    assert "alignlab_test_rewards" not in sys.modules  # nothing was imported, let alone run


def test_import_reward_imports_and_checks(reward_dir):
    brevity = import_reward("alignlab_test_rewards:brevity", allow_code=True)
    assert brevity(None, ["ab", ""]) == [1 / 3, 1.0]
    assert import_reward("alignlab_test_rewards:Rewards.loud", True)(None, ["OK", "no"]) == [1.0, 0.0]
    assert str(reward_dir) not in sys.path  # the current directory was only borrowed
    cases = {
        "alignlab_test_rewards": "module:function",
        "alignlab_test_rewards:": "module:function",
        "alignlab_test_rewards:missing": "has no 'missing'",
        "alignlab_test_rewards:NOT_A_FUNCTION": "not a function",
        "alignlab_test_rewards:Rewards": "not a function",
        "alignlab_test_nowhere:fn": "no module 'alignlab_test_nowhere'",
        "alignlab_test_broken:oops": "SyntaxError",
        "alignlab_test_needs:fn": "alignlab_no_such_dependency",
    }
    for spec, why in cases.items():
        with pytest.raises(ConfigError, match=why) as e:
            import_reward(spec, allow_code=True)
        assert repr(spec) in str(e.value), spec


def test_import_reward_reads_an_installed_module():
    assert import_reward("os.path:basename", allow_code=True) is os.path.basename
