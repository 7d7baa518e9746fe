"""Fixtures shared by the recipe tests: TinyWorld's quick world and a tiny random Llama saved with its tokenizer.

Every test runs with ALIGNLAB_AUTO_DTYPE=fp32, so `dtype=auto` computes in fp32 on every machine (bf16 where the CPU
has it would change the numbers the parity tests compare); tests of `auto` itself clear it with monkeypatch.

Tests that read ../shared/data carry `@pytest.mark.shared_data(path, ...)`: skipped where a file is missing, except
under CI (the CI environment variable set), where a missing file fails the test -- CI must run them all.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from alignlab.data.world import TinyWorld
from alignlab.model import CausalLM, preset
from alignlab.model.hf import save_model


@pytest.fixture(scope="session", autouse=True)
def auto_dtype_is_fp32():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALIGNLAB_AUTO_DTYPE", "fp32")  # subprocesses inherit it
        yield


@pytest.fixture(scope="module")
def world():
    return TinyWorld(seed=0, size="quick")


def save_tiny_llama(out, tok, dim: int = 32, n_heads: int = 2, max_seq_len: int = 256, seed: int = 0):
    """A random 2-layer Llama with the tokenizer `tok`, saved as a Hugging Face model directory under `out`."""
    torch.manual_seed(seed)
    model = CausalLM(preset("llama", vocab_size=tok.vocab_size, dim=dim, n_layers=2, n_heads=n_heads,
                            max_seq_len=max_seq_len, eos_token_id=tok.eos_token_id))
    return save_model(model, out, tokenizer=tok)


@pytest.fixture(scope="module")
def base(tmp_path_factory, world):
    """A 2-layer, 32-wide Llama with TinyWorld's tokenizer, as a Hugging Face model directory."""
    return save_tiny_llama(tmp_path_factory.mktemp("base"), world.tokenizer())


@pytest.fixture(scope="module")
def server(base):
    """alignlab serve over `base` (its name: "base"), in-process under uvicorn on a free port (test_serve.Server)."""
    from alignlab.model.hf import load_model
    from alignlab.serve import build_state
    from alignlab.text import load_tokenizer

    from .test_serve import Server

    model = load_model(base)
    model.requires_grad_(False)
    s = Server(build_state(model, load_tokenizer(base), model_names=["base"], model_path=str(base)))
    yield s
    s.stop()


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def pytest_configure(config):
    config.addinivalue_line("markers", "shared_data(*paths): files of ../shared/data the test reads; skipped where "
                                       "missing, failed under CI")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    for mark in item.iter_markers("shared_data"):
        missing = [str(p) for p in mark.args if not Path(p).exists()]
        if not missing:
            continue
        why = f"shared data not found: {', '.join(missing)} (see ../shared/data/SOURCES.md)"
        if in_ci():
            pytest.fail(f"{why}; CI is set, and CI runs every test: put the data in place", pytrace=False)
        pytest.skip(why)
