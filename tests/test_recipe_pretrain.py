"""`alignlab pretrain` end to end on a slice of tinyshakespeare: outputs, HF loading, resume, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from alignlab.cli import main
from alignlab.model.hf import load_model
from alignlab.text import load_tokenizer

from .hf_models import require

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare" / "input.txt"
needs_data = pytest.mark.shared_data(SHAKESPEARE)  # skipped where missing, failed under CI (conftest.py)
TINY = ["model.arch=llama", "model.dim=32", "model.n_layers=2", "model.n_heads=2", "block_size=32", "batch_size=8",
        "eval_batches=2", "sample_tokens=20", "train.warmup_steps=2", "train.eval_every=4", "train.save_every=4",
        "train.peak_flops=1e11", "train.lr=3e-3"]


@pytest.fixture
def corpus(tmp_path):
    if SHAKESPEARE.exists():
        text = SHAKESPEARE.read_text()[:60_000]
    else:  # the recipe itself does not need the real corpus
        text = "the quick brown fox jumps over the lazy dog.\n" * 1500
    path = tmp_path / "corpus.txt"
    path.write_text(text)
    return path


def pretrain(tmp_path, corpus, *extra, out="run"):
    args = ["pretrain", f"data.source={corpus}", f"data.cache_dir={tmp_path / 'cache'}", f"out_dir={tmp_path / out}",
            *TINY, *extra]
    return main(args)


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_pretrain_writes_a_loadable_model_and_learns(tmp_path, corpus, capsys):
    assert pretrain(tmp_path, corpus, "train.max_steps=12") == 0
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "samples.jsonl", "plots/loss.png", "result.json", "model/config.json",
                 "model/model.safetensors", "checkpoints/step_000012/state.pt", "checkpoints/best/state.pt"):
        assert (run / name).exists(), name
    losses = [r["loss"] for r in metrics(run) if "loss" in r]
    assert len(losses) == 12 and losses[-1] < losses[0] - 0.3
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "finished" and result["val_loss"] < losses[0]
    model, tok = load_model(run / "model"), load_tokenizer(run / "model")
    assert model.config.vocab_size == tok.vocab_size and model.config.max_seq_len == 32
    assert main(["generate", "--model", str(run / "model"), "--prompt", "the", "--max-new-tokens", "5"]) == 0
    assert "val loss" in capsys.readouterr().out


def test_transformers_loads_the_pretrained_model(tmp_path, corpus):
    transformers = require("transformers")
    pretrain(tmp_path, corpus, "train.max_steps=2", "model.arch=llama")
    run = tmp_path / "run"
    ours = load_model(run / "model")
    hf = transformers.AutoModelForCausalLM.from_pretrained(run / "model").eval()
    x = torch.randint(0, ours.config.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf(x).logits, atol=1e-4, rtol=1e-4)


def test_resume_from_the_command_line_matches_a_straight_run(tmp_path, corpus):
    pretrain(tmp_path, corpus, "train.max_steps=8", out="straight")
    pretrain(tmp_path, corpus, "train.max_steps=8", "train.save_every=4", out="split")
    # pretend the split run died after step 4: drop its later checkpoints and resume
    split = tmp_path / "split"
    import shutil

    for d in ("step_000008", "best"):
        shutil.rmtree(split / "checkpoints" / d)
    assert main(["pretrain", "--resume", f"data.source={corpus}", f"data.cache_dir={tmp_path / 'cache'}",
                 f"out_dir={split}", *TINY, "train.max_steps=8"]) == 0
    a = [r for r in metrics(tmp_path / "straight") if "loss" in r]
    b = [r for r in metrics(split) if "loss" in r]
    assert [r["step"] for r in b] == list(range(1, 9))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]


def test_one_line_errors(tmp_path, corpus, capsys):
    assert main(["pretrain", f"data.source={tmp_path / 'missing.txt'}", f"out_dir={tmp_path / 'r'}", *TINY]) == 2
    err = capsys.readouterr().err
    assert "missing.txt" in err and err.count("\n") == 1
    assert main(["pretrain", "train.lrr=1", f"out_dir={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err
    assert "unknown key train.lrr" in err and "train.lr" in err and err.count("\n") == 1
    assert main(["pretrain", "model.dimm=3", f"data.source={corpus}", f"data.cache_dir={tmp_path / 'cache'}",
                 f"out_dir={tmp_path / 'r'}", *TINY]) == 2
    assert "model: " in capsys.readouterr().err
    pretrain(tmp_path, corpus, "train.max_steps=4", out="c")
    capsys.readouterr()
    state = tmp_path / "c" / "checkpoints" / "step_000004" / "state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    assert pretrain(tmp_path, corpus, "train.max_steps=8", "--resume", out="c") == 2
    err = capsys.readouterr().err
    assert "corrupt or truncated" in err and "step_000004" in err and err.count("\n") == 1


@needs_data
def test_shakespeare_config_parses():
    from alignlab.config import load_config
    from alignlab.recipes.pretrain import PretrainConfig

    root = Path(__file__).resolve().parents[1]
    for f in sorted((root / "configs" / "pretrain").glob("*.yaml")):
        cfg = load_config(PretrainConfig, f, [f"data.source={SHAKESPEARE}"])
        assert cfg.train.max_steps > 0, f
