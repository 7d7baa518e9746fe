"""Resume is exact, tensor for tensor: for pretrain, SFT, DPO and GRPO, a run of N steps and the same run stopped
after its checkpoint at N/2 and resumed end with equal final checkpoints -- the model's weights, every optimizer
state, the data sampler and every RNG compared with torch.equal, not through logged (rounded) losses.

The stopped run is the straight run's directory with everything after step N/2 deleted (the checkpoints, best/),
i.e. what a run killed right after writing step N/2 leaves behind; it is resumed in a fresh `run`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from alignlab.cli import main
from alignlab.train.checkpoint import load_checkpoint
from alignlab.train.trainer import TrainConfig

N = 4  # steps; the checkpoint at N / 2 is the one resumed from


def train_config(**kw) -> TrainConfig:
    return TrainConfig(**{"max_steps": N, "lr": 3e-3, "warmup_steps": 1, "eval_every": 0, "save_every": N // 2,
                          "keep_last": 3, "peak_flops": 1e11, "plot": False, **kw})


def stop_after_half(straight: Path, split: Path) -> None:
    """`split` becomes `straight` as it was right after writing the checkpoint of step N / 2."""
    shutil.copytree(straight, split)
    for d in (split / "checkpoints").iterdir():
        if d.name == "best" or (d.name.startswith("step_") and int(d.name[5:]) > N // 2):
            shutil.rmtree(d)
    assert sorted(d.name for d in (split / "checkpoints").iterdir()) == [f"step_{N // 2:06d}"]


TIMINGS = {"elapsed_s", "tokens_per_s", "rollout_s", "rollout_tokens_per_s", "seconds"}  # wall-clock times


def assert_same(a, b, where: str = "state") -> None:
    """Equal nested checkpoint states: tensors with torch.equal (dtype and shape too), the rest with ==, but for
    wall-clock timings."""
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {sorted(map(str, a))} vs " \
                                                             f"{sorted(map(str, b))}"
        for k in a.keys() - TIMINGS:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def assert_same_final_checkpoint(straight: Path, split: Path) -> None:
    final = f"checkpoints/step_{N:06d}"
    a, b = load_checkpoint(straight / final), load_checkpoint(split / final)
    assert a["step"] == b["step"] == N
    for key in ("model", "optimizer"):
        assert a[key], key  # something to compare
    assert a["optimizer"]["state"], "the optimizer has moments by step N"
    a.pop("config"), b.pop("config")  # the run's settings, out_dir included: the two directories differ
    assert_same(a, b)


# --- pretrain ------------------------------------------------------------------------------------------------------

PRETRAIN = ["model.arch=llama", "model.dim=32", "model.n_layers=2", "model.n_heads=2", "block_size=32",
            "batch_size=8", "eval_batches=2", "sample_tokens=8", "train.warmup_steps=1", "train.eval_every=0",
            f"train.save_every={N // 2}", "train.keep_last=3", "train.peak_flops=1e11", "train.lr=3e-3",
            "train.plot=false", f"train.max_steps={N}", "data.tokenizer=char"]


def test_pretrain_resumes_exactly(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog {i * 7 % 13}.\n"
                              for i in range(2000)))

    def pretrain(out: Path, *extra: str) -> int:
        return main(["pretrain", *extra, f"data.source={corpus}", f"data.cache_dir={tmp_path / 'cache'}",
                     f"out_dir={out}", *PRETRAIN])

    assert pretrain(tmp_path / "straight") == 0
    stop_after_half(tmp_path / "straight", tmp_path / "split")
    assert pretrain(tmp_path / "split", "--resume") == 0
    assert_same_final_checkpoint(tmp_path / "straight", tmp_path / "split")


# --- SFT -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["full", "lora"])
def test_sft_resumes_exactly(tmp_path, base, world, method):
    from alignlab.recipes.sft import LoraOptions, SFTConfig, run

    records, val = world.sft_conversations("train")[:48], world.sft_conversations("test")[:8]

    def sft(out: Path, resume: bool) -> dict:
        cfg = SFTConfig(out_dir=str(out), model=str(base), max_len=256, method=method, batch_size=4, eval_batches=1,
                        sample_prompts=0, lora=LoraOptions(r=4, alpha=8), train=train_config())
        return run(cfg, resume=resume, train_records=records, val_records=val)

    assert sft(tmp_path / "straight", False)["status"] == "finished"
    stop_after_half(tmp_path / "straight", tmp_path / "split")
    assert sft(tmp_path / "split", True)["status"] == "finished"
    assert_same_final_checkpoint(tmp_path / "straight", tmp_path / "split")


# --- DPO -----------------------------------------------------------------------------------------------------------


def test_dpo_resumes_exactly(tmp_path, base, world):
    from alignlab.recipes.dpo import DPOConfig, run

    kinds = ("correctness", "safety")
    pairs, val = world.preference_pairs("train", kinds=kinds)[:16], world.preference_pairs("test", kinds=kinds)[:4]

    def dpo(out: Path, resume: bool) -> dict:
        cfg = DPOConfig(out_dir=str(out), model=str(base), max_len=256, batch_size=4, eval_batches=1,
                        train=train_config(lr=1e-3))
        return run(cfg, resume=resume, train_records=pairs, val_records=val)

    assert dpo(tmp_path / "straight", False)["status"] == "finished"
    stop_after_half(tmp_path / "straight", tmp_path / "split")
    assert dpo(tmp_path / "split", True)["status"] == "finished"
    assert_same_final_checkpoint(tmp_path / "straight", tmp_path / "split")


# --- GRPO ----------------------------------------------------------------------------------------------------------


def low_ids(prompts, completions, completion_ids, **kwargs):
    """A reward with variance between a random model's completions: the share of tokens in the lower ids."""
    return [sum(t < 384 for t in ids) / max(len(ids), 1) for ids in completion_ids]


def test_grpo_resumes_exactly(tmp_path, base, world):
    """mu = 3 optimizer steps per rollout batch: the checkpoint at step 2 is in the middle of the first batch, so the
    resumed run must restore the batch (and the sampler's state) instead of sampling a new one."""
    from alignlab.recipes.grpo import GRPOConfig, run
    from alignlab.rl.collect import RolloutConfig

    train, val = world.rl_prompts("train", level=2)[:12], world.rl_prompts("test", level=2)[:2]

    def grpo(out: Path, resume: bool) -> dict:
        rollout = RolloutConfig(data="tinyworld:rl:2", num_generations=4, prompts_per_step=2,
                                max_completion_length=12, eval_prompts=2, allow_custom_rewards=True,
                                reward_funcs={"format": 1.0, f"{__name__}:low_ids": 1.0})
        cfg = GRPOConfig(out_dir=str(out), model=str(base), rollout=rollout, num_iterations=3,
                         train=train_config(lr=1e-3, schedule="constant", warmup_steps=0))
        return run(cfg, resume=resume, train_records=train, val_records=val)

    assert grpo(tmp_path / "straight", False)["status"] == "finished"
    stop_after_half(tmp_path / "straight", tmp_path / "split")
    assert grpo(tmp_path / "split", True)["status"] == "finished"
    assert_same_final_checkpoint(tmp_path / "straight", tmp_path / "split")
