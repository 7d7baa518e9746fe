"""Merging whole models and LoRA adapters: state dicts, PEFT adapter directories, Hugging Face model directories.

    merged, counts = merge_state_dicts(MergeOptions("ties", density=0.5), [sd_a, sd_b], base=sd_0)
    report = merge_directories(MergeOptions("linear"), [("runs/a/adapter", 1.0), ("runs/b/adapter", 1.0)],
                               out="runs/ab", base="runs/pretrain/model")

Full models merge tensor by tensor (methods.merge_tensor); a tensor that every model holds unchanged from the
base (the reference: the base, or the first model without one) is copied, not merged. The tied output head
is one tensor with the embedding, merged once.

Adapters merge their deltas, exactly: each adapter i changes a module's weight by Δ_i = s_i B_i A_i (read from
the adapter as it loads on the base; for DoRA and PiSSA, which change more than s B A, Δ_i is the merged weight
minus the base's), and the merged model is

    W = W_0 + merge(Δ_1, ..., Δ_N)          (methods.merge_deltas; Δ_i = 0 where adapter i leaves a module alone)

Modules no adapter targets are copied from the base. A mix of adapters and full models merges full models, an
adapter becoming W_0 + Δ_i.

An adapter result is possible for linear alone: concatenating the adapters gives one adapter of rank Σ_i r_i
whose update is exactly the weighted sum (PEFT's add_weighted_adapter with combination_type="cat"):

    A = [A_1; ...; A_N]  (Σr, in),    B = [c_1 s_1 B_1, ..., c_N s_N B_N]  (out, Σr),    s = α / r = 1
    B A = Σ_i c_i s_i B_i A_i           c_i = w_i / Σ_j w_j  (normalize)  or  w_i

No method mixes in anything else, so a merge needs the same architecture and shapes everywhere: configs are
compared before any weight is read, and every tensor's name and shape after.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from alignlab.errors import CheckpointError, ConfigError, UserError
from alignlab.lora.inject import LoraConfig, lora_layers
from alignlab.lora.peft_io import CONFIG_NAME, PREFIX, WEIGHTS_NAME, load_adapter, peft_config
from alignlab.merge.methods import DEFAULT_NORMALIZE, METHODS, NEEDS_BASE, USES_DENSITY, merge_deltas, merge_tensor
from alignlab.model.hf import load_model, read_config, resolve_model_dir, save_model

# files of a model directory that the merge writes itself; the rest (tokenizer, chat template) is copied
OWN_FILES = ("config.json", "alignlab.json", "model.safetensors", "model.safetensors.index.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass
class MergeOptions:
    """How to merge (mergekit's names): method, density (fraction kept by TIES/DARE), lam (λ, mergekit's
    `lambda`), t (slerp), normalize (None: the method's default), seed (DARE's masks)."""

    method: str
    density: float = 1.0
    lam: float = 1.0
    t: float = 0.5
    normalize: bool | None = None
    seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"unknown merge method {self.method!r}; choose from {', '.join(METHODS)}")
        if not 0 < self.density <= 1:
            raise ConfigError(f"density must be in (0, 1] (the fraction of each task vector kept), got {self.density}")
        if not 0 <= self.t <= 1:
            raise ConfigError(f"t must be in [0, 1] (0: the first model, 1: the second), got {self.t}")
        if self.method == "slerp" and self.normalize is not None:
            raise ConfigError("normalize does not apply to slerp")

    def kwargs(self, generator: torch.Generator) -> dict:
        """The keyword arguments of methods.merge_tensor / merge_deltas."""
        return dict(density=self.density, lam=self.lam, t=self.t, normalize=self.normalize, generator=generator)

    def describe(self) -> dict:
        out = {"method": self.method}
        if self.method in NEEDS_BASE:
            out["lambda"] = self.lam
        if self.method in USES_DENSITY:
            out["density"] = self.density
        if self.method.startswith("dare"):
            out["seed"] = self.seed
        if self.method == "slerp":
            out["t"] = self.t
        else:
            out["normalize"] = DEFAULT_NORMALIZE[self.method] if self.normalize is None else self.normalize
        return out


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)  # DARE's masks, drawn tensor after tensor in name order


# ----------------------------------------------------------------------------------------------------------------
# State dicts


def model_tensors(model) -> dict[str, torch.Tensor]:
    """A CausalLM's tensors by name, the tied head left out (it is the embedding)."""
    sd = dict(model.state_dict())
    if model.config.tie_embeddings:
        sd.pop("lm_head.weight", None)
    return sd


def check_tensors(models: list[dict[str, torch.Tensor]], ref: dict[str, torch.Tensor], names: list[str],
                  ref_name: str) -> None:
    """Every model holds the reference's tensor names with the same shapes; CheckpointError names the first
    tensor that differs."""
    for sd, name in zip(models, names):
        missing, extra = sorted(ref.keys() - sd.keys()), sorted(sd.keys() - ref.keys())
        if missing or extra:
            what = f"lacks {missing[0]}" if missing else f"has {extra[0]}, which {ref_name} lacks"
            raise CheckpointError(f"{name}: cannot merge with {ref_name}: it {what} "
                                  f"({len(missing)} missing, {len(extra)} extra tensors)")
        for key, t in sd.items():
            if t.shape != ref[key].shape:
                raise CheckpointError(f"{name}: tensor {key} has shape {list(t.shape)}, {ref_name} has "
                                      f"{list(ref[key].shape)}")


def merge_state_dicts(options: MergeOptions, models: list[dict[str, torch.Tensor]],
                      weights: list[float] | None = None, base: dict[str, torch.Tensor] | None = None,
                      names: list[str] | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Merge full models' state dicts tensor by tensor. Returns (merged tensors in the reference's dtypes,
    counts {"merged", "copied"}). names label the models in errors (default: model 1, model 2, ...)."""
    names = names or [f"model {i + 1}" for i in range(len(models))]
    _check_counts(options, len(models), weights, base is not None)
    ref, ref_name = (base, "the base") if base is not None else (models[0], names[0])
    check_tensors(models, ref, names, ref_name)
    # linear without normalize scales even a tensor every model shares, so nothing is a plain copy there
    copies = not (options.method == "linear" and options.normalize is False)
    kwargs = options.kwargs(_generator(options.seed))
    merged, counts = {}, {"merged": 0, "copied": 0}
    for key in sorted(ref):
        r = ref[key]
        if not r.is_floating_point() or (copies and all(torch.equal(sd[key], r) for sd in models)):
            merged[key] = r.clone()
            counts["copied"] += 1
            continue
        merged[key] = merge_tensor(options.method, [sd[key] for sd in models], None if base is None else base[key],
                                   weights, **kwargs).to(r.dtype)
        counts["merged"] += 1
    return merged, counts


def _check_counts(options: MergeOptions, n: int, weights: list[float] | None, has_base: bool) -> None:
    if n == 0:
        raise ConfigError("nothing to merge: give at least one model")
    if weights is not None and len(weights) != n:
        raise ConfigError(f"{n} models but {len(weights)} weights")
    if options.method == "slerp" and n != 2:
        raise ConfigError(f"slerp interpolates between exactly 2 models, got {n}")
    if options.method in NEEDS_BASE and not has_base:
        raise ConfigError(f"{options.method} merges task vectors (model - base): it needs the base model")
    normalize = DEFAULT_NORMALIZE.get(options.method) if options.normalize is None else options.normalize
    if normalize and options.method == "linear" and abs(sum(weights or [1.0] * n)) < 1e-8:
        raise ConfigError(f"the weights {weights} sum to 0: a normalized linear merge divides by their sum")


# ----------------------------------------------------------------------------------------------------------------
# Adapters


@dataclass
class LoadedAdapter:
    """One PEFT adapter as the merge sees it: Δ per weight name, and the factors (s, A, B) per module for a
    plain LoRA adapter (None for DoRA and PiSSA, whose update is not s B A alone)."""

    directory: Path
    config: LoraConfig
    deltas: dict[str, torch.Tensor]  # "model.layers.0.self_attn.q_proj.weight" -> Δ (out, in), float32
    factors: dict[str, tuple[float, torch.Tensor, torch.Tensor]] | None


@torch.no_grad()
def read_adapter_deltas(base_model, directory: str | Path) -> LoadedAdapter:
    """Load the adapter on a copy of base_model (which checks that it fits) and read each module's Δ."""
    directory = Path(directory)
    model = copy.deepcopy(base_model)
    try:
        load_adapter(model, directory)
    except UserError:
        raise
    except ValueError as e:  # shapes that do not fit this base (the message names the directory)
        raise CheckpointError(str(e)) from None
    config = model.lora_config
    plain = not config.use_dora and config.init_lora_weights != "pissa"
    deltas, factors = {}, {}
    for name, layer in lora_layers(model):
        if plain:
            deltas[f"{name}.weight"] = layer.delta_weight().float()  # s B A
            factors[name] = (layer.scaling, layer.lora_A.weight.float(), layer.lora_B.weight.float())
        else:  # DoRA rescales rows, PiSSA moved part of W into A, B: compare merged weights instead
            layer.merge()
            w0 = base_model.get_submodule(name).weight
            deltas[f"{name}.weight"] = layer.base_layer.weight.float() - w0.float()
    return LoadedAdapter(directory, config, deltas, factors if plain else None)


def merge_adapter_deltas(options: MergeOptions, base: dict[str, torch.Tensor], adapters: list[LoadedAdapter],
                         weights: list[float] | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """W = W_0 + merge(Δ_1, ..., Δ_N) on every module some adapter targets, the base's tensor elsewhere.
    Returns (merged tensors in the base's dtypes, counts {"merged", "copied"})."""
    _check_counts(options, len(adapters), weights, True)
    kwargs = options.kwargs(_generator(options.seed))
    targeted = set().union(*(a.deltas for a in adapters))
    merged, counts = {}, {"merged": 0, "copied": 0}
    for key in sorted(base):
        w0 = base[key]
        if key not in targeted:
            merged[key] = w0.clone()
            counts["copied"] += 1
            continue
        deltas = [a.deltas.get(key, torch.zeros(w0.shape)) for a in adapters]
        merged[key] = merge_deltas(options.method, w0, deltas, weights, **kwargs).to(w0.dtype)
        counts["merged"] += 1
    return merged, counts


def concat_adapters(adapters: list[LoadedAdapter], weights: list[float] | None = None,
                    normalize: bool = True) -> tuple[LoraConfig, dict[str, torch.Tensor]]:
    """One adapter whose update is Σ_i c_i s_i B_i A_i exactly (module docstring): rank Σ_i r_i, α = rank.
    The adapters must be plain LoRA (not DoRA, not PiSSA) on the same modules; ranks may differ. Returns
    (its LoraConfig, its tensors named as lora_state_dict names them)."""
    weights = [1.0] * len(adapters) if weights is None else list(weights)
    if normalize:
        total = sum(weights)
        if abs(total) < 1e-8:
            raise ConfigError(f"the weights {weights} sum to 0: cannot normalize them")
        weights = [w / total for w in weights]
    for a in adapters:
        if a.factors is None:
            raise ConfigError(f"{a.directory}: a {'DoRA' if a.config.use_dora else 'PiSSA'} adapter's update is not "
                              "s B A alone, so it cannot be concatenated; merge into a full model instead")
    modules = sorted(adapters[0].factors)
    for a in adapters[1:]:
        if sorted(a.factors) != modules:
            only = sorted(set(a.factors) ^ set(modules))
            raise ConfigError(f"{a.directory} and {adapters[0].directory} adapt different modules (e.g. {only[0]}); "
                              "concatenation needs the same targets: merge into a full model instead")
    tensors = {}
    for m in modules:
        parts = [a.factors[m] for a in adapters]  # (s_i, A_i, B_i)
        tensors[f"{m}.lora_A.weight"] = torch.cat([A for _, A, _ in parts], dim=0)  # (Σr, in)
        tensors[f"{m}.lora_B.weight"] = torch.cat([c * s * B for c, (s, _, B) in zip(weights, parts)], dim=1)
    rank = sum(a.config.r for a in adapters)
    return LoraConfig(r=rank, lora_alpha=rank, target_modules=adapters[0].config.target_modules), tensors


def save_concat_adapter(config: LoraConfig, tensors: dict[str, torch.Tensor], out: str | Path,
                        base: str | None = None) -> Path:
    """Write concat_adapters' result as a PEFT adapter directory."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    targets = sorted({k.split(".lora_")[0] for k in tensors})
    save_file({PREFIX + k: v.contiguous() for k, v in tensors.items()}, out / WEIGHTS_NAME, metadata={"format": "pt"})
    (out / CONFIG_NAME).write_text(json.dumps(peft_config(config, targets, base), indent=2, sort_keys=True) + "\n")
    return out


# ----------------------------------------------------------------------------------------------------------------
# Directories


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / CONFIG_NAME).is_file()


def check_same_config(ref_dir: Path, other_dir: Path) -> None:
    """The two model directories describe the same architecture; CheckpointError lists the fields that differ."""
    _, a = read_config(ref_dir)
    _, b = read_config(other_dir)
    da, db = asdict(a), asdict(b)
    diff = [f"{k} {db[k]!r} (vs {da[k]!r})" for k in da if k != "attn_impl" and da[k] != db[k]]
    if diff:
        raise CheckpointError(f"{other_dir}: its config.json differs from {ref_dir}'s: {', '.join(diff[:4])}"
                              + (f" and {len(diff) - 4} more" if len(diff) > 4 else ""))


def copy_tokenizer_files(src: Path, dst: Path) -> list[str]:
    """The files of src that are neither weights nor config.json/alignlab.json (tokenizer, chat template,
    generation config), copied into dst."""
    copied = []
    for f in sorted(src.iterdir()):
        if f.is_file() and f.name not in OWN_FILES and not f.name.endswith(WEIGHT_SUFFIXES):
            shutil.copyfile(f, dst / f.name)
            copied.append(f.name)
    return copied


def _checkpoint_dtype(model_dir: Path) -> torch.dtype:
    hf, _ = read_config(model_dir)
    name = hf.get("dtype") or hf.get("torch_dtype") or "float32"
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float32


def merge_directories(options: MergeOptions, models: list[tuple[str, float]], out: str | Path,
                      base: str | None = None, as_adapter: bool = False) -> dict:
    """Merge model directories and/or PEFT adapter directories (applied on `base`) into `out`.

    models: (directory, weight) pairs. The result is a model directory (computed in float32, saved in the
    reference checkpoint's dtype, with its tokenizer files), or with as_adapter (linear, adapters only) a PEFT
    adapter of the concatenated adapters. Returns a report: the options, the inputs, the counts."""
    dirs, weights = [Path(d) for d, _ in models], [float(w) for _, w in models]
    _check_counts(options, len(dirs), weights, base is not None)
    adapters = [d for d in dirs if is_adapter_dir(d)]
    if adapters and base is None:
        raise ConfigError(f"{adapters[0]} is a LoRA adapter: give the base model it applies to (--base)")
    if as_adapter and (options.method != "linear" or len(adapters) != len(dirs)):
        raise ConfigError("an adapter result (--as-adapter) is a concatenation: linear merges of adapters only")
    out = Path(out)
    inputs = [Path(resolve_model_dir(d)) if d not in adapters else d for d in dirs]
    base_dir = Path(resolve_model_dir(base)) if base is not None else None
    for d in [*inputs, *([base_dir] if base_dir else [])]:
        if out.resolve() == d.resolve():
            raise ConfigError(f"--out {out} is one of the inputs; write the merge to a new directory")
    ref_dir = base_dir or inputs[0]
    for d in inputs:
        if d not in adapters:
            check_same_config(ref_dir, d)  # before any weight is read

    report = {**options.describe(), "base": str(base_dir) if base_dir else None,
              "models": [{"path": str(d), "weight": w, "kind": "adapter" if d in adapters else "model"}
                         for d, w in zip(inputs, weights)]}
    ref_model = load_model(ref_dir)
    ref_sd = model_tensors(ref_model)
    loaded = {d: read_adapter_deltas(ref_model, d) for d in adapters}
    if as_adapter:
        config, tensors = concat_adapters([loaded[d] for d in inputs], weights, options.normalize is not False)
        save_concat_adapter(config, tensors, out, str(base_dir))
        return {**report, "out": str(out), "result": "adapter", "rank": config.r, "modules": len(tensors) // 2}
    if adapters and len(adapters) == len(inputs):  # adapters only: merge their deltas exactly
        merged, counts = merge_adapter_deltas(options, ref_sd, [loaded[d] for d in inputs], weights)
    else:
        sds = []
        for d in inputs:
            if d in loaded:  # an adapter among full models: the adapted model W_0 + Δ
                sds.append({k: v + loaded[d].deltas[k].to(v.dtype) if k in loaded[d].deltas else v
                            for k, v in ref_sd.items()})
            else:
                sds.append(ref_sd if d == ref_dir else model_tensors(load_model(d)))
        merged, counts = merge_state_dicts(options, sds, weights, ref_sd if base_dir else None,
                                           [str(d) for d in inputs])
    with torch.no_grad():
        own = model_tensors(ref_model)
        for key, t in merged.items():
            own[key].copy_(t)
    report.update(counts)
    save_model(ref_model.to(_checkpoint_dtype(ref_dir)), out, meta={"stage": "merge", "merge": report})
    copy_tokenizer_files(ref_dir, out)
    return {**report, "out": str(out), "result": "model"}
