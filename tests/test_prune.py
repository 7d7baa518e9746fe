"""Depth pruning (alignlab/model/prune.py, `alignlab prune`): the kept blocks compute what they computed inside the
bigger model (transformers with the same layers removed is the oracle), and block influence finds a block that
does nothing."""

from __future__ import annotations

import json

import pytest
import torch

from alignlab.cli import main
from alignlab.model import CausalLM, preset
from alignlab.model.hf import load_model, save_model
from alignlab.model.prune import block_influence, keep_blocks, most_influential
from tests.hf_models import make_hf_model, require


def _model(n_layers=4, seed=0):
    torch.manual_seed(seed)
    return CausalLM(preset("llama", vocab_size=96, dim=32, n_layers=n_layers, n_heads=4, n_kv_heads=2,
                           max_seq_len=64)).eval()


def test_keeping_every_block_changes_nothing():
    model = _model()
    ids = torch.randint(0, 96, (2, 12))
    with torch.no_grad():
        assert torch.equal(keep_blocks(model, [0, 1, 2, 3])(ids), model(ids))


def test_pruned_model_equals_transformers_with_the_same_layers_removed(tmp_path):
    require("transformers")
    hf = make_hf_model("llama", num_hidden_layers=4)
    hf.save_pretrained(tmp_path / "full")
    ours = keep_blocks(load_model(tmp_path / "full", dtype=torch.float32), [0, 2, 3])
    assert ours.config.n_layers == 3
    hf.model.layers = torch.nn.ModuleList([hf.model.layers[i] for i in (0, 2, 3)])
    for j, layer in enumerate(hf.model.layers):
        layer.self_attn.layer_idx = j
    hf.config.num_hidden_layers = 3
    ids = torch.randint(3, 128, (2, 16))
    with torch.no_grad():
        want = hf(ids, use_cache=False).logits
        got = ours(ids)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # and it round-trips as a model directory of 3 layers whose greedy decoding uses the right cache layers
    path = save_model(ours, tmp_path / "pruned")
    again = load_model(path, dtype=torch.float32)
    assert again.config.n_layers == 3
    with torch.no_grad():
        torch.testing.assert_close(again(ids), want, atol=1e-5, rtol=1e-5)
        hf.generation_config.eos_token_id = None
        out = hf.generate(ids[:1], max_new_tokens=6, do_sample=False, pad_token_id=0)
    from alignlab.infer import Engine, SamplingParams

    (c,) = Engine(again).generate([ids[0].tolist()], SamplingParams(max_new_tokens=6, temperature=0.0, ignore_eos=True))
    assert c.token_ids == out[0, 16:].tolist()


def test_block_influence_is_zero_for_a_block_that_does_nothing():
    model = _model()
    with torch.no_grad():  # block 2 adds nothing to the residual stream: its output projections are zero
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
    bi = block_influence(model, [torch.randint(0, 96, (3, 20))])
    assert len(bi) == 4
    assert abs(bi[2]) < 1e-6
    assert min(bi[0], bi[1], bi[3]) > 1e-4
    assert most_influential(bi, 3) == [0, 1, 3]
    assert most_influential([0.1, 0.5, 0.2, 0.4], 2) == [1, 3]  # kept in the model's order
    assert model.training is False


def test_bad_choices_are_refused():
    model = _model()
    with pytest.raises(ValueError, match="keep must name blocks"):
        keep_blocks(model, [0, 4])
    with pytest.raises(ValueError, match="n_layers"):
        most_influential([0.1, 0.2], 3)


def test_cli_prunes_by_influence_and_by_name(tmp_path, base, capsys):
    assert main(["prune", "--model", str(base), "--layers", "1", "--out", str(tmp_path / "a"),
                 "--n-samples", "4", "--seq-len", "32"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(summary["block_influence"]) == 2 and len(summary["kept_blocks"]) == 1
    assert summary["kept_blocks"] == [max(range(2), key=lambda i: summary["block_influence"][i])]
    assert load_model(tmp_path / "a").config.n_layers == 1
    meta = json.loads((tmp_path / "a" / "alignlab.json").read_text())
    assert meta["kept_blocks"] == summary["kept_blocks"]
    assert main(["prune", "--model", str(base), "--keep", "1", "--out", str(tmp_path / "b")]) == 0
    assert main(["prune", "--model", str(base), "--keep", "0,5", "--out", str(tmp_path / "c")]) == 2
    assert "has blocks 0-1" in capsys.readouterr().err
    assert main(["prune", "--model", str(base), "--keep", "a", "--out", str(tmp_path / "c")]) == 2
    assert main(["prune", "--model", str(base), "--layers", "3", "--out", str(tmp_path / "c")]) == 2
