"""The training loop: exact resume, atomic checkpoints, the NaN guard, DDP, gradient accumulation, signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alignlab.errors import CheckpointError, ConfigError
from alignlab.objectives import lm_loss
from alignlab.train import checkpoint as ckpt
from alignlab.train.metrics import read_metrics
from alignlab.train.trainer import TrainConfig, TrainingDiverged, resolve_device
from tests.train_fixture import make_trainer

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "train_fixture.py"


def run_fixture(*args, expect_kill=False, nproc=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(FIXTURE), *map(str, args)]
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(29500 + os.getpid() % 1000), str(FIXTURE), *map(str, args)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if expect_kill is None:  # torchrun reports a killed worker as a failure of its own
        assert p.returncode != 0
    elif expect_kill:
        assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    else:
        assert p.returncode == 0, p.stderr[-2000:]
    return p


def losses(out_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(Path(out_dir) / "metrics.jsonl") if "loss" in r}


def test_resume_after_kill_is_exact(tmp_path):
    run_fixture(tmp_path / "straight", "--steps", 20)
    run_fixture(tmp_path / "killed", "--steps", 20, "--kill-at", 10, expect_kill=True)
    assert ckpt.latest_checkpoint(tmp_path / "killed" / "checkpoints").name == "step_000010"
    run_fixture(tmp_path / "killed", "--steps", 20, "--resume")
    a, b = losses(tmp_path / "straight"), losses(tmp_path / "killed")
    assert sorted(a) == sorted(b) == list(range(1, 21))
    assert a == b  # bit-identical loss at every step, before and after the kill


def test_kill_during_save_keeps_previous_checkpoint(tmp_path):
    out = tmp_path / "run"
    run_fixture(out, "--steps", 20, "--kill-in-save", 10, expect_kill=True)
    ck = out / "checkpoints"
    assert (ck / "step_000010.tmp").exists()  # the half-written save
    assert ckpt.latest_checkpoint(ck).name == "step_000005"
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(ck))["step"] == 5
    run_fixture(out, "--steps", 20, "--resume")
    assert not (ck / "step_000010.tmp").exists()
    run_fixture(tmp_path / "straight", "--steps", 20)
    assert losses(out) == losses(tmp_path / "straight")


def test_ddp_two_processes_equal_one(tmp_path):
    run_fixture(tmp_path / "one", "--steps", 6, "--fused")
    run_fixture(tmp_path / "two", "--steps", 6, "--fused", nproc=2)
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for s in a:
        assert abs(a[s] - b[s]) < 1e-5, (s, a[s], b[s])
    wa = ckpt.load_checkpoint(tmp_path / "one" / "checkpoints" / "step_000006")["model"]
    wb = ckpt.load_checkpoint(tmp_path / "two" / "checkpoints" / "step_000006")["model"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_fsdp_two_processes_equal_one_and_resume(tmp_path):
    run_fixture(tmp_path / "one", "--steps", 10, "--fused")
    run_fixture(tmp_path / "fsdp", "--steps", 10, "--fused", "--distributed", "fsdp", "--kill-at", 5, nproc=2,
                expect_kill=None)
    state = ckpt.load_checkpoint(tmp_path / "fsdp" / "checkpoints" / "step_000005")  # full, unsharded weights
    ref = ckpt.load_checkpoint(tmp_path / "one" / "checkpoints" / "step_000005")
    for k in ref["model"]:
        torch.testing.assert_close(state["model"][k], ref["model"][k], atol=1e-5, rtol=1e-4)
    run_fixture(tmp_path / "fsdp", "--steps", 10, "--fused", "--distributed", "fsdp", "--resume", nproc=2)
    a, b = losses(tmp_path / "one"), losses(tmp_path / "fsdp")
    assert sorted(a) == sorted(b) == list(range(1, 11))
    for s in a:
        assert abs(a[s] - b[s]) < 1e-5, (s, a[s], b[s])


def _variable_length_data(n: int = 8, seed: int = 0):
    """Sequences of lengths 3..16, right-padded; padding and a prompt prefix carry label -100."""
    g = torch.Generator().manual_seed(seed)
    lengths = [3, 16, 5, 16, 4, 9, 16, 7][:n]
    seqs = [torch.randint(1, 64, (L + 1,), generator=g) for L in lengths]
    return seqs


def _batches(seqs):
    T = max(len(s) for s in seqs) - 1
    x = torch.zeros(len(seqs), T, dtype=torch.long)
    y = torch.full((len(seqs), T), -100)
    for i, s in enumerate(seqs):
        x[i, :len(s) - 1] = s[:-1]
        y[i, :len(s) - 1] = s[1:]
        y[i, :1] = -100  # a "prompt" token that is not learned
    return {"input_ids": x, "labels": y}


class FixedBatches:
    def __init__(self, batches):
        self.batches, self.i = batches, 0

    def next_batch(self):
        b = self.batches[self.i % len(self.batches)]
        self.i += 1
        return b

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, s):
        self.i = s["i"]


def _one_step(tmp_path, micro_batches, accum, loss_fn):
    trainer = make_trainer(tmp_path, steps=1, grad_clip=0.0, grad_accum=accum, save_every=0)
    trainer.data = FixedBatches(micro_batches)
    trainer.loss_fn = loss_fn
    return trainer.train_step()


def test_grad_accumulation_2x4_equals_1x8(tmp_path):
    seqs = _variable_length_data()
    step = lambda m, b, n: lm_loss(m(b["input_ids"]), b["labels"], n)  # noqa: E731
    big = _one_step(tmp_path / "a", [_batches(seqs)], 1, step)
    acc = _one_step(tmp_path / "b", [_batches(seqs[:4]), _batches(seqs[4:])], 2, step)
    assert abs(big["loss"] - acc["loss"]) < 1e-5
    assert abs(big["grad_norm"] - acc["grad_norm"]) < 1e-5 * big["grad_norm"]
    # the mean of per-micro-batch means is not the same objective: the test can tell them apart
    mean_of_means = lambda m, b, n: lm_loss(m(b["input_ids"]), b["labels"]) / 2  # noqa: E731
    wrong = _one_step(tmp_path / "c", [_batches(seqs[:4]), _batches(seqs[4:])], 2, mean_of_means)
    assert abs(big["grad_norm"] - wrong["grad_norm"]) > 1e-3 * big["grad_norm"]


def test_gradient_checkpointing_and_fused_loss_give_the_same_step(tmp_path):
    plain = make_trainer(tmp_path / "a", steps=1, save_every=0).train_step()
    fused = make_trainer(tmp_path / "b", steps=1, save_every=0, fused=True).train_step()
    ckpted = make_trainer(tmp_path / "c", steps=1, save_every=0, fused=True, gradient_checkpointing=True)
    assert ckpted.raw_model.gradient_checkpointing
    ckpted = ckpted.train_step()
    for other in (fused, ckpted):
        assert abs(other["loss"] - plain["loss"]) < 1e-5
        assert abs(other["grad_norm"] - plain["grad_norm"]) < 1e-5 * plain["grad_norm"]


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, steps=20)

    def poisoned(model, batch, n):
        loss = lm_loss(model(batch["input_ids"]), batch["labels"], n)
        return loss * float("nan") if trainer.step == 7 else loss

    trainer.loss_fn = poisoned
    with pytest.raises(TrainingDiverged) as e:
        trainer.fit()
    msg = str(e.value)
    assert "step 7" in msg and "loss is nan" in msg and "step_000005" in msg
    state = ckpt.load_checkpoint(tmp_path / "checkpoints" / "step_000005")
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert all(torch.isfinite(p).all() for p in trainer.raw_model.parameters())  # no step was taken


def test_sigterm_saves_and_resume_finishes(tmp_path):
    trainer = make_trainer(tmp_path, steps=30, save_every=100)
    step_fn = trainer.loss_fn

    def send_term(model, batch, n):
        if trainer.step == 12:
            os.kill(os.getpid(), signal.SIGTERM)
        return step_fn(model, batch, n)

    trainer.loss_fn = send_term
    result = trainer.fit()
    assert result["status"] == "interrupted by SIGTERM" and result["step"] == 13
    assert ckpt.latest_checkpoint(tmp_path / "checkpoints").name == "step_000013"
    again = make_trainer(tmp_path, steps=30, save_every=100).fit(resume=True)
    assert again["status"] == "finished" and again["step"] == 30
    assert sorted(losses(tmp_path)) == list(range(1, 31))


def test_corrupt_and_truncated_checkpoints_give_one_line_errors(tmp_path):
    make_trainer(tmp_path, steps=5).fit()
    path = tmp_path / "checkpoints" / "step_000005" / "state.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointCorrupt, match="corrupt or truncated") as e:
        make_trainer(tmp_path, steps=10).fit(resume=True)
    assert "\n" not in str(e.value) and "step_000005" in str(e.value)
    path.write_bytes(b"garbage")
    with pytest.raises(ckpt.CheckpointCorrupt, match="corrupt or truncated"):
        ckpt.load_checkpoint(path.parent)
    with pytest.raises(CheckpointError, match="step_000009: no such checkpoint"):  # a user's path: a user error
        make_trainer(tmp_path, steps=10).fit(resume=tmp_path / "checkpoints" / "step_000009")
    assert issubclass(ckpt.CheckpointCorrupt, CheckpointError)


def test_fresh_run_refuses_to_clobber_checkpoints(tmp_path):
    make_trainer(tmp_path, steps=5).fit()
    with pytest.raises(ConfigError, match="overwrite"):
        make_trainer(tmp_path, steps=5).fit()
    assert make_trainer(tmp_path, steps=3, overwrite=True).fit()["step"] == 3
    assert [s for s, _ in ckpt.step_dirs(tmp_path / "checkpoints")] == [3]


def test_metrics_eval_best_and_plot(tmp_path):
    trainer = make_trainer(tmp_path, steps=10, eval_every=5, plot=True, tensorboard=True)
    calls = []

    def evaluate(model):
        calls.append(trainer.step)
        return {"val_loss": 10.0 - trainer.step}  # improves every time

    trainer.evaluate = evaluate
    trainer.sample = lambda model: [f"sample at {trainer.step}"]
    result = trainer.fit()
    assert calls == [5, 10] and result["val_loss"] == 0.0
    records = read_metrics(tmp_path / "metrics.jsonl")
    train = [r for r in records if "loss" in r]
    assert len(train) == 10 and {"lr", "grad_norm", "tokens_per_s", "mfu", "elapsed_s"} <= set(train[0])
    assert 0 < train[-1]["mfu"] < 1
    assert ckpt.load_checkpoint(tmp_path / "checkpoints" / "best")["step"] == 10
    assert (tmp_path / "plots" / "loss.png").stat().st_size > 1000
    assert (tmp_path / "samples.jsonl").read_text().count("sample at") == 2
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_train_config_validation():
    with pytest.raises(ConfigError, match="schedule"):
        TrainConfig(schedule="exp")
    with pytest.raises(ConfigError, match="grad_accum"):
        TrainConfig(grad_accum=0)
    with pytest.raises(ConfigError, match="train.device='gpu': expected auto, cpu, cuda or cuda:N"):
        resolve_device("gpu")  # torch's own error would be a RuntimeError, which the CLI treats as a bug


def test_overfit_warning_needs_two_rises_of_the_held_out_loss_while_training_loss_falls():
    from alignlab.train.trainer import overfit_warning

    class Bar:
        lines = []

        def write(self, s):
            self.lines.append(s)

    bar = Bar()
    assert not overfit_warning([(2.0, 2.0), (1.9, 1.8)], 10, bar)
    assert not overfit_warning([(2.0, 2.0), (2.1, 1.8), (2.05, 1.7)], 10, bar)  # one rise only
    assert not overfit_warning([(2.0, 2.0), (2.1, 2.1), (2.2, 2.2)], 10, bar)  # training loss rose too: diverging
    assert overfit_warning([(2.0, 2.0), (2.1, 1.8), (2.2, 1.6)], 30, bar)
    assert "step 30: held-out loss rose at two evaluations in a row (2.0000 -> 2.1000 -> 2.2000)" in bar.lines[0]
