"""Fixtures shared by the recipe tests: TinyWorld's quick world and a tiny random Llama saved with its tokenizer."""

from __future__ import annotations

import pytest
import torch

from alignlab.data.world import TinyWorld
from alignlab.model import CausalLM, preset
from alignlab.model.hf import save_model


@pytest.fixture(scope="module")
def world():
    return TinyWorld(seed=0, size="quick")


@pytest.fixture(scope="module")
def base(tmp_path_factory, world):
    """A 2-layer, 32-wide Llama with TinyWorld's tokenizer, as a Hugging Face model directory."""
    tok = world.tokenizer()
    torch.manual_seed(0)
    model = CausalLM(preset("llama", vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=2, max_seq_len=256,
                            eos_token_id=tok.eos_token_id))
    return save_model(model, tmp_path_factory.mktemp("base"), tokenizer=tok)
