"""llama.cpp runs alignlab's GGUF exports: `alignlab export gguf` writes f32, q8_0 and q4_0 files, and llama.cpp
(through llama-cpp-python, in its own venv) tokenizes the prompts exactly as alignlab does, gives the same greedy
tokens as alignlab's Engine on the f32 file, and logits within a measured tolerance of alignlab's fp32 logits on the
quantized files.

Models: the pipeline's TinyWorld SFT model when runs/table/seed0/sft/model exists (4 layers, dim 128, a byte-level
BPE of 768 tokens), and three tiny random models built here, so the test also runs on a clean checkout: a GQA Llama
whose MLP width (72) is not a multiple of 32 (ffn_down stays f16 in the quantized files), a Qwen2 (q/k/v biases) and
a Qwen3 (QK-norm, head_dim 32 != dim / heads, tied embeddings). Prompts: 16 held-out TinyWorld chat prompts (math
levels 1-4 and safety) and 4 plain texts; 24 greedy tokens each (eos ignored on both sides).

Marked `interop` (deselected by default). Set it up once (compiles llama.cpp: about 5 minutes on 2 cores) and run:

    python3 -m venv .venv-llama
    CMAKE_ARGS="-DLLAVA_BUILD=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 \\
        .venv-llama/bin/pip install numpy llama-cpp-python==0.3.36
    OMP_NUM_THREADS=2 .venv/bin/python -m pytest -m interop tests/test_interop_llamacpp.py -s

ALIGNLAB_LLAMA_PYTHON names another interpreter with llama_cpp. Without this test's helper, the same check by hand
(llama.cpp's text runs on past the answer: `generate` does not stop at <|end|>, and detokenize hides control tokens):

    .venv/bin/alignlab export gguf --model runs/table/seed0/sft/model --type f32 --out /tmp/sft.f32.gguf
    .venv-llama/bin/python -c "import itertools; from llama_cpp import Llama
    llm = Llama('/tmp/sft.f32.gguf', n_ctx=256, verbose=False)
    ids = llm.tokenize(b'<|user|>Calculate 8 + 9.<|end|><|assistant|>', add_bos=False, special=True)
    print(ids, llm.detokenize(list(itertools.islice(llm.generate(ids, temp=0.0), 24))))"
    .venv/bin/alignlab generate --model runs/table/seed0/sft/model --dtype fp32 --temperature 0 --max-new-tokens 24 \\
        --prompt '<|user|>Calculate 8 + 9.<|end|><|assistant|>'

The helper keeps llama.cpp's KV cache in F32 (type_k = type_v = 0; the default F16 cache alone moves the f32 file's
logits by up to 1e-2) and turns off llama.cpp's extra buffer types (AMX, repacking: on an AMX CPU this build segfaults
on q8_0/q4_0 models otherwise, see HELPER). Greedy decoding is eval + argmax over `llm.scores`, which is what
`llm.generate(ids, temp=0.0)` does; llama.cpp's own quantizer, run on the f32 file, must write the same blocks.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from alignlab.cli import main
from alignlab.infer import Engine, SamplingParams
from alignlab.model import CausalLM, preset
from alignlab.model.hf import load_model, save_model
from alignlab.quant.gguf import fake_quantize, storage_type
from alignlab.text import load_tokenizer

from .hf_models import require

pytestmark = pytest.mark.interop
require("gguf")

ROOT = Path(__file__).resolve().parents[1]
LLAMA_PYTHON = Path(os.environ.get("ALIGNLAB_LLAMA_PYTHON", ROOT / ".venv-llama" / "bin" / "python"))
if not LLAMA_PYTHON.exists():
    pytest.skip(f"no llama-cpp-python interpreter at {LLAMA_PYTHON} (see this module's docstring to set one up, or "
                "set ALIGNLAB_LLAMA_PYTHON)", allow_module_level=True)

PIPELINE_MODEL = ROOT / "runs" / "table" / "seed0" / "sft" / "model"
TYPES = ("f32", "q8_0", "q4_0")
N_CTX = 256
NEW = 24
PLAIN = ["Tom has 3 apples and buys 4 more.", "  two  spaces\tand a tab\n\nthen new lines ",
         "naïve café: 42°C, don't stop! 😀", "It's what they'll say: 'x1y2' == 123456789."]
# tokenized only (llama.cpp's GPT-2 pre-tokenizer against alignlab's regex and special-token matching)
TEXTS = ["<|user|>hi<|end|><|assistant|>", "<|user |> is not special", "trailing   ", "\n\n\n", "a\r\nb",
         "I'm, you're; we've -- I'd 'll", "Ünïcödé ∑ 日本語 😀😀", "   leading spaces", "x=1;y=2 ** 3"]

# Logits of the prompt positions, |llama.cpp - alignlab|, max / mean over every position of the 20 prompts (measured
# on an Intel Xeon with AMX, 2 threads, llama-cpp-python 0.3.36 built from source):
#
#   model          f32 file            q8_0 vs fp32     q4_0 vs fp32     q8_0 vs same weights  q4_0 vs same weights
#   TinyWorld SFT  2.2e-5 / 1.1e-6     0.363 / 0.0251   3.465 / 0.2322   0.372 / 0.0210        0.330 / 0.0214
#   llama-random   2.0e-6 / 2.7e-7     0.121 / 0.0104   1.234 / 0.1483   0.078 / 0.0070        0.062 / 0.0071
#   qwen2-random   2.7e-6 / 3.6e-7     0.123 / 0.0156   1.541 / 0.1969   0.082 / 0.0109        0.075 / 0.0104
#   qwen3-random   3.0e-6 / 3.6e-7     0.133 / 0.0152   1.553 / 0.1951   0.083 / 0.0100        0.083 / 0.0098
#
# "same weights": alignlab running the weights the file holds (quantize -> dequantize); what is left is llama.cpp's
# own int8 rounding of the activations (its q8_0 and q4_0 dot products take Q8_0-quantized inputs), so for q4_0 the
# mean difference drops 10x against it: the file holds exactly the weights alignlab quantized. The KV cache is F32 here;
# with llama.cpp's default F16 cache the f32 file differs by up to 1.1e-2 (mean 5.5e-4) on TinyWorld and one of the
# 20 greedy continuations of the random Llama flips at a near-tie.
F32_CACHE = True
F32_TOL = 1e-4  # max abs, f32 file
QUANT_TOL = {"q8_0": (0.5, 0.04), "q4_0": (4.5, 0.3)}  # (max, mean) abs vs alignlab's fp32 logits
SAME_WEIGHTS_TOL = (0.5, 0.03)  # (max, mean) abs vs alignlab running the dequantized weights, both types

HELPER = r'''
import json, sys
import numpy as np
import llama_cpp
import llama_cpp.llama_cpp as lib
from llama_cpp import Llama

# no extra buffer types (AMX, repacked weights): on a CPU with AMX, 0.3.36's AMX matmul segfaults on these tiny
# q8_0/q4_0 models, on files llama.cpp quantized itself too (ggml_backend_amx_mul_mat); llama-cli's --no-repack
defaults = lib.llama_model_default_params
def model_params():
    params = defaults()
    params.use_extra_bufts = False
    return params
lib.llama_model_default_params = model_params

req = json.load(open(sys.argv[1]))
result = {}
for kind, path in req["files"].items():
    cache = {"type_k": 0, "type_v": 0} if req["f32_cache"] else {}  # GGML_TYPE_F32 instead of the default F16
    llm = Llama(path, n_ctx=req["n_ctx"], logits_all=True, n_threads=2, verbose=False, **cache)
    rows, logits = [], {}
    for i, text in enumerate(req["prompts"]):
        ids = llm.tokenize(text.encode(), add_bos=False, special=True)
        llm.reset()
        llm.eval(ids)
        logits[f"p{i}"] = np.array(llm.scores[: len(ids)], dtype=np.float32)
        greedy = []
        for step in range(req["new"]):
            greedy.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            if step + 1 < req["new"]:
                llm.eval([greedy[-1]])
        rows.append({"ids": ids, "greedy": greedy})
    np.savez(f"{req['out']}/{kind}.npz", **logits)
    texts = [llm.tokenize(t.encode(), add_bos=False, special=True) for t in req["texts"]]
    result[kind] = {"rows": rows, "texts": texts, "n_vocab": llm.n_vocab()}
    llm.close()

# llama.cpp's own quantizer on the f32 file, every tensor in the one type (pure; no Q6_K output)
for kind, ftype in (("q8_0", 7), ("q4_0", 2)):
    params = lib.llama_model_quantize_default_params()
    params.ftype, params.pure = ftype, True
    out = f"{req['out']}/llama_cpp.{kind}.gguf".encode()
    assert lib.llama_model_quantize(req["files"]["f32"].encode(), out, params) == 0
print(json.dumps(result))
'''


def random_model(arch: str, vocab_size: int, eos: int, **kw) -> CausalLM:
    """Weights 5x the usual init (so greedy choices are not near-ties) and random norms and biases."""
    torch.manual_seed(0)
    config = preset(arch, vocab_size=vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=N_CTX,
                    eos_token_id=eos, init_std=0.1, **kw)
    model = CausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


RANDOM = {"llama-random": ("llama", {"hidden_dim": 72}), "qwen2-random": ("qwen2", {}),
          "qwen3-random": ("qwen3", {"head_dim": 32, "tie_embeddings": True})}


def chat_prompts(tok, world) -> list[str]:
    """16 held-out TinyWorld prompts rendered with the tokenizer's chat template (3 per math level, 4 safety)."""
    math = [p for level in (1, 2, 3, 4) for p in world.rl_prompts("test", level=level)[:3]]
    safety = world.safety_prompts("test")[:4]
    return [tok.apply_chat_template(p["prompt"], add_generation_prompt=True, tokenize=False) for p in math + safety]


def run_llama(files: dict[str, Path], prompts: list[str], tmp: Path) -> dict:
    request = tmp / "request.json"
    request.write_text(json.dumps({"files": {k: str(v) for k, v in files.items()}, "prompts": prompts, "texts": TEXTS,
                                   "n_ctx": N_CTX, "new": NEW, "out": str(tmp),
                                   "f32_cache": F32_CACHE}))
    (tmp / "helper.py").write_text(HELPER)
    done = subprocess.run([str(LLAMA_PYTHON), str(tmp / "helper.py"), str(request)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for kind in files:
        with np.load(tmp / f"{kind}.npz") as z:
            for i, row in enumerate(result[kind]["rows"]):
                row["logits"] = torch.from_numpy(z[f"p{i}"])
    return result


def with_file_weights(model: CausalLM, kind: str) -> CausalLM:
    """A copy of `model` whose weights are what a reader of the `kind` file gets back (quantize -> dequantize)."""
    copy = CausalLM(model.config).eval()
    copy.load_state_dict({name: fake_quantize(w, storage_type(w, kind)[0]) if w.dim() == 2 else w
                          for name, w in model.state_dict().items()})
    return copy


@pytest.fixture(scope="module", params=["tinyworld", *RANDOM])
def case(request, tmp_path_factory, world):
    """For one model: its three GGUF files run by llama.cpp, and alignlab's tokens, logits and greedy tokens."""
    tmp = tmp_path_factory.mktemp(request.param)
    if request.param == "tinyworld":
        if not (PIPELINE_MODEL / "config.json").is_file():
            pytest.skip(f"{PIPELINE_MODEL} does not exist (run the pipeline for seed 0)")
        model_dir = PIPELINE_MODEL
    else:
        tok = world.tokenizer()
        arch, kw = RANDOM[request.param]
        model_dir = save_model(random_model(arch, tok.vocab_size, tok.eos_token_id, **kw), tmp / "model", tokenizer=tok)
    tok = load_tokenizer(model_dir)
    model = load_model(model_dir, dtype=torch.float32)
    prompts = chat_prompts(tok, world) + PLAIN
    files = {}
    for kind in TYPES:
        files[kind] = tmp / f"model.{kind}.gguf"
        assert main(["export", "gguf", "--model", str(model_dir), "--type", kind, "--out", str(files[kind])]) == 0
    llama = run_llama(files, prompts, tmp)

    ids = [tok.encode(p, add_special_tokens=False) for p in prompts]
    engine = Engine(model, tok)
    greedy = [c.token_ids for c in engine.generate(ids, SamplingParams(max_new_tokens=NEW, temperature=0,
                                                                        ignore_eos=True))]
    with torch.no_grad():
        logits = {"fp32": [model(torch.tensor([x]))[0] for x in ids]}
        for kind in ("q8_0", "q4_0"):
            same = with_file_weights(model, kind)
            logits[kind] = [same(torch.tensor([x]))[0] for x in ids]
    sizes = {kind: f.stat().st_size for kind, f in files.items()}
    files.update({f"llama_cpp.{kind}": tmp / f"llama_cpp.{kind}.gguf" for kind in ("q8_0", "q4_0")})
    return dict(name=request.param, tok=tok, ids=ids, greedy=greedy, logits=logits, llama=llama, sizes=sizes,
                files=files)


def diffs(case, kind: str, reference: str) -> tuple[float, float]:
    """max and mean |llama.cpp logits - alignlab logits| over every prompt position of every prompt."""
    d = torch.cat([(row["logits"] - ref).abs().flatten()
                   for row, ref in zip(case["llama"][kind]["rows"], case["logits"][reference])])
    return d.max().item(), d.mean().item()


def test_llama_cpp_tokenizes_as_alignlab(case):
    for kind in TYPES:
        assert [row["ids"] for row in case["llama"][kind]["rows"]] == case["ids"], kind
        assert case["llama"][kind]["texts"] == [case["tok"].encode(t, add_special_tokens=False) for t in TEXTS], kind
        assert case["llama"][kind]["n_vocab"] == case["tok"].vocab_size


def test_f32_greedy_tokens_are_alignlabs(case):
    ours, theirs = case["greedy"], [row["greedy"] for row in case["llama"]["f32"]["rows"]]
    same = sum(a == b for a, b in zip(ours, theirs))
    print(f"\n{case['name']}: f32 greedy tokens equal on {same}/{len(ours)} prompts; logits max/mean abs diff "
          "%.2e / %.2e" % diffs(case, "f32", "fp32"))
    assert same == len(ours)
    assert diffs(case, "f32", "fp32")[0] < F32_TOL


@pytest.mark.parametrize("kind", ["q8_0", "q4_0"])
def test_quantized_logits_within_tolerance(case, kind):
    vs_fp32, vs_same = diffs(case, kind, "fp32"), diffs(case, kind, kind)
    theirs = [row["greedy"] for row in case["llama"][kind]["rows"]]
    agree = sum(a == b for a, b in zip(case["greedy"], theirs))
    print(f"\n{case['name']} {kind} ({case['sizes'][kind]:,} bytes; f32 {case['sizes']['f32']:,}): logits vs fp32 "
          f"max {vs_fp32[0]:.3f} mean {vs_fp32[1]:.4f}; vs the same dequantized weights max {vs_same[0]:.4f} "
          f"mean {vs_same[1]:.5f}; greedy tokens equal to fp32's on {agree}/{len(theirs)} prompts")
    max_tol, mean_tol = QUANT_TOL[kind]
    assert vs_fp32[0] < max_tol and vs_fp32[1] < mean_tol
    assert vs_same[0] < SAME_WEIGHTS_TOL[0] and vs_same[1] < SAME_WEIGHTS_TOL[1]


@pytest.mark.parametrize("kind", ["q8_0", "q4_0"])
def test_llama_cpp_quantizer_writes_the_same_blocks(case, kind):
    """llama.cpp quantizing the f32 file gives byte for byte the blocks alignlab wrote (llama.cpp picks its own
    fallback type where alignlab kept f16, so those tensors are skipped)."""
    import gguf

    ours = {t.name: t for t in gguf.GGUFReader(case["files"][kind]).tensors}
    theirs = {t.name: t for t in gguf.GGUFReader(case["files"][f"llama_cpp.{kind}"]).tensors}
    assert set(ours) == set(theirs)
    quantized = [name for name, t in ours.items() if t.tensor_type.name == kind.upper()]
    assert quantized
    for name in quantized:
        assert theirs[name].tensor_type == ours[name].tensor_type, name
        assert np.array_equal(np.asarray(theirs[name].data), np.asarray(ours[name].data)), name
