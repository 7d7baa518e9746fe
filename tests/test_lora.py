"""LoRA / rsLoRA / DoRA / PiSSA against PEFT: adapters cross both ways with the same logits, same targets,
same trainable counts, same initialisation and gradients; merge, disable, unload, checkpointing, errors."""

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from alignlab.errors import CheckpointError
from alignlab.lora import (
    LoraConfig,
    LoraLinear,
    apply_lora,
    count_parameters,
    disable_lora,
    find_targets,
    load_adapter,
    lora_layers,
    lora_state_dict,
    merge_and_unload,
    merge_lora,
    save_adapter,
    unmerge_lora,
)
from alignlab.model.hf import load_model

from .hf_models import VOCAB, make_hf_model, require

peft = require("peft")

VARIANTS = {
    "lora": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    "rslora": dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "down_proj"], use_rslora=True),
    "dora": dict(r=4, lora_alpha=8, target_modules=["q_proj", "o_proj", "up_proj"], use_dora=True),
    "pissa": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "gate_proj"], init_lora_weights="pissa"),
    "pissa-dora": dict(r=2, lora_alpha=4, target_modules=["k_proj", "down_proj"], init_lora_weights="pissa",
                       use_dora=True),
    "all-linear": dict(r=2, lora_alpha=4, target_modules="all-linear"),
    "regex": dict(r=2, lora_alpha=16, target_modules=r".*\.(k|o)_proj", lora_dropout=0.1),
}


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("llama")
    make_hf_model("llama").save_pretrained(d)
    return d


def inputs(B=2, T=16, seed=0):
    return torch.randint(3, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def peft_model(**kw):
    """A fresh HF Llama (the same weights as llama_dir) with a PEFT adapter."""
    return peft.get_peft_model(make_hf_model("llama"), peft.LoraConfig(task_type="CAUSAL_LM", **kw)).eval()


@torch.no_grad()
def randomize(model, seed=1):
    """Make the adapter matter: random B (zero at init) and a magnitude away from its initial norms."""
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        if "lora_B" in name or "lora_A" in name:
            p.add_(0.1 * torch.randn(p.shape, generator=g))
        elif "lora_magnitude_vector" in name:
            p.mul_(1 + 0.2 * torch.randn(p.shape, generator=g))


def peft_targets(pm) -> set[str]:
    layer = peft.tuners.lora.LoraLayer
    return {n.removeprefix("base_model.model.") for n, m in pm.named_modules() if isinstance(m, layer)}


def max_diff(a, b):
    return (a - b).abs().max().item()


# --- crossing adapters with PEFT --------------------------------------------------------------------

@torch.no_grad()
@pytest.mark.parametrize("variant", VARIANTS)
def test_alignlab_adapter_loads_in_peft(variant, llama_dir, tmp_path):
    ours = apply_lora(load_model(llama_dir), LoraConfig(**VARIANTS[variant])).eval()
    randomize(ours)
    save_adapter(ours, tmp_path / "ad", base_model_name_or_path=str(llama_dir))
    theirs = peft.PeftModel.from_pretrained(make_hf_model("llama"), tmp_path / "ad").eval()
    assert peft_targets(theirs) == {n for n, _ in lora_layers(ours)}
    x = inputs()
    assert max_diff(theirs(x).logits, ours(x)) <= 1e-4
    with disable_lora(ours):
        assert max_diff(ours(x), theirs(x).logits) > 1e-2  # the adapter matters


@torch.no_grad()
@pytest.mark.parametrize("variant", VARIANTS)
def test_peft_adapter_loads_in_alignlab(variant, llama_dir, tmp_path):
    theirs = peft_model(**VARIANTS[variant])
    randomize(theirs)
    theirs.save_pretrained(tmp_path / "ad")
    ours = load_adapter(load_model(llama_dir), tmp_path / "ad").eval()
    assert peft_targets(theirs) == {n for n, _ in lora_layers(ours)}
    x = inputs()
    assert max_diff(theirs(x).logits, ours(x)) <= 1e-4
    with disable_lora(ours):
        assert max_diff(ours(x), theirs(x).logits) > 1e-2  # the adapter matters


def test_saved_files_are_peft_format(llama_dir, tmp_path):
    from safetensors.torch import load_file

    ours = apply_lora(load_model(llama_dir), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], use_dora=True))
    save_adapter(ours, tmp_path, base_model_name_or_path="some/model")
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM"
    assert cfg["base_model_name_or_path"] == "some/model" and cfg["target_modules"] == ["q_proj"]
    assert cfg["use_dora"] is True and cfg["fan_in_fan_out"] is False and cfg["modules_to_save"] is None
    keys = set(load_file(tmp_path / "adapter_model.safetensors"))
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert "base_model.model.model.layers.1.self_attn.q_proj.lora_magnitude_vector" in keys
    assert len(keys) == 2 * 3
    # and PEFT reads the config back as written
    pc = peft.PeftConfig.from_pretrained(tmp_path)
    assert (pc.r, pc.lora_alpha, pc.use_dora, set(pc.target_modules)) == (4, 8, True, {"q_proj"})


@pytest.mark.parametrize("variant", ["lora", "dora", "rslora"])
def test_gradients_match_peft(variant, llama_dir):
    kw = {**VARIANTS[variant], "init_lora_weights": False}  # random A and B in PEFT; copied into ours
    theirs = peft_model(**kw).train()
    randomize(theirs)
    ours = apply_lora(load_model(llama_dir), LoraConfig(**kw)).train()
    state = {n.removeprefix("base_model.model.").replace(".default", ""): p
             for n, p in theirs.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for n, p in ours.named_parameters():
            if p.requires_grad:
                p.copy_(state[n.replace("lora_magnitude_vector", "lora_magnitude_vector.weight")])
    x, y = inputs(), inputs(seed=1)
    F.cross_entropy(theirs(x).logits.flatten(0, 1), y.flatten()).backward()
    F.cross_entropy(ours(x).flatten(0, 1), y.flatten()).backward()
    for n, p in ours.named_parameters():
        if p.requires_grad:
            ref = state[n.replace("lora_magnitude_vector", "lora_magnitude_vector.weight")].grad
            assert max_diff(p.grad, ref) <= 1e-5 * max(1.0, ref.abs().max().item()), n


# --- initialisation ----------------------------------------------------------------------------------

@torch.no_grad()
@pytest.mark.parametrize("variant", ["lora", "dora", "pissa", "pissa-dora"])
def test_adapter_starts_as_a_no_op(variant, llama_dir):
    base = load_model(llama_dir)
    ours = apply_lora(load_model(llama_dir), LoraConfig(**VARIANTS[variant]))
    x = inputs()
    assert max_diff(base(x), ours(x)) <= 1e-4


@torch.no_grad()
@pytest.mark.parametrize("variant", ["pissa", "pissa-dora", "dora"])
def test_init_matches_peft(variant, llama_dir):
    """PiSSA's A, B and residual base, and DoRA's magnitude, are PEFT's for the same weights."""
    kw = VARIANTS[variant]
    theirs = peft_model(**kw)
    ours = apply_lora(load_model(llama_dir), LoraConfig(**kw))
    mods = dict(theirs.base_model.model.named_modules())
    for name, layer in lora_layers(ours):
        ref = mods[name]
        assert max_diff(layer.base_layer.weight, ref.base_layer.weight) <= 1e-5, name
        if kw.get("init_lora_weights") == "pissa":
            assert max_diff(layer.lora_A.weight, ref.lora_A["default"].weight) <= 1e-5, name
            assert max_diff(layer.lora_B.weight, ref.lora_B["default"].weight) <= 1e-5, name
        if kw.get("use_dora"):
            assert max_diff(layer.lora_magnitude_vector, ref.lora_magnitude_vector["default"].weight) <= 1e-5


def test_dora_magnitude_is_the_row_norm_and_rslora_scales_by_sqrt_r():
    base = nn.Linear(6, 5)
    layer = LoraLinear(base, r=4, lora_alpha=8, use_dora=True, use_rslora=True)
    assert layer.scaling == 8 / 2
    assert torch.allclose(layer.lora_magnitude_vector, base.weight.norm(dim=1))  # over inputs, one per output
    assert LoraLinear(nn.Linear(6, 5), r=4, lora_alpha=8).scaling == 2
    g = LoraLinear(nn.Linear(600, 5), r=4, init_lora_weights="gaussian")
    assert torch.all(g.lora_B.weight == 0) and abs(g.lora_A.weight.std().item() - 0.25) < 0.02


# --- target selection and counts ---------------------------------------------------------------------

@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], ["self_attn.o_proj", "mlp.down_proj"],
                                     ["model.layers.0.self_attn.q_proj"], r".*layers\.1\..*_proj",
                                     r"model\.layers\.0\.mlp\.(up|gate)_proj", "all-linear"])
@pytest.mark.parametrize("use_dora", [False, True])
def test_targets_and_trainable_count_match_peft(targets, use_dora, llama_dir):
    theirs = peft_model(r=4, target_modules=targets, use_dora=use_dora)
    ours = apply_lora(load_model(llama_dir), LoraConfig(r=4, target_modules=targets, use_dora=use_dora))
    assert set(find_targets(load_model(llama_dir), LoraConfig(target_modules=targets))) == peft_targets(theirs)
    assert {n for n, _ in lora_layers(ours)} == peft_targets(theirs)
    assert count_parameters(ours) == theirs.get_nb_trainable_parameters()


def test_only_the_adapter_trains(llama_dir):
    ours = apply_lora(load_model(llama_dir), LoraConfig(r=2, target_modules="all-linear", use_dora=True)).train()
    randomize(ours)
    ours(inputs()).pow(2).mean().backward()
    trained = {n for n, p in ours.named_parameters() if p.grad is not None}
    assert trained == set(lora_state_dict(ours)) and all("lora_" in n for n in trained)
    assert all(not p.requires_grad for n, p in ours.named_parameters() if "lora_" not in n)


# --- merge, disable, unload ---------------------------------------------------------------------------

@torch.no_grad()
@pytest.mark.parametrize("variant", ["lora", "dora", "pissa-dora", "rslora"])
def test_merged_equals_unmerged(variant, llama_dir):
    ours = apply_lora(load_model(llama_dir), LoraConfig(**VARIANTS[variant])).eval()
    randomize(ours)
    weights = {k: v.clone() for k, v in ours.state_dict().items()}
    x = inputs()
    before = ours(x)
    merge_lora(ours)
    assert all(layer.merged for _, layer in lora_layers(ours))
    assert max_diff(ours(x), before) <= 1e-4
    unmerge_lora(ours)
    assert max_diff(ours(x), before) <= 1e-5
    assert all(max_diff(v, weights[k]) <= 1e-5 for k, v in ours.state_dict().items())


@torch.no_grad()
def test_merge_and_unload_gives_a_plain_model(llama_dir):
    ours = apply_lora(load_model(llama_dir), LoraConfig(**VARIANTS["dora"])).eval()
    randomize(ours)
    x = inputs()
    before = ours(x)
    plain = merge_and_unload(ours)
    assert not lora_layers(plain) and not hasattr(plain, "lora_config")
    assert set(plain.state_dict()) == set(load_model(llama_dir).state_dict())
    assert max_diff(plain(x), before) <= 1e-4


@torch.no_grad()
def test_disable_gives_the_base_model(llama_dir):
    base = load_model(llama_dir)
    ours = apply_lora(load_model(llama_dir), LoraConfig(**VARIANTS["dora"])).eval()
    randomize(ours)
    x = inputs()
    adapted, ref = ours(x), base(x)
    assert max_diff(adapted, ref) > 1e-2
    with disable_lora(ours):
        with disable_lora(ours):
            pass
        assert max_diff(ours(x), ref) <= 1e-5  # still disabled after a nested block
    assert max_diff(ours(x), adapted) <= 1e-6
    merge_lora(ours)
    with disable_lora(ours):  # merged adapters come out for the block, and go back in after it
        assert max_diff(ours(x), ref) <= 1e-4
    assert all(layer.merged for _, layer in lora_layers(ours))
    assert max_diff(ours(x), adapted) <= 1e-4


# --- gradient checkpointing ----------------------------------------------------------------------------

@pytest.mark.parametrize("use_dora", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(use_dora, llama_dir):
    ours = apply_lora(load_model(llama_dir), LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.2,
                                                        use_dora=use_dora)).train()
    randomize(ours)
    x, y = inputs(), inputs(seed=1)
    grads = []
    for checkpointing in (False, True):
        ours.gradient_checkpointing = checkpointing
        ours.zero_grad()
        torch.manual_seed(0)  # the same dropout masks; checkpointing replays the RNG state in its recompute
        F.cross_entropy(ours(x).flatten(0, 1), y.flatten()).backward()
        grads.append({n: p.grad.clone() for n, p in ours.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        assert max_diff(grads[0][n], grads[1][n]) <= 1e-6, n


# --- a base without a float weight (a quantized layer) --------------------------------------------------

class FakeQuantLinear(nn.Module):
    """Stands in for a 4-bit linear: the weight lives in a buffer, dequantize() rebuilds it."""

    def __init__(self, weight, bias):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("codes", weight.clone())
        self.bias = nn.Parameter(bias.clone())

    def dequantize(self):
        return self.codes.float()

    def forward(self, x):
        return F.linear(x, self.dequantize(), self.bias)


@pytest.mark.parametrize("use_dora", [False, True])
def test_lora_over_a_quantized_base(use_dora):
    torch.manual_seed(0)
    dense = nn.Linear(12, 10)
    quant = FakeQuantLinear(dense.weight.detach(), dense.bias.detach())
    a = LoraLinear(dense, r=3, lora_alpha=6, use_dora=use_dora, init_lora_weights=False)
    b = LoraLinear(quant, r=3, lora_alpha=6, use_dora=use_dora)
    b.load_state_dict({**b.state_dict(), **{k: v for k, v in a.state_dict().items() if k.startswith("lora_")}})
    x = torch.randn(4, 12)
    assert max_diff(a(x), b(x)) <= 1e-6
    b(x).sum().backward()
    assert b.lora_A.weight.grad is not None
    with pytest.raises(ValueError, match="cannot merge LoRA into a FakeQuantLinear"):
        b.merge()
    with pytest.raises(ValueError, match="PiSSA init needs a float base weight"):
        LoraLinear(quant, r=2, init_lora_weights="pissa")


# --- errors ---------------------------------------------------------------------------------------------

def test_error_messages(llama_dir, tmp_path):
    model = load_model(llama_dir)
    with pytest.raises(ValueError, match=r"target_modules=\['qproj'\] matches no module.*'q_proj'"):
        apply_lora(model, LoraConfig(target_modules=["qproj"]))
    with pytest.raises(ValueError, match="output head 'lm_head'"):
        apply_lora(model, LoraConfig(target_modules=["q_proj", "lm_head"]))
    with pytest.raises(ValueError, match="'model.layers.0.input_layernorm', a RMSNorm; LoRA wraps linear layers"):
        apply_lora(model, LoraConfig(target_modules=["input_layernorm"]))
    assert not lora_layers(model) and all(p.requires_grad for p in model.parameters())  # untouched
    with pytest.raises(ValueError, match="bias='all' is not supported"):
        LoraConfig(bias="all")
    with pytest.raises(ValueError, match="init_lora_weights must be one of"):
        LoraConfig(init_lora_weights="olora")
    with pytest.raises(ValueError, match="positive integer"):
        LoraConfig(r=0)
    apply_lora(model, LoraConfig())
    with pytest.raises(ValueError, match="already has LoRA layers"):
        apply_lora(model, LoraConfig())
    with pytest.raises(ValueError, match="no LoRA layers to save"):
        save_adapter(load_model(llama_dir), tmp_path / "none")


def test_gpt2_adapters_are_refused(tmp_path):
    d = tmp_path / "gpt2"
    make_hf_model("gpt2").save_pretrained(d)
    model = apply_lora(load_model(d), LoraConfig(target_modules=["q_proj"]))  # LoRA itself works
    with pytest.raises(ValueError, match="GPT-2.*c_attn"):
        save_adapter(model, tmp_path / "ad")
    with pytest.raises(ValueError, match="GPT-2.*c_attn"):
        load_adapter(load_model(d), tmp_path / "ad")


def test_bad_adapters_are_refused(llama_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    ad = tmp_path / "ad"
    save_adapter(apply_lora(load_model(llama_dir), LoraConfig(r=4, target_modules=["q_proj"])), ad)
    cfg_path, w_path = ad / "adapter_config.json", ad / "adapter_model.safetensors"
    cfg, tensors = json.loads(cfg_path.read_text()), load_file(w_path)

    def refused(match, cfg_edit=None, drop=None):
        cfg_path.write_text(json.dumps({**cfg, **(cfg_edit or {})}))
        save_file({k: v for k, v in tensors.items() if k != drop}, w_path)
        model = load_model(llama_dir)
        with pytest.raises(ValueError, match=match):
            load_adapter(model, ad)
        assert not lora_layers(model)  # nothing applied

    refused(r"PEFT options \['rank_pattern'\]", {"rank_pattern": {"q_proj": 8}})
    refused("peft_type 'IA3' is not supported", {"peft_type": "IA3"})
    refused("init_lora_weights='olora'", {"init_lora_weights": "olora"})
    refused("matches no module", {"target_modules": ["c_attn"]})
    refused(r"1 missing tensors \['model.layers.0.self_attn.q_proj.lora_B.weight'\]",
            drop="base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight")
    refused(r"lora_A.weight has shape \(4, 64\), this model needs \(8, 64\)", {"r": 8})
    refused("2 unexpected", {"target_modules": ["model.layers.0.self_attn.q_proj"]})
    with pytest.raises(CheckpointError, match="no adapter config"):
        load_adapter(load_model(llama_dir), tmp_path)
