"""Model merging: every method's formula on hand-computed examples, state-dict and adapter merges on tiny random
Llamas (the adapters' exact deltas, the concatenated adapter), `alignlab merge` end to end, and its errors."""

import copy
import json
import math
import re

import pytest
import torch

from alignlab.cli import main
from alignlab.errors import CheckpointError, ConfigError
from alignlab.lora import LoraConfig, apply_lora, load_adapter, merge_and_unload, save_adapter
from alignlab.merge import (
    MergeOptions,
    concat_adapters,
    dare_linear,
    dare_ties,
    drop,
    linear,
    merge_directories,
    merge_state_dicts,
    merge_tensor,
    read_adapter_deltas,
    slerp,
    task_arithmetic,
    ties,
    trim,
)
from alignlab.merge.models import model_tensors
from alignlab.model import CausalLM, preset
from alignlab.model.hf import load_model, save_model

T = torch.tensor

# ----------------------------------------------------------------------------------------------------------------
# The formulas, by hand


def test_linear_is_the_weighted_average():
    a, b = T([1.0, 2.0]), T([3.0, 6.0])
    assert torch.equal(linear([a, b], [1, 3]), T([(1 + 9) / 4, (2 + 18) / 4]))  # Σ w θ / Σ w
    assert torch.equal(linear([a, b], [1, 3], normalize=False), T([10.0, 20.0]))  # Σ w θ
    assert torch.equal(linear([a, b]), T([2.0, 4.0]))  # weights default to 1
    with pytest.raises(ValueError, match="sum to 0"):
        linear([a, b], [1, -1])


def test_task_arithmetic_adds_the_weighted_task_vectors():
    base, t1, t2 = T([1.0, 1.0, 1.0]), T([2.0, 0.0, 1.0]), T([1.0, 3.0, 1.0])
    # τ1 = [1, -1, 0], τ2 = [0, 2, 0]; 1 τ1 + 0.5 τ2 = [1, 0, 0]; λ = 2
    assert torch.equal(task_arithmetic(base, [t1, t2], [1, 0.5], lam=2.0), T([3.0, 1.0, 1.0]))
    # normalize divides by Σ w = 1.5
    assert torch.allclose(task_arithmetic(base, [t1, t2], [1, 0.5], normalize=True), T([1 + 1 / 1.5, 1.0, 1.0]))


def test_trim_keeps_the_largest_magnitudes():
    x = T([0.1, -3.0, 2.0, 0.5])
    assert torch.equal(trim(x, 0.5), T([0.0, -3.0, 2.0, 0.0]))  # k = 2
    assert torch.equal(trim(x, 0.1), T([0.0, -3.0, 0.0, 0.0]))  # k = max(1, ⌊0.4⌋) = 1
    assert trim(x, 1.0) is x


# three task vectors over three entries (base 0)
TAUS = [T([1.0, -2.0, 3.0]), T([-2.0, 1.0, 1.0]), T([-2.0, 0.5, -1.0])]


def test_ties_elects_the_sign_and_averages_the_agreeing_entries():
    base = torch.zeros(3)
    # entry 0: 1 - 2 - 2 < 0 -> "-": mean(-2, -2) = -2;  entry 1: -2 + 1 + 0.5 < 0 -> "-": -2
    # entry 2: 3 + 1 - 1 > 0 -> "+": mean(3, 1) = 2
    assert torch.equal(ties(base, TAUS), T([-2.0, -2.0, 2.0]))
    # density 2/3 keeps 2 entries each: [0, -2, 3], [-2, 1, 0], [-2, 0, -1]; a trimmed 0 never joins the mean
    # entry 0: "-": mean(-2, -2);  entry 1: -2 + 1 < 0 -> "-": -2;  entry 2: 3 - 1 > 0 -> "+": 3 alone
    assert torch.equal(ties(base, TAUS, density=2 / 3), T([-2.0, -2.0, 3.0]))
    # weights 1, 1, 3 scale the vote and the mean: w τ3 = [-6, 1.5, -3]
    # entry 0: -7 -> "-": (-2 - 6) / (1 + 3);  entry 1: -2 + 1 + 1.5 > 0 -> "+": (1 + 1.5) / (1 + 3)
    # entry 2: 3 + 1 - 3 > 0 -> "+": (3 + 1) / 2
    assert torch.allclose(ties(base, TAUS, [1, 1, 3]), T([-2.0, 0.625, 2.0]))
    # λ scales the merged task vector; without normalize it is the sum over the agreeing entries
    assert torch.allclose(ties(base + 1, [t + 1 for t in TAUS], lam=0.5), 1 + 0.5 * T([-2.0, -2.0, 2.0]))
    assert torch.equal(ties(base, TAUS, normalize=False), T([-4.0, -2.0, 4.0]))
    # a tie (sum exactly 0) elects "+"
    assert torch.equal(ties(torch.zeros(1), [T([1.0]), T([-1.0])]), T([1.0]))


def test_dare_drops_with_probability_p_and_rescales_by_one_over_one_minus_p():
    density = 0.3  # p = 0.7
    x = torch.ones(20_000)
    out = drop(x, density, torch.Generator().manual_seed(0))
    mask = torch.bernoulli(torch.full_like(x, density), generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, mask / density)  # kept entries are 1 / (1 - p), the rest 0
    assert out.unique().tolist() == pytest.approx([0.0, 1 / density])
    assert abs((out > 0).float().mean().item() - density) < 0.01  # kept with probability 1 - p
    assert abs(out.mean().item() - 1) < 0.03  # E[drop(τ)] = τ
    assert torch.equal(drop(x, density, torch.Generator().manual_seed(0)), out)  # the seed fixes the mask
    assert not torch.equal(drop(x, density, torch.Generator().manual_seed(1)), out)


def test_dare_linear_and_dare_ties_by_hand_with_a_fixed_seed():
    base = T([1.0, 1.0, 1.0, 1.0])
    models = [base + T([1.0, -2.0, 3.0, 4.0]), base + T([-2.0, 1.0, 1.0, -1.0])]
    g = torch.Generator().manual_seed(3)
    masks = [torch.bernoulli(torch.full((4,), 0.5), generator=g) for _ in models]  # the draws, in model order
    kept = [(m - base) * mask / 0.5 for m, mask in zip(models, masks)]
    out = dare_linear(base, models, [1, 2], density=0.5, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(out, base + kept[0] + 2 * kept[1])
    out = dare_ties(base, models, [1, 2], density=0.5, generator=torch.Generator().manual_seed(3))
    expected = []
    for j in range(4):
        votes = [w * k[j] for w, k in zip([1, 2], kept)]
        sign = 1.0 if sum(votes) >= 0 else -1.0
        expected.append(sum(v for v in votes if v != 0 and math.copysign(1, v) == sign))
    assert torch.allclose(out, base + T(expected))
    # density 1 drops nothing: DARE is then task arithmetic (and DARE-TIES is TIES without trimming)
    assert torch.equal(dare_linear(base, models, [1, 2]), task_arithmetic(base, models, [1, 2]))
    assert torch.equal(dare_ties(base, models, normalize=True), ties(base, models))


def test_dare_is_task_arithmetic_in_expectation():
    base, model = torch.zeros(4), T([1.0, -2.0, 0.5, 4.0])
    g = torch.Generator().manual_seed(0)
    mean = torch.stack([dare_linear(base, [model], density=0.25, generator=g) for _ in range(4000)]).mean(0)
    assert torch.allclose(mean, model, atol=0.15)


def test_slerp_follows_the_great_circle():
    a, b = T([1.0, 0.0]), T([0.0, 1.0])
    assert torch.allclose(slerp(a, b, 0.5), T([math.sqrt(0.5), math.sqrt(0.5)]))
    assert torch.allclose(slerp(a, b, 0.0), a) and torch.allclose(slerp(a, b, 1.0), b)
    c = T([0.5, math.sqrt(3) / 2])  # 60° from a: halfway is 30°
    assert torch.allclose(slerp(a, c, 0.5), T([math.cos(math.pi / 6), math.sin(math.pi / 6)]))
    # the angle comes from the directions, the coefficients apply to the tensors as they are
    assert torch.allclose(slerp(2 * a, b, 0.5), math.sqrt(0.5) * T([2.0, 1.0]))
    # nearly colinear: linear interpolation
    assert torch.equal(slerp(a, 3 * a, 0.25), 0.75 * a + 0.25 * 3 * a)
    with pytest.raises(ValueError, match="exactly 2"):
        merge_tensor("slerp", [a, b, c])


def test_merge_tensor_needs_a_base_for_task_vectors():
    with pytest.raises(ValueError, match="needs the base"):
        merge_tensor("ties", TAUS)
    assert torch.equal(merge_tensor("ties", TAUS, base=torch.zeros(3)), T([-2.0, -2.0, 2.0]))


# ----------------------------------------------------------------------------------------------------------------
# Tiny models and adapters

VOCAB = 64


def tiny(seed: int = 0, **kw) -> CausalLM:
    torch.manual_seed(seed)
    config = preset("llama", **{**dict(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2, max_seq_len=64), **kw})
    return CausalLM(config).eval()


def fine_tune(base: CausalLM, seed: int, names=("q_proj", "down_proj", "norm")) -> CausalLM:
    """The base with noise on the tensors whose names contain one of `names` (the rest unchanged)."""
    model = copy.deepcopy(base)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(n in name for n in names):
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """A base, two full fine-tunes, and three LoRA adapters of it (random A and B), as directories."""
    root = tmp_path_factory.mktemp("merge")
    base = tiny()
    out = {"base": save_model(base, root / "base")}
    (root / "base" / "tokenizer.json").write_text("{}\n")  # stands for the tokenizer files the merge copies
    out["ft_a"] = save_model(fine_tune(base, 1), root / "ft_a")
    out["ft_b"] = save_model(fine_tune(base, 2, names=("q_proj", "up_proj")), root / "ft_b")
    for name, seed, cfg in (("lora_a", 1, dict(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])),
                            ("lora_b", 2, dict(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"])),
                            ("lora_c", 3, dict(r=2, lora_alpha=8, target_modules=["v_proj", "up_proj"]))):
        torch.manual_seed(seed)
        model = apply_lora(copy.deepcopy(base), LoraConfig(init_lora_weights=False, **cfg))
        out[name] = save_adapter(model, root / name)
    return out


def adapted(base_dir, adapter_dir) -> dict:
    """The adapter folded into the base, as alignlab's LoRA merges it."""
    return model_tensors(merge_and_unload(load_adapter(load_model(base_dir), adapter_dir)))


def test_state_dict_merge_is_the_tensor_merge_and_copies_what_no_model_changed(dirs):
    base, a, b = (model_tensors(load_model(dirs[k])) for k in ("base", "ft_a", "ft_b"))
    options = MergeOptions("ties", density=0.5)
    merged, counts = merge_state_dicts(options, [a, b], [1.0, 0.5], base=base)
    key = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(merged[key], ties(base[key], [a[key], b[key]], [1.0, 0.5], density=0.5))
    changed = [k for k in base if not (torch.equal(a[k], base[k]) and torch.equal(b[k], base[k]))]
    assert counts == {"merged": len(changed), "copied": len(base) - len(changed)}
    assert torch.equal(merged["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    # DARE: the seed fixes every mask; another seed gives another merge
    dare = [merge_state_dicts(MergeOptions("dare_ties", density=0.5, seed=s), [a, b], base=base)[0][key]
            for s in (0, 0, 1)]
    assert torch.equal(dare[0], dare[1]) and not torch.equal(dare[0], dare[2])


def test_state_dict_merge_names_the_tensor_that_does_not_fit(dirs):
    base, a = (model_tensors(load_model(dirs[k])) for k in ("base", "ft_a"))
    bad = {**a, "model.layers.1.mlp.up_proj.weight": torch.zeros(3, 3)}
    with pytest.raises(CheckpointError, match=r"up_proj.weight has shape \[3, 3\], the base has"):
        merge_state_dicts(MergeOptions("task_arithmetic"), [a, bad], base=base, names=["a", "b"])
    with pytest.raises(CheckpointError, match="b: cannot merge with the base: it lacks model.norm.weight"):
        short = {k: v for k, v in a.items() if k != "model.norm.weight"}
        merge_state_dicts(MergeOptions("task_arithmetic"), [a, short], base=base, names=["a", "b"])


def test_adapter_deltas_are_s_B_A(dirs):
    base = load_model(dirs["base"])
    loaded = read_adapter_deltas(base, dirs["lora_a"])
    s, A, B = loaded.factors["model.layers.0.self_attn.q_proj"]
    assert s == 2.0 and A.shape == (2, 32) and B.shape == (32, 2)
    assert torch.equal(loaded.deltas["model.layers.0.self_attn.q_proj.weight"], s * B @ A)
    assert len(loaded.deltas) == 4  # q and v in 2 layers
    full = adapted(dirs["base"], dirs["lora_a"])
    key = "model.layers.1.self_attn.v_proj.weight"
    assert torch.allclose(base.state_dict()[key] + loaded.deltas[key], full[key], atol=1e-7)


@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "ties", "dare_ties", "slerp"])
def test_adapter_merge_equals_the_merge_of_the_adapted_models(dirs, tmp_path, method):
    """Merging the deltas exactly (W_0 + merge(Δ)) gives the full-model merge of W_0 + Δ_i, up to rounding."""
    options = dict(density=0.5, seed=0) if method in ("ties", "dare_ties") else {}
    report = merge_directories(MergeOptions(method, **options), [(dirs["lora_a"], 1.0), (dirs["lora_c"], 2.0)],
                               tmp_path / "from_adapters", base=dirs["base"])
    assert report["merged"] == 6 and report["copied"] == len(model_tensors(load_model(dirs["base"]))) - 6
    base = model_tensors(load_model(dirs["base"]))
    models = [adapted(dirs["base"], dirs[k]) for k in ("lora_a", "lora_c")]
    got = model_tensors(load_model(tmp_path / "from_adapters"))
    # DARE's masks match too: both draw them tensor by tensor in name order, model by model, from one seed
    expected, _ = merge_state_dicts(MergeOptions(method, **options), models, [1.0, 2.0], base=base)
    for key in base:
        assert torch.allclose(got[key], expected[key], atol=1e-6), key
    # a module only lora_c adapts (up_proj) moves; one neither adapts (gate_proj) is the base's
    assert not torch.equal(got["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])
    assert torch.equal(got["model.layers.0.mlp.gate_proj.weight"], base["model.layers.0.mlp.gate_proj.weight"])


def test_concatenated_adapter_is_the_weighted_sum_of_the_deltas(dirs, tmp_path):
    base = load_model(dirs["base"])
    a, b = (read_adapter_deltas(base, dirs[k]) for k in ("lora_a", "lora_b"))
    config, tensors = concat_adapters([a, b], [1.0, 3.0], normalize=False)
    assert config.r == 6 and config.lora_alpha == 6  # ranks 2 + 4, scaling 1
    m = "model.layers.1.self_attn.q_proj"
    cat = tensors[f"{m}.lora_B.weight"] @ tensors[f"{m}.lora_A.weight"]
    assert torch.allclose(cat, a.deltas[f"{m}.weight"] + 3 * b.deltas[f"{m}.weight"], atol=1e-6)
    # written as a PEFT adapter, it loads on the base and equals the full-model linear merge
    report = merge_directories(MergeOptions("linear"), [(dirs["lora_a"], 1.0), (dirs["lora_b"], 3.0)],
                               tmp_path / "cat", base=dirs["base"], as_adapter=True)
    assert report["result"] == "adapter" and report["rank"] == 6 and report["modules"] == 4
    merge_directories(MergeOptions("linear"), [(dirs["lora_a"], 1.0), (dirs["lora_b"], 3.0)], tmp_path / "full",
                      base=dirs["base"])
    full = model_tensors(load_model(tmp_path / "full"))
    for key, t in adapted(dirs["base"], tmp_path / "cat").items():
        assert torch.allclose(t, full[key], atol=1e-6), key
    with pytest.raises(ConfigError, match="adapt different modules"):
        concat_adapters([a, read_adapter_deltas(base, dirs["lora_c"])])


@pytest.mark.parametrize("variant", [dict(use_dora=True), dict(init_lora_weights="pissa")])
def test_dora_and_pissa_deltas_are_their_merged_weights_minus_the_base(dirs, tmp_path, variant):
    """DoRA rescales rows and PiSSA moves part of W into A and B: their Δ is the merged weight minus W_0."""
    torch.manual_seed(0)
    model = apply_lora(load_model(dirs["base"]), LoraConfig(r=2, lora_alpha=4, target_modules=["o_proj"], **variant))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(0.1 * torch.randn_like(p))  # trained, so that the adapter changes the model
    save_adapter(model, tmp_path / "adapter")
    merge_directories(MergeOptions("task_arithmetic", lam=0.5), [(tmp_path / "adapter", 1.0)], tmp_path / "half",
                      base=dirs["base"])
    base, full = model_tensors(load_model(dirs["base"])), adapted(dirs["base"], tmp_path / "adapter")
    got = model_tensors(load_model(tmp_path / "half"))
    key = "model.layers.1.self_attn.o_proj.weight"
    assert not torch.allclose(full[key], base[key], atol=1e-3)
    assert torch.allclose(got[key], base[key] + 0.5 * (full[key] - base[key]), atol=1e-6)
    with pytest.raises(ConfigError, match="cannot be concatenated"):
        merge_directories(MergeOptions("linear"), [(tmp_path / "adapter", 1.0)], tmp_path / "cat",
                          base=dirs["base"], as_adapter=True)


def test_full_models_and_an_adapter_merge_together(dirs, tmp_path):
    report = merge_directories(MergeOptions("task_arithmetic"), [(dirs["ft_a"], 1.0), (dirs["lora_c"], 1.0)],
                               tmp_path / "mixed", base=dirs["base"])
    base = model_tensors(load_model(dirs["base"]))
    a, c = model_tensors(load_model(dirs["ft_a"])), adapted(dirs["base"], dirs["lora_c"])
    got = model_tensors(load_model(tmp_path / "mixed"))
    for key in base:
        assert torch.allclose(got[key], a[key] + c[key] - base[key], atol=1e-6), key
    assert [m["kind"] for m in report["models"]] == ["model", "adapter"]


# ----------------------------------------------------------------------------------------------------------------
# The command


def test_cli_merges_model_directories(dirs, tmp_path, capsys):
    out = tmp_path / "ties"
    assert main(["merge", "--method", "ties", "--base", str(dirs["base"]), "--models", f"{dirs['ft_a']}:1",
                 f"{dirs['ft_b']}:0.5", "--density", "0.5", "--lambda", "0.8", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["method"] == "ties" and report["density"] == 0.5 and report["lambda"] == 0.8
    assert [m["weight"] for m in report["models"]] == [1.0, 0.5]
    base, a, b = (model_tensors(load_model(dirs[k])) for k in ("base", "ft_a", "ft_b"))
    got = model_tensors(load_model(out))
    key = "model.layers.1.self_attn.q_proj.weight"
    assert torch.allclose(got[key], ties(base[key], [a[key], b[key]], [1, 0.5], density=0.5, lam=0.8))
    assert (out / "tokenizer.json").is_file()  # the base's tokenizer files come along
    assert json.loads((out / "alignlab.json").read_text())["merge"]["merged"] == report["merged"]

    out = tmp_path / "slerp"
    assert main(["merge", "--method", "slerp", "--models", str(dirs["ft_a"]), str(dirs["ft_b"]), "--t", "0.3",
                 "--out", str(out)]) == 0
    assert torch.allclose(model_tensors(load_model(out))[key], slerp(a[key], b[key], 0.3), atol=1e-7)


def test_cli_merges_adapters_into_a_model_or_an_adapter(dirs, tmp_path, capsys):
    args = ["merge", "--base", str(dirs["base"]), "--models", str(dirs["lora_a"]), f"{dirs['lora_b']}:2"]
    assert main([*args, "--method", "dare_linear", "--density", "0.5", "--seed", "1", "--out",
                 str(tmp_path / "dare")]) == 0
    assert "4 tensors merged" in capsys.readouterr().out  # q and v in 2 layers
    assert main([*args, "--method", "linear", "--as-adapter", "--out", str(tmp_path / "cat")]) == 0
    assert "one adapter of rank 6 on 4 modules" in capsys.readouterr().out
    load_adapter(load_model(dirs["base"]), tmp_path / "cat")  # a valid PEFT adapter of the base


@pytest.mark.parametrize("args, message", [
    (["--method", "ties", "--models", "{ft_a}", "{ft_b}"], r"ties merges task vectors \(model - base\): it needs"),
    (["--method", "slerp", "--models", "{ft_a}", "{ft_b}", "{base}"], "slerp interpolates between exactly 2 models"),
    (["--method", "ties", "--base", "{base}", "--models", "{ft_a}", "--density", "1.5"], r"density must be in \(0, 1"),
    (["--method", "dare_ties", "--base", "{base}", "--models", "{ft_a}", "--density", "0"], "density must be in"),
    (["--method", "linear", "--models", "{ft_a}", "--density", "0.5"], "--density does not apply to linear"),
    (["--method", "slerp", "--models", "{ft_a}", "{ft_b}", "--t", "2"], r"t must be in \[0, 1\]"),
    (["--method", "linear", "--models", "{lora_a}", "{lora_b}"], "is a LoRA adapter: give the base model"),
    (["--method", "linear", "--models", "{ft_a}:heavy"], "the weight"),
    (["--method", "linear", "--models", "{ft_a}:1", "{ft_b}:-1"], "sum to 0"),
    (["--method", "ties", "--base", "{base}", "--models", "{lora_a}", "--as-adapter"], "linear merges of adapters"),
    (["--method", "linear", "--base", "{base}", "--models", "{lora_a}", "{lora_c}", "--as-adapter"],
     "adapt different modules"),
    (["--method", "linear", "--models", "{ft_a}", "{wide}"], r"differs from .*: dim 64 \(vs 32\)"),
    (["--method", "linear", "--base", "{wide}", "--models", "{lora_a}"],
     r"lora_a: .*lora_A.weight has shape \(2, 32\), this model needs \(2, 64\)"),
])
def test_cli_errors_are_one_line(dirs, tmp_path, capsys, args, message):
    paths = {**{k: str(v) for k, v in dirs.items()}, "wide": str(tmp_path / "wide")}
    save_model(tiny(dim=64, n_heads=4), tmp_path / "wide")
    assert main(["merge", *[a.format(**paths) for a in args], "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("alignlab merge: error: ") and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err


def test_cli_refuses_to_write_over_an_input(dirs, capsys):
    assert main(["merge", "--method", "linear", "--models", str(dirs["ft_a"]), str(dirs["ft_b"]), "--out",
                 str(dirs["ft_b"])]) == 2
    assert "is one of the inputs" in capsys.readouterr().err
