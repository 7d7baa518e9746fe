"""Hugging Face checkpoints in and out: config.json + safetensors <-> CausalLM.

Supported model types: llama, mistral, qwen2, qwen3, gpt2. Both config spellings are read: the classic
one (`rope_theta`, `rope_scaling`, `torch_dtype`) and the transformers 5 one (`rope_parameters`, `dtype`).
Llama-family tensor names are already ours; GPT-2 names are translated, and its Conv1D weights (stored
[in, out]) are transposed into Linear weights ([out, in]), its fused c_attn split into q, k, v.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from alignlab.errors import CheckpointError, ConfigError
from alignlab.model.config import ModelConfig
from alignlab.model.transformer import CausalLM

LLAMA_FAMILY = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED = (*LLAMA_FAMILY, "gpt2")
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "qwen3": "Qwen3ForCausalLM", "gpt2": "GPT2LMHeadModel"}
HF_ACT = {"silu": "silu", "swish": "silu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
          "gelu": "gelu"}
# and back: GPT-2 spells the tanh approximation "gelu_new", the Llama family "gelu_pytorch_tanh"
ACT_TO_HF = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}
ACT_TO_GPT2 = {**ACT_TO_HF, "gelu_tanh": "gelu_new"}
# tensors some checkpoints carry that are recomputed, not learned
IGNORED_SUFFIXES = ("rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias")


# --- config ----------------------------------------------------------------------------------------

def config_from_hf(hf: dict, where: str = "config.json") -> ModelConfig:
    mt = hf.get("model_type")
    if mt not in SUPPORTED:
        raise CheckpointError(f"{where}: unsupported model_type {mt!r} (supported: {', '.join(SUPPORTED)})")
    common = dict(arch=mt, vocab_size=hf["vocab_size"], bos_token_id=hf.get("bos_token_id"),
                  eos_token_id=hf.get("eos_token_id"), pad_token_id=hf.get("pad_token_id"))
    if mt == "gpt2":
        act = hf.get("activation_function", "gelu_new")
        if act not in HF_ACT:
            raise CheckpointError(f"{where}: unsupported activation_function {act!r}")
        if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
            raise CheckpointError(f"{where}: GPT-2 attention variants (scale_attn_by_inverse_layer_idx, "
                                  "reorder_and_upcast_attn) are not supported")
        return ModelConfig(**common, dim=hf["n_embd"], n_layers=hf["n_layer"], n_heads=hf["n_head"],
                           hidden_dim=hf.get("n_inner") or 4 * hf["n_embd"], max_seq_len=hf["n_positions"],
                           norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5), mlp="plain",
                           act=HF_ACT[act], pos="learned", qkv_bias=True, o_bias=True, mlp_bias=True,
                           tie_embeddings=hf.get("tie_word_embeddings", True))
    act = hf.get("hidden_act", "silu")
    if act not in HF_ACT:
        raise CheckpointError(f"{where}: unsupported hidden_act {act!r}")
    # rope: transformers 5 nests theta and scaling in rope_parameters; older configs keep them top-level
    rope = dict(hf.get("rope_parameters") or {})
    theta = rope.pop("rope_theta", hf.get("rope_theta", 10000.0))
    scaling = rope or hf.get("rope_scaling")
    if scaling and scaling.get("rope_type", scaling.get("type")) == "default":
        scaling = None
    if scaling and scaling.get("rope_type", scaling.get("type")) == "llama3":  # HF's fallback
        scaling.setdefault("original_max_position_embeddings", hf.get("max_position_embeddings"))
    if hf.get("partial_rotary_factor", 1.0) != 1.0:
        raise CheckpointError(f"{where}: partial_rotary_factor != 1 is not supported")
    attn_bias = hf.get("attention_bias", False)
    qkv_bias, o_bias = (True, False) if mt == "qwen2" else (attn_bias, attn_bias)
    n_heads, n_layers = hf["num_attention_heads"], hf["num_hidden_layers"]
    window = {"mistral": hf.get("sliding_window", 4096), "llama": None}.get(mt)
    if mt in ("qwen2", "qwen3"):  # the window applies to the layers from max_window_layers on
        window = hf.get("sliding_window", 4096) if hf.get("use_sliding_window", False) else None
        types = hf.get("layer_types") or [
            "sliding_attention" if window is not None and i >= hf.get("max_window_layers", 28) else "full_attention"
            for i in range(n_layers)]
        if len(set(types)) > 1:
            raise CheckpointError(f"{where}: layers mix sliding-window and full attention (layer_types / "
                                  "max_window_layers); only the same attention in every layer is supported")
        window = window if types[0] == "sliding_attention" else None
    head_dim = hf.get("head_dim") or (128 if mt == "qwen3" else None)  # Qwen3's default is not dim / heads
    return ModelConfig(
        **common, dim=hf["hidden_size"], n_layers=n_layers, n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads, head_dim=head_dim,
        hidden_dim=hf["intermediate_size"], max_seq_len=hf.get("max_position_embeddings", 2048),
        norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6), mlp="gated", act=HF_ACT[act], pos="rope",
        rope_theta=float(theta), rope_scaling=scaling, qkv_bias=qkv_bias, o_bias=o_bias,
        mlp_bias=hf.get("mlp_bias", False), qk_norm=(mt == "qwen3"),
        tie_embeddings=hf.get("tie_word_embeddings", False), sliding_window=window)


def config_to_hf(c: ModelConfig, dtype: str = "float32") -> dict:
    """The config.json transformers expects (classic spelling, which old and new transformers both read)."""
    biases = {"llama": c.qkv_bias == c.o_bias, "qwen3": c.qkv_bias == c.o_bias, "qwen2": c.qkv_bias and not c.o_bias,
              "mistral": not (c.qkv_bias or c.o_bias or c.mlp_bias), "gpt2": True}
    if not biases[c.arch] or (c.mlp_bias and c.arch in ("qwen2", "qwen3")):
        raise ConfigError(f"a {c.arch} checkpoint cannot express qkv_bias={c.qkv_bias}, o_bias={c.o_bias}, "
                          f"mlp_bias={c.mlp_bias}")
    out = {"architectures": [ARCHITECTURES[c.arch]], "model_type": c.arch, "vocab_size": c.vocab_size,
           "bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id, "pad_token_id": c.pad_token_id,
           "tie_word_embeddings": c.tie_embeddings, "torch_dtype": dtype}
    if c.arch == "gpt2":
        act = ACT_TO_GPT2[c.act]
        return {**out, "n_embd": c.dim, "n_layer": c.n_layers, "n_head": c.n_heads, "n_inner": c.hidden_dim,
                "n_positions": c.max_seq_len, "n_ctx": c.max_seq_len, "layer_norm_epsilon": c.norm_eps,
                "activation_function": act}
    out.update({"hidden_size": c.dim, "num_hidden_layers": c.n_layers, "num_attention_heads": c.n_heads,
                "num_key_value_heads": c.n_kv_heads, "head_dim": c.head_dim, "intermediate_size": c.hidden_dim,
                "max_position_embeddings": c.max_seq_len, "rms_norm_eps": c.norm_eps, "hidden_act": ACT_TO_HF[c.act],
                "rope_theta": c.rope_theta, "rope_scaling": c.rope_scaling})
    if c.arch in ("llama", "qwen3"):
        out["attention_bias"] = c.qkv_bias
    if c.arch == "llama":
        out["mlp_bias"] = c.mlp_bias
    if c.arch in ("mistral", "qwen2", "qwen3"):
        out["sliding_window"] = c.sliding_window
    if c.arch in ("qwen2", "qwen3"):  # one attention kind in every layer
        kind = "full_attention" if c.sliding_window is None else "sliding_attention"
        out.update(use_sliding_window=c.sliding_window is not None, max_window_layers=0,
                   layer_types=[kind] * c.n_layers)
    return out


# --- tensor names ------------------------------------------------------------------------------------

GPT2_LAYER = {"ln_1": "input_layernorm", "ln_2": "post_attention_layernorm", "attn.c_proj": "self_attn.o_proj",
              "mlp.c_fc": "mlp.up_proj", "mlp.c_proj": "mlp.down_proj"}


def gpt2_to_ours(sd: dict[str, torch.Tensor], c: ModelConfig) -> dict[str, torch.Tensor]:
    """GPT-2 names -> ours; Conv1D [in, out] -> Linear [out, in]; c_attn -> q, k, v."""
    out = {}
    for name, t in sd.items():
        name = name.removeprefix("transformer.")
        if name.endswith(IGNORED_SUFFIXES):
            continue
        if name in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"):
            key = {"wte": "embed_tokens", "wpe": "embed_positions", "ln_f": "norm"}[name.split(".")[0]]
            out[f"model.{key}.{name.split('.')[1]}"] = t
            continue
        if name == "lm_head.weight":
            out[name] = t
            continue
        if not name.startswith("h."):
            out[name] = t  # unknown: reported as unexpected by the loader
            continue
        _, i, rest = name.split(".", 2)
        module, kind = rest.rsplit(".", 1)
        prefix = f"model.layers.{i}."
        if module == "attn.c_attn":
            parts = t.split(c.dim, dim=-1)
            for proj, p in zip(("q_proj", "k_proj", "v_proj"), parts):
                out[f"{prefix}self_attn.{proj}.{kind}"] = p.t().contiguous() if kind == "weight" else p
        elif module in GPT2_LAYER:
            is_conv = module.startswith(("attn", "mlp")) and kind == "weight"
            out[f"{prefix}{GPT2_LAYER[module]}.{kind}"] = t.t().contiguous() if is_conv else t
        else:
            out[name] = t
    return out


def ours_to_gpt2(sd: dict[str, torch.Tensor], c: ModelConfig) -> dict[str, torch.Tensor]:
    inv = {v: k for k, v in GPT2_LAYER.items()}
    out = {}
    for name, t in sd.items():
        if name.startswith("model.layers."):
            _, _, i, rest = name.split(".", 3)
            module, kind = rest.rsplit(".", 1)
            if module in ("self_attn.k_proj", "self_attn.v_proj"):
                continue
            if module == "self_attn.q_proj":
                parts = [sd[f"model.layers.{i}.self_attn.{p}.{kind}"] for p in ("q_proj", "k_proj", "v_proj")]
                t = torch.cat([p.t() if kind == "weight" else p for p in parts], dim=-1)
                out[f"transformer.h.{i}.attn.c_attn.{kind}"] = t.contiguous()
                continue
            is_conv = not module.endswith("layernorm") and kind == "weight"
            out[f"transformer.h.{i}.{inv[module]}.{kind}"] = t.t().contiguous() if is_conv else t
        elif name == "lm_head.weight":
            out[name] = t  # present only when the head is not tied to wte
        else:
            key = {"embed_tokens": "wte", "embed_positions": "wpe", "norm": "ln_f"}[name.split(".")[1]]
            out[f"transformer.{key}.{name.split('.')[2]}"] = t
    return out


# --- files ---------------------------------------------------------------------------------------------

def resolve_model_dir(name_or_path: str | os.PathLike) -> Path:
    """A local directory as is; otherwise a Hub id ("org/name"), downloaded through huggingface_hub."""
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        return p
    name = str(name_or_path)
    if p.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise CheckpointError(f"{name}: not a model directory (and not a Hugging Face Hub id 'org/name')")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.txt",
                                                             "tokenizer*"]))
    except Exception as e:  # offline, unknown repo, gated model, ...
        raise CheckpointError(f"{name}: no such local directory, and the Hub download failed "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def read_config(model_dir: Path) -> tuple[dict, ModelConfig]:
    path = model_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (a model directory needs config.json)")
    return read_config_file(path)


def read_config_file(path: str | os.PathLike, where: str | None = None) -> tuple[dict, ModelConfig]:
    """A config.json as (its dict, the ModelConfig); errors name `where` (default: the path)."""
    where = where or str(path)
    try:
        hf = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{where}: invalid JSON at line {e.lineno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{where}: not UTF-8 text (byte {e.start})") from None
    if not isinstance(hf, dict):
        raise CheckpointError(f"{where}: expected a JSON object of fields, got {type(hf).__name__}")
    try:
        return hf, config_from_hf(hf, where)
    except KeyError as e:
        raise CheckpointError(f"{where}: missing field {e.args[0]!r}") from None


def read_weights(model_dir: Path) -> dict[str, tuple[torch.Tensor, Path]]:
    """Every tensor of the checkpoint with the file it came from (single file or sharded index)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    index = model_dir / "model.safetensors.index.json"
    single = model_dir / "model.safetensors"
    if index.is_file():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from None
        paths = [model_dir / f for f in files]
    elif single.is_file():
        paths = [single]
    else:
        raise CheckpointError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")
    tensors = {}
    for path in paths:
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (listed in {index.name})")
        try:
            for name, t in load_file(str(path)).items():
                tensors[name] = (t, path)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path}: corrupt safetensors file ({str(e).splitlines()[0]})") from None
    return tensors


def auto_dtype(hf: dict, device: torch.device) -> torch.dtype:
    """fp32 on CPU (bf16 matmul on CPUs is many times slower); the checkpoint's dtype on GPU."""
    if device.type == "cpu":
        return torch.float32
    name = hf.get("dtype") or hf.get("torch_dtype") or "float32"
    return getattr(torch, name) if isinstance(name, str) and hasattr(torch, name) else torch.float32


def load_model(name_or_path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
               attn_impl: str | None = None) -> CausalLM:
    """Load a Hugging Face model directory (or Hub id) into a CausalLM."""
    model_dir = resolve_model_dir(name_or_path)
    hf, config = read_config(model_dir)
    if hf.get("quantization_config"):
        method = hf["quantization_config"].get("quant_method", "?")
        raise CheckpointError(f"{model_dir}: a quantised checkpoint ({method}); load it with "
                              "alignlab.quant.load_quantized (the generate, chat, serve and eval commands do)")
    if attn_impl:
        config.attn_impl = attn_impl
    device = torch.device(device)
    dtype = dtype or auto_dtype(hf, device)
    raw = read_weights(model_dir)
    origin = {name: path for name, (_, path) in raw.items()}
    sd = {name: t for name, (t, _) in raw.items()}
    if config.arch == "gpt2":
        sd = gpt2_to_ours(sd, config)  # renamed: report the file only when there is one
        files = set(origin.values())
        origin = {k: next(iter(files)) for k in sd} if len(files) == 1 else {}
    sd = {k: v for k, v in sd.items() if not k.endswith(IGNORED_SUFFIXES)}
    if config.tie_embeddings:
        sd.pop("lm_head.weight", None)

    with torch.device("meta"):
        model = CausalLM(config)
    expected = {k: v for k, v in model.state_dict().items() if not (config.tie_embeddings and k == "lm_head.weight")}
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing:
        raise CheckpointError(f"{model_dir}: missing tensor {missing[0]}" +
                              (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if unexpected:
        raise CheckpointError(f"{model_dir}: unexpected tensor {unexpected[0]}" +
                              (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
    for name, t in sd.items():
        want = tuple(expected[name].shape)
        if tuple(t.shape) != want:
            where = origin.get(name, model_dir)
            raise CheckpointError(f"{where}: tensor {name} has shape {list(t.shape)}, "
                                  f"config.json implies {list(want)}")
    sd = {k: v.to(device=device, dtype=dtype) for k, v in sd.items()}
    model.load_state_dict(sd, strict=False, assign=True)
    return finish_meta_init(model, device)


def finish_meta_init(model: CausalLM, device) -> CausalLM:
    """After assigning real weights to a meta-built model: re-tie the head and rebuild RoPE buffers."""
    if model.config.tie_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    if model.config.pos == "rope":
        model.inv_freq = model.rope_frequencies(device)
    return model.eval()


def save_model(model: CausalLM, out_dir, tokenizer=None, meta: dict | None = None,
               generation: dict | None = None) -> Path:
    """Write config.json, model.safetensors, generation_config.json (and the tokenizer, alignlab.json)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    c = model.config
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if c.tie_embeddings:
        sd.pop("lm_head.weight", None)
    if c.arch == "gpt2":
        sd = ours_to_gpt2(sd, c)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    tmp = out / "model.safetensors.tmp"
    save_file(sd, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(config_to_hf(c, dtype), indent=2) + "\n")
    gen = {"bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id, "pad_token_id": c.pad_token_id,
           **(generation or {})}
    (out / "generation_config.json").write_text(json.dumps({k: v for k, v in gen.items() if v is not None},
                                                           indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save(out)
    if meta is not None:
        (out / "alignlab.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out
