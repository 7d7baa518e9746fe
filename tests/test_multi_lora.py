"""Multi-LoRA batching: both kernels against each adapter's own merged model and PEFT's mixed-adapter batch, greedy
generation in a mixed batch, the slot and CPU-pool LRU, hot load/unload, and the errors a bad adapter raises."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from alignlab.errors import CheckpointError, ConfigError, UserError
from alignlab.infer import Engine, SamplingParams
from alignlab.lora import MultiLora, MultiLoraLinear, load_adapter, merge_lora
from alignlab.lora.multi_kernels import lora_bmm, lora_grouped, lora_sgmv, segments
from alignlab.model.hf import load_model
from alignlab.model.linear import PackedWeights, packed_weights
from alignlab.quant.linear4bit import quantize_model

from .hf_models import VOCAB, make_hf_model, require

peft = require("peft")

ADAPTERS = {  # different ranks, scales and targets; init_lora_weights=False: random A and B, not a no-op
    "qv4": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    "all16": dict(r=16, lora_alpha=16, target_modules="all-linear"),
    "rs8": dict(r=8, lora_alpha=4, target_modules=["k_proj", "o_proj", "down_proj"], use_rslora=True),
    "mlp2": dict(r=2, lora_alpha=4, target_modules=["gate_proj", "up_proj"]),
}
KERNELS = ["sgmv", "bmm"]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("llama")
    make_hf_model("llama").save_pretrained(d)
    return d


def make_adapter(directory, seed, **kw):
    hf = make_hf_model("llama")
    torch.manual_seed(seed)
    pm = peft.get_peft_model(hf, peft.LoraConfig(task_type="CAUSAL_LM", init_lora_weights=False, **kw))
    pm.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def adapter_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {name: make_adapter(root / name, seed, **kw) for seed, (name, kw) in enumerate(ADAPTERS.items(), 1)}


@pytest.fixture(scope="module")
def merged(llama_dir, adapter_dirs):
    """Each adapter merged into its own copy of the model (W + s B A), and the plain base under None."""
    models = {name: merge_lora(load_adapter(load_model(llama_dir), d)) for name, d in adapter_dirs.items()}
    models[None] = load_model(llama_dir)
    return models


def serve(llama_dir, adapter_dirs, names=ADAPTERS, **kw):
    model = load_model(llama_dir)
    adapters = MultiLora(model, **kw)
    for name in names:
        adapters.load(name, adapter_dirs[name])
    return model, adapters


def inputs(B, T=12, seed=0):
    return torch.randint(3, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


ROWS = ["qv4", None, "all16", "rs8", "qv4", "mlp2", None, "all16"]


def expected_logits(merged, ids, names):
    """Row b from the merged model of names[b], run on the whole batch (the same shapes as the mixed batch)."""
    with torch.no_grad():
        out = {name: merged[name](ids) for name in set(names)}
    return torch.stack([out[name][b] for b, name in enumerate(names)])


@pytest.mark.parametrize("kernel", KERNELS)
def test_mixed_batch_equals_each_merged_model(llama_dir, adapter_dirs, merged, kernel):
    model, adapters = serve(llama_dir, adapter_dirs, max_loras=4, kernel=kernel)
    ids = inputs(len(ROWS))
    slots = adapters.activate(ROWS)
    assert [s == -1 for s in slots] == [n is None for n in ROWS]
    with torch.no_grad(), adapters.rows(slots):
        got = model(ids)
    want = expected_logits(merged, ids, ROWS)
    assert (want.std(-1) > 0.1).all()
    for b, name in enumerate(ROWS):  # the adapters move the logits far more than the tolerance
        if name is not None:
            assert (want[b] - merged[None](ids[b:b + 1])[0]).abs().max() > 0.1
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    base_rows = [b for b, n in enumerate(ROWS) if n is None]
    with torch.no_grad():  # the base rows: the base layer's output plus nothing, bit for bit
        assert torch.equal(got[base_rows], merged[None](ids)[base_rows])
        assert torch.equal(model(ids), merged[None](ids))  # outside rows(): the base alone


@pytest.mark.parametrize("kernel", KERNELS)
def test_bf16_weights_with_packed_base_products(llama_dir, adapter_dirs, merged, kernel):
    """A bf16 model inside packed_weights (the engine's CPU setting): the base keeps its packed product and the
    mixed batch stays as close to the fp32 merged models as bf16 merged models are."""
    model = load_model(llama_dir, dtype=torch.bfloat16).requires_grad_(False)
    adapters = MultiLora(model, max_loras=4, kernel=kernel)
    for name, d in adapter_dirs.items():
        adapters.load(name, d)
    ids = inputs(len(ROWS))
    with torch.no_grad(), packed_weights(PackedWeights()), adapters.rows(adapters.activate(ROWS)):
        got = model(ids).float()
    bf16 = {name: merge_lora(load_adapter(load_model(llama_dir, dtype=torch.bfloat16), d))
            for name, d in adapter_dirs.items()}
    bf16[None] = load_model(llama_dir, dtype=torch.bfloat16)
    with torch.no_grad(), packed_weights(PackedWeights()):
        bf16_error = (expected_logits(bf16, ids, ROWS).float() - expected_logits(merged, ids, ROWS)).abs().max()
    error = (got - expected_logits(merged, ids, ROWS)).abs().max()
    assert 0 < error < 2 * bf16_error + 1e-3, (error, bf16_error)


@pytest.mark.parametrize("kernel", KERNELS)
def test_quantized_base(llama_dir, adapter_dirs, kernel):
    """Over an NF4 base the mixed batch equals each adapter applied alone (LoraLinear over the same NF4 layers)."""
    model = quantize_model(load_model(llama_dir))
    adapters = MultiLora(model, max_loras=4, kernel=kernel)
    for name, d in adapter_dirs.items():
        adapters.load(name, d)
    ids = inputs(len(ROWS), seed=7)
    with torch.no_grad(), adapters.rows(adapters.activate(ROWS)):
        got = model(ids)
    alone = {name: load_adapter(quantize_model(load_model(llama_dir)), d) for name, d in adapter_dirs.items()}
    alone[None] = quantize_model(load_model(llama_dir))
    torch.testing.assert_close(got, expected_logits(alone, ids, ROWS), rtol=1e-5, atol=1e-5)


def test_kernels_agree_and_match_peft_mixed_batch(llama_dir, adapter_dirs):
    model, adapters = serve(llama_dir, adapter_dirs, max_loras=4)
    ids = inputs(len(ROWS), seed=1)
    slots = adapters.activate(ROWS)
    out = {}
    with torch.no_grad(), adapters.rows(slots):
        for kernel in KERNELS:
            adapters.kernel = kernel
            out[kernel] = model(ids)
    torch.testing.assert_close(out["sgmv"], out["bmm"], rtol=1e-5, atol=1e-5)

    names = list(ADAPTERS)
    pm = peft.PeftModel.from_pretrained(make_hf_model("llama"), adapter_dirs[names[0]], adapter_name=names[0])
    for name in names[1:]:
        pm.load_adapter(adapter_dirs[name], adapter_name=name)
    with torch.no_grad():
        ref = pm.eval()(ids, adapter_names=[n or "__base__" for n in ROWS]).logits
    torch.testing.assert_close(out["sgmv"], ref, rtol=1e-4, atol=1e-4)


def test_per_token_slots_follow_the_formula():
    """lora_bmm and lora_sgmv against delta[t] = s_i B_i A_i x[t] written out token by token."""
    g = torch.Generator().manual_seed(0)
    S, r_max, d_in, d_out, N = 3, 8, 16, 24, 40
    ranks, scalings = [8, 0, 3], [0.5, 0.0, 2.0]
    A, B = torch.zeros(S, r_max, d_in), torch.zeros(S, d_out, r_max)
    for i, r in enumerate(ranks):
        A[i, :r], B[i, :, :r] = torch.randn(r, d_in, generator=g), torch.randn(d_out, r, generator=g)
    x = torch.randn(N, d_in, generator=g)
    index = torch.randint(-1, S, (N,), generator=g)
    want = torch.stack([scalings[i] * B[i] @ A[i] @ x[t] if i >= 0 else torch.zeros(d_out)
                        for t, i in enumerate(index.tolist())])
    torch.testing.assert_close(lora_bmm(x, A, B, torch.tensor(scalings), index), want)
    torch.testing.assert_close(lora_sgmv(x, A, B, scalings, ranks, segments(index)), want)
    torch.testing.assert_close(lora_grouped(x, A, B, torch.tensor(scalings), segments(index, S)), want)
    for ordered in (index.sort().values, index.clamp(min=0).sort().values):  # already in slot order: no gather
        want = torch.stack([scalings[i] * B[i] @ A[i] @ x[t] if i >= 0 else torch.zeros(d_out)
                            for t, i in enumerate(ordered.tolist())])
        segs = segments(ordered, S)
        assert segs.sorted
        torch.testing.assert_close(lora_grouped(x, A, B, torch.tensor(scalings), segs), want)


def test_per_token_slots_in_rows(llama_dir, adapter_dirs, merged):
    """rows() with a [B, T] tensor: every token of row b at slot slots[b] gives the per-row result."""
    model, adapters = serve(llama_dir, adapter_dirs, max_loras=4)
    ids = inputs(len(ROWS), seed=2)
    slots = torch.tensor(adapters.activate(ROWS))
    with torch.no_grad():
        with adapters.rows(slots):
            per_row = model(ids)
        with adapters.rows(slots[:, None].expand(ids.shape)):
            per_token = model(ids)
    assert torch.equal(per_row, per_token)


@torch.inference_mode()
def greedy(model, prompts: torch.Tensor, n: int) -> list[list[int]]:
    """Prefill the batch, then one [B, 1] forward per new token, with a KV cache."""
    cache = model.new_cache(prompts.shape[0], prompts.shape[1] + n)
    logits = model(prompts, cache=cache, last_only=True)
    out = []
    for _ in range(n):
        tok = logits[:, -1].argmax(-1)  # [B]
        out.append(tok)
        logits = model(tok[:, None], cache=cache)
    return torch.stack(out, 1).tolist()


@pytest.mark.parametrize("kernel", KERNELS)
def test_greedy_generation_in_a_mixed_batch(llama_dir, adapter_dirs, merged, kernel):
    model, adapters = serve(llama_dir, adapter_dirs, max_loras=4, kernel=kernel)
    prompts = inputs(len(ROWS), T=8, seed=3)
    with adapters.rows(adapters.activate(ROWS)):
        got = greedy(model, prompts, 16)
    params = SamplingParams(max_new_tokens=16, temperature=0.0, ignore_eos=True)
    for b, name in enumerate(ROWS):  # each row alone through the static engine on its merged model
        want = Engine(merged[name]).generate([prompts[b].tolist()], params)[0].token_ids
        assert got[b] == want, (b, name)
    assert len({tuple(t) for t in got}) > 4  # the adapters change what is generated


def test_slot_lru(llama_dir, adapter_dirs, merged):
    model, adapters = serve(llama_dir, adapter_dirs, names=["qv4", "all16", "rs8"], max_loras=2)
    assert adapters.resident() == [None, None]
    assert adapters.activate(["qv4"]) == [0]
    assert adapters.activate(["all16", None]) == [1, -1]
    assert adapters.activate(["qv4", "qv4"]) == [0, 0]  # qv4 used last: all16 is now the least recently used
    assert adapters.activate(["rs8"]) == [1]
    assert adapters.resident() == ["qv4", "rs8"]
    assert adapters.activate(["rs8", "all16"]) == [1, 0]  # qv4 is not wanted: its slot goes
    assert adapters.resident() == ["all16", "rs8"]
    with pytest.raises(UserError, match="max_loras=2"):
        adapters.activate(["qv4", "all16", "rs8"])
    # slots reused by adapters of other ranks and targets still compute each adapter exactly
    names = ["qv4", "rs8", None, "qv4"]
    ids = inputs(len(names), seed=4)
    with torch.no_grad(), adapters.rows(adapters.activate(names)):
        got = model(ids)
    assert adapters.resident() == ["qv4", "rs8"]
    torch.testing.assert_close(got, expected_logits(merged, ids, names), rtol=1e-5, atol=1e-5)


def test_cpu_pool_lru(llama_dir, adapter_dirs, merged, monkeypatch):
    model, adapters = serve(llama_dir, adapter_dirs, names=["qv4", "all16"], max_loras=1, max_cpu_loras=2)
    assert adapters.pooled() == ["qv4", "all16"]
    adapters.activate(["qv4"])
    assert adapters.pooled() == ["all16", "qv4"]  # least recently activated first
    adapters.load("rs8", adapter_dirs["rs8"])
    assert adapters.pooled() == ["qv4", "rs8"]  # all16 left the pool, qv4 (in use) stayed
    assert adapters.names() == ["qv4", "all16", "rs8"]  # still registered
    reads = []
    read = adapters._read
    monkeypatch.setattr(adapters, "_read", lambda *a: reads.append(a[0]) or read(*a))
    ids = inputs(2, seed=5)
    with torch.no_grad(), adapters.rows(adapters.activate(["all16", None])):  # read from its directory again
        got = model(ids)
    assert reads == ["all16"] and adapters.pooled() == ["rs8", "all16"]
    torch.testing.assert_close(got, expected_logits(merged, ids, ["all16", None]), rtol=1e-5, atol=1e-5)
    adapters.activate(["rs8"])
    assert reads == ["all16"]  # a pool hit


def test_cpu_pool_never_evicts_adapters_in_use(llama_dir, adapter_dirs):
    _, adapters = serve(llama_dir, adapter_dirs, names=["qv4", "all16"], max_loras=2, max_cpu_loras=2)
    adapters.activate(["qv4", "all16"])
    adapters.load("rs8", adapter_dirs["rs8"])  # both pooled adapters are in use: rs8 waits on disk
    assert adapters.pooled() == ["qv4", "all16"]
    assert adapters.activate(["rs8", None]) == [0, -1]
    assert adapters.pooled() == ["all16", "rs8"]


def test_unload_and_hot_load(llama_dir, adapter_dirs, merged):
    model, adapters = serve(llama_dir, adapter_dirs, names=["qv4", "rs8"], max_loras=2)
    names = ["qv4", "rs8", None]
    ids = inputs(len(names), seed=6)
    with torch.no_grad(), adapters.rows(adapters.activate(names)):
        before = model(ids)
        adapters.load("mlp2", adapter_dirs["mlp2"])  # wraps gate/up_proj while a batch is running
        assert isinstance(model.model.layers[0].mlp.gate_proj, MultiLoraLinear)
        assert torch.equal(model(ids), before)
        adapters.unload("rs8")  # its slot's tensors stay for the forward in flight
        assert torch.equal(model(ids), before)
    assert adapters.names() == ["qv4", "mlp2"] and adapters.resident() == ["qv4", None]
    with pytest.raises(UserError, match="unknown adapter 'rs8'"):
        adapters.activate(["qv4", "rs8"])
    with pytest.raises(UserError, match="unknown adapter"):
        adapters.unload("rs8")
    names = ["mlp2", "qv4", None]
    with torch.no_grad(), adapters.rows(adapters.activate(names)):  # mlp2 takes rs8's freed slot
        got = model(ids)
    assert adapters.resident() == ["qv4", "mlp2"]
    torch.testing.assert_close(got, expected_logits(merged, ids, names), rtol=1e-5, atol=1e-5)
    adapters.load("rs8", adapter_dirs["rs8"])  # the name can be loaded again
    with pytest.raises(UserError, match="already loaded"):
        adapters.load("rs8", adapter_dirs["rs8"])


def copy_adapter(src, dst, config=None, tensors=None):
    dst.mkdir()
    cfg = json.loads((src / "adapter_config.json").read_text())
    (dst / "adapter_config.json").write_text(json.dumps({**cfg, **(config or {})}))
    save_file(tensors(load_file(src / "adapter_model.safetensors")) if tensors else
              load_file(src / "adapter_model.safetensors"), dst / "adapter_model.safetensors")
    return dst


def test_bad_adapters_raise_user_errors_naming_the_file(llama_dir, adapter_dirs, tmp_path):
    _, adapters = serve(llama_dir, adapter_dirs, names=[])
    src = adapter_dirs["qv4"]
    with pytest.raises(CheckpointError, match="no such directory"):
        adapters.load("x", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="adapter_config.json"):
        adapters.load("x", tmp_path / "empty")
    bad_r = copy_adapter(src, tmp_path / "bad_r", config={"r": 8})
    with pytest.raises(CheckpointError, match=r"adapter_model\.safetensors.*lora_A\.weight has shape \(4, 64\)"):
        adapters.load("x", bad_r)
    other = copy_adapter(src, tmp_path / "other", config={"target_modules": ["c_attn"]})
    with pytest.raises(CheckpointError, match=r"adapter_config\.json.*matches no module"):
        adapters.load("x", other)
    extra = copy_adapter(src, tmp_path / "extra", tensors=lambda t: {
        **t, "base_model.model.model.layers.0.mlp.foo_proj.lora_A.weight": torch.zeros(4, 64)})
    with pytest.raises(CheckpointError, match=r"adapter_model\.safetensors.*1 unexpected.*foo_proj"):
        adapters.load("x", extra)
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "adapter_config.json").write_text((src / "adapter_config.json").read_text())
    with pytest.raises(CheckpointError, match="no adapter_model.safetensors"):
        adapters.load("x", tmp_path / "noweights")
    dora = make_adapter(tmp_path / "dora", 9, r=4, target_modules=["q_proj"], use_dora=True)
    with pytest.raises(UserError, match="DoRA"):
        adapters.load("x", dora)
    assert adapters.names() == []  # nothing half-loaded
    with pytest.raises(UserError, match="unknown adapter 'x'"):
        adapters.activate(["x"])


def test_bad_options(llama_dir, adapter_dirs):
    model = load_model(llama_dir)
    with pytest.raises(ConfigError, match="kernel"):
        MultiLora(model, kernel="triton")
    with pytest.raises(ConfigError, match="max_cpu_loras"):
        MultiLora(model, max_loras=4, max_cpu_loras=2)
    model, adapters = serve(llama_dir, adapter_dirs, names=["qv4"], max_loras=2)
    with pytest.raises(ValueError, match="slots must be in"):
        with adapters.rows([0, 2]):
            pass
    with pytest.raises(ValueError, match="2 row slots, the layer's input has shape"):
        with torch.no_grad(), adapters.rows(adapters.activate(["qv4", None])):
            model(inputs(3))
