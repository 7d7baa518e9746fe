"""`alignlab agent-rl` (recipes/agent_rl.py) on the tiny random Llama: the run's files and metrics, exact resume,
no gradient from a group whose games all ended alike, config errors, and games through alignlab serve (adapter
pushed each step) equal to local ones."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from safetensors.torch import load_file

from alignlab.config import load_config
from alignlab.envs.tictactoe import SQUARES
from alignlab.infer import Completion
from alignlab.recipes import agent_rl
from alignlab.recipes.agent_rl import AgentRLConfig, run, start_states
from alignlab.text import load_tokenizer


def config(tmp_path, base, name="run", **kw) -> AgentRLConfig:
    train = {"max_steps": 3, "lr": 1e-2, "eval_every": 0, "save_every": 1, "plot": True, **kw.pop("train", {})}
    return load_config(AgentRLConfig, None, [f"model={base}", f"out_dir={tmp_path / name}", "starts_per_step=2",
                                              "group_size=4", "eval_games=4", "max_new_tokens=8", "threads=1"]
                       + [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in kw.items()]
                       + [f"train.{k}={v}" for k, v in train.items()])


def metrics(path):
    return [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def random_mover(monkeypatch, base):
    """Games played by a seeded random mover that is sometimes illegal, so that rewards differ within a group; the
    policy's log-probs of those replies are still what the loss trains."""
    tok = load_tokenizer(base)

    def generator(model, tokenizer, params, autocast=None):
        def generate(prompt_ids, seeds):
            outs = []
            for ids, seed in zip(prompt_ids, seeds):
                move = random.Random(seed).choice(SQUARES)
                text = f"<move>{move}</move>"
                outs.append(Completion(tok.encode(text, add_special_tokens=False) + [tok.eos_token_id], text, None,
                                       "stop", ids))
            return outs
        return generate

    monkeypatch.setattr(agent_rl, "local_generator", generator)


def test_a_run_plays_trains_and_writes_its_files(tmp_path, base, random_mover):
    result = run(config(tmp_path, base))
    out = tmp_path / "run"
    assert result["status"] == "finished" and result["step"] == 3
    steps = [r for r in metrics(out) if "loss" in r]
    assert len(steps) == 3
    for r in steps:
        assert r["win"] + r["draw"] + r["loss"] + r["invalid"] == pytest.approx(1.0)
        assert math.isfinite(r["loss"]) and r["rows"] >= 8 and r["moves"] >= 0
    assert any(r["grad_norm"] > 0 for r in steps)  # groups whose games ended differently teach something
    assert {"val/win", "val/invalid", "val/sampled_win"} <= set(result["start"]) | set(result)
    assert (out / "plots" / "agent.png").exists() and (out / "model" / "config.json").exists()
    lines = (out / "trajectories.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["messages"][0]["role"] == "system"
    assert json.loads((out / "start.json").read_text()) == result["start"]


def test_resume_continues_exactly(tmp_path, base, random_mover):
    import shutil

    run(config(tmp_path, base, "full"))
    run(config(tmp_path, base, "cut"))
    # a run killed after logging step 3's game, before its checkpoint; and a log line cut short by the kill
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "step_000003")
    with open(tmp_path / "cut" / "trajectories.jsonl", "a") as f:
        f.write('{"step": 3, "rew')
    run(config(tmp_path, base, "cut"), resume=True)
    a = load_file(tmp_path / "full" / "model" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    last = [r for r in metrics(tmp_path / "cut") if r["step"] == 3 and "loss" in r][-1]
    full = [r for r in metrics(tmp_path / "full") if r["step"] == 3 and "loss" in r][-1]
    assert last["loss"] == full["loss"] and last["win"] == full["win"]
    games = [(tmp_path / n / "trajectories.jsonl").read_text() for n in ("full", "cut")]
    assert games[0] == games[1]  # one game a step, none twice


def test_a_group_whose_games_all_ended_alike_teaches_nothing(tmp_path, base, monkeypatch):
    """Every game lost to the same illegal reply: every advantage is 0, so the weights do not move."""
    tok = load_tokenizer(base)

    def generator(model, tokenizer, params, autocast=None):
        def generate(prompt_ids, seeds):
            ids = tok.encode("<move>Z9</move>", add_special_tokens=False) + [tok.eos_token_id]
            return [Completion(ids, "<move>Z9</move>", None, "stop", p) for p in prompt_ids]
        return generate

    monkeypatch.setattr(agent_rl, "local_generator", generator)
    run(config(tmp_path, base, train={"max_steps": 2}))
    steps = [r for r in metrics(tmp_path / "run") if "loss" in r]
    assert all(r["invalid"] == 1.0 and r["frac_reward_zero_std"] == 1.0 and r["grad_norm"] == 0.0 for r in steps)
    a, b = load_file(base / "model.safetensors"), load_file(tmp_path / "run" / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_start_states_are_seeded_per_step():
    assert start_states(1, 0, 4) == start_states(1, 0, 4)
    assert start_states(1, 0, 4) != start_states(1, 1, 4) != start_states(2, 0, 4)
    assert max(start_states(12345, 999, 8)) < agent_rl.EVAL_START


def test_config_checks(tmp_path, base):
    from alignlab.errors import ConfigError

    for kw, msg in (({"env": "chess"}, "env must be"), ({"group_size": 1}, "group_size"),
                    ({"backend": "server"}, "needs method=lora"),
                    ({"backend": "server", "method": "lora"}, "server_url"), ({"temperature": 0}, "temperature"),
                    ({"env_options": {"hist": True}}, "env_options")):
        with pytest.raises(ConfigError, match=msg):
            run(config(tmp_path, base, **kw))


def test_games_through_the_server_equal_local_games(tmp_path, base, server):
    """method=lora, the adapter pushed to alignlab serve every step: the same replies, games and updates as local
    generation from the same policy with the same seeds."""
    kw = {"method": "lora", "env": "guess", "max_new_tokens": 6, "train": {"lr": 5e-2}}
    local = run(config(tmp_path, base, "local", **kw))
    remote = run(config(tmp_path, base, "remote", backend="server", server_url=server.api, server_model="base",
                        **kw))
    assert local["status"] == remote["status"] == "finished"
    for a, b in zip(metrics(tmp_path / "local"), metrics(tmp_path / "remote")):
        for k in ("loss", "reward", "win", "moves", "rows"):
            if k in a:
                assert a[k] == pytest.approx(b[k], abs=1e-6), k
    games = [(tmp_path / n / "trajectories.jsonl").read_text() for n in ("local", "remote")]
    assert games[0] == games[1]
    models = httpx_models(server)
    assert models == ["base"]  # the last pushed adapter is unloaded at the end


def httpx_models(server) -> list[str]:
    import httpx

    return [m["id"] for m in httpx.get(server.api + "/models").json()["data"]]
