"""MFU never reads above 100%: the peak is a sustained matmul rate in the dtype the model trains in (the precision the
run resolved: bf16 autocast measures the bf16 peak), and a peak that read low (measured while the cores were busy) is
raised to the rate the model itself reached."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import alignlab.train.mfu as mfu
from alignlab.train.distributed import Dist
from alignlab.train.trainer import TrainConfig, Trainer
from tests.test_precision import AVX2, AVX512_BF16, fake_cpu
from tests.train_fixture import VOCAB, RandomWindows, make_trainer


def _logged_mfu(out_dir) -> list[float]:
    lines = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["mfu"] for r in lines if "mfu" in r]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_mfu_of_real_steps_is_at_most_one(tmp_path, cache, monkeypatch, dtype):
    measured, real = [], mfu.measure_peak_flops
    monkeypatch.setattr(mfu, "measure_peak_flops", lambda device, dtype, **kw: measured.append(dtype) or
                        real(device, dtype, **kw))
    trainer = make_trainer(tmp_path / "run", steps=3, peak_flops=0.0, save_every=0, dtype=dtype)  # peak measured here
    trainer.fit()
    logged = _logged_mfu(tmp_path / "run")
    assert len(logged) == 3 and all(0 < m <= 1 for m in logged), logged
    assert measured == [{"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]]  # the peak of the training dtype


def test_a_peak_measured_on_a_busy_machine_is_not_cached(cache, monkeypatch):
    measured = []
    monkeypatch.setattr(mfu, "measure_peak_flops", lambda device, dtype, **kw: measured.append(dtype) or 1e11)
    clock = iter(range(0, 10**6, 1000))  # other processes took 1000 CPU seconds during the measurement
    monkeypatch.setattr(mfu, "_others_cpu_seconds", lambda: next(clock))
    cpu = torch.device("cpu")
    assert mfu.peak_flops(cpu) == 1e11 and not (cache / "peak_flops.json").exists()
    monkeypatch.setattr(mfu, "_others_cpu_seconds", lambda: 0.0)  # an idle machine
    assert mfu.peak_flops(cpu) == 1e11 and mfu.peak_flops(cpu) == 1e11 and len(measured) == 2  # then cached
    assert list(json.loads((cache / "peak_flops.json").read_text()).values()) == [1e11]


def test_a_peak_that_read_low_is_raised_to_what_the_model_reached(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(mfu, "measure_peak_flops", lambda device, dtype, **kw: 1e6)  # measured on a busy machine
    trainer = make_trainer(tmp_path / "run", steps=3, peak_flops=0.0, save_every=0)
    trainer.fit()
    logged = _logged_mfu(tmp_path / "run")
    assert len(logged) == 3 and all(0 < m <= 1 for m in logged), logged  # not 1000x: 1 GFLOP/s against 1 MFLOP/s
    assert mfu.peak_flops(torch.device("cpu"), torch.float32) > 1e6  # and the cache keeps the raised peak


class BigramLM(torch.nn.Module):
    """Linear layers only, so that it trains under CPU bf16 autocast."""

    def __init__(self, dim: int = 64):
        super().__init__()
        self.emb, self.head = torch.nn.Embedding(VOCAB, dim), torch.nn.Linear(dim, VOCAB)

    def forward(self, ids):
        return self.head(self.emb(ids))


def _bigram_step(model, batch, normaliser):
    logits = model(batch["input_ids"]).float()
    return F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), reduction="sum") / normaliser


def test_the_peak_is_measured_in_the_training_dtype(tmp_path, cache, monkeypatch):
    measured = []

    def measure(device, dtype, **kw):
        measured.append(dtype)
        return 1e12

    monkeypatch.setattr(mfu, "measure_peak_flops", measure)
    cfg = TrainConfig(max_steps=2, warmup_steps=0, eval_every=0, save_every=0, plot=False, device="cpu", dtype="bf16")
    Trainer(cfg, BigramLM(), RandomWindows(4, Dist()), _bigram_step, tmp_path / "run",
            flops_per_token=6 * 64 * VOCAB).fit()
    assert measured == [torch.bfloat16]  # autocast runs the matmuls in bf16, whose peak is ~2x fp32's on AVX-512
    assert all(0 < m <= 1 for m in _logged_mfu(tmp_path / "run"))


@pytest.mark.parametrize("machine,dtype", [(AVX512_BF16, torch.bfloat16), (AVX2, torch.float32)])
def test_auto_measures_the_peak_of_the_precision_it_resolved(tmp_path, monkeypatch, machine, dtype):
    fake_cpu(monkeypatch, tmp_path, machine, speedup=2.5)  # dtype=auto on a fast bf16 CPU, then on an AVX2 one
    measured = []
    monkeypatch.setattr(mfu, "measure_peak_flops", lambda device, dtype, **kw: measured.append(dtype) or 1e12)
    cfg = TrainConfig(max_steps=2, warmup_steps=0, eval_every=0, save_every=0, plot=False, device="cpu")
    result = Trainer(cfg, BigramLM(), RandomWindows(4, Dist()), _bigram_step, tmp_path / "run",
                     flops_per_token=6 * 64 * VOCAB).fit()
    assert measured == [dtype] and result["precision"]["dtype"] == {torch.bfloat16: "bf16"}.get(dtype, "fp32")


def test_measured_peak_is_a_real_rate():
    peak = mfu.measure_peak_flops(torch.device("cpu"), torch.float32, sizes=(256, 512), seconds=0.2)
    assert 1e8 < peak < 1e14
