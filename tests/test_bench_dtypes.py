"""The dtype axis of the benchmarks (benchmarks/dtypes.py, benchmarks/bench_generate.py): the --dtype list and its
default, the hook that checks what a forward computed in, and the bf16 rule for greedy tokens."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def dtypes(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import dtypes

    cached = dtypes.native_bf16
    cached.cache_clear()
    yield dtypes
    cached.cache_clear()


def test_parse_dtypes(dtypes, monkeypatch):
    assert dtypes.parse_dtypes("bf16, fp32,bf16", "train") == ["bf16", "fp32"]
    with pytest.raises(SystemExit, match="fp16"):
        dtypes.parse_dtypes("fp32,fp16", "train")
    monkeypatch.setattr(dtypes, "native_bf16", lambda purpose: (True, "test"))
    assert dtypes.parse_dtypes(None, "infer") == ["fp32", "bf16"]
    monkeypatch.setattr(dtypes, "native_bf16", lambda purpose: (False, "test"))
    assert dtypes.parse_dtypes(None, "train") == ["fp32"]


def test_default_follows_alignlab_auto(dtypes, monkeypatch):
    """The default is what alignlab's `auto` picks on this CPU (the suite pins auto to fp32)."""
    monkeypatch.setenv("ALIGNLAB_AUTO_DTYPE", "bf16")
    assert dtypes.native_bf16("train")[0]
    dtypes.native_bf16.cache_clear()
    monkeypatch.setenv("ALIGNLAB_AUTO_DTYPE", "fp32")
    assert dtypes.default_dtypes("infer") == "fp32"
    assert dtypes.capability().startswith(torch.backends.cpu.get_cpu_capability())


def test_forward_dtypes_sees_autocast_and_removes_itself(dtypes):
    layer = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8)
    with dtypes.ForwardDtypes(calls=2) as probe:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            layer(x)
            with torch.no_grad():
                layer(x)
            layer(x)  # the second grad-mode call: the probe has seen enough and removes its hook
        assert probe.handle is None
        layer(x)  # fp32, unseen
    assert probe.summary() == {"grad": "bfloat16", "no_grad": "bfloat16"}
    assert probe.check("bf16", "layer") == "grad bfloat16"
    with pytest.raises(SystemExit, match="does not compute"):
        probe.check("fp32", "layer")
    with dtypes.ForwardDtypes() as probe:
        layer(x)
    with pytest.raises(SystemExit):
        probe.check("bf16", "fp32 layer")


def test_bf16_agreement_accepts_only_near_ties(dtypes):
    import bench_generate

    logits = torch.tensor([3.0, 2.98, 0.0, 1.0, 0, 0, 0, 0, 0, 0])  # tokens 0 and 1: a near tie (0.02 / std 1.1)

    class Fixed(torch.nn.Module):
        def forward(self, ids):
            return SimpleNamespace(logits=logits.expand(1, ids.shape[1], 10))

    want = [[0, 5, 5], [0, 5, 5], [0, 5, 5]]
    got = [[0, 5, 5], [1, 7, 7], [3, 5, 5]]  # identical; parts at a near tie (0 vs 1); parts at a wide gap (0 vs 3)
    a = bench_generate.bf16_agreement(got, want, [[2], [2], [2]], Fixed())
    assert (a["rows"], a["identical"], a["agree"]) == (3, 1, 2)
    assert a["mean_prefix"] == 1.0 and a["largest_gap"] > bench_generate.TIE
    sys.modules.pop("bench_generate", None)
