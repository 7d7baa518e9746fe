"""transformers loads the quantised directories `alignlab quantize` writes, with the kernels of each method's own
library: bitsandbytes for int8 and nf4, GPTQModel (through optimum) for gptq and awq. It reads the same weights
alignlab stored: nf4 dequantises to exactly alignlab's weights, the int8 codes and row scales (SCB) are alignlab's,
and every quantised Linear of the gptq and awq models gives alignlab's output on the same input to within the fp16
rounding of GPTQModel's CPU kernels (measured: max |difference| 0.009-0.015 on outputs of size about 3, i.e. under
0.5%; asserted: 2%).

Marked `interop` (deselected by default); the libraries live in their own venv:

    python3 -m venv .venv-quant
    .venv-quant/bin/pip install -c constraints.txt torch==2.13.0
    .venv-quant/bin/pip install -c constraints.txt transformers accelerate bitsandbytes optimum gptqmodel
    OMP_NUM_THREADS=2 .venv/bin/python -m pytest -m interop tests/test_interop_hf_quant.py

ALIGNLAB_QUANT_PYTHON names another interpreter with those packages.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from alignlab.model.config import preset
from alignlab.model.transformer import CausalLM
from alignlab.quant import QuantConfig, load_quantized, quantize_post_training, save_quantized

pytestmark = pytest.mark.interop

ROOT = Path(__file__).resolve().parents[1]
PYTHON = Path(os.environ.get("ALIGNLAB_QUANT_PYTHON", ROOT / ".venv-quant" / "bin" / "python"))

# runs in .venv-quant: load a directory with transformers, report each quantised Linear's weights or outputs
HELPER = r'''
import json, sys, warnings
import torch
warnings.filterwarnings("ignore")
from transformers import AutoModelForCausalLM
directory, method, inputs, out = sys.argv[1:]
model = AutoModelForCausalLM.from_pretrained(directory, device_map="cpu")
x = torch.load(inputs)
result = {"classes": sorted({type(m).__name__ for n, m in model.named_modules() if n.endswith("q_proj")})}
layers = {n: m for n, m in model.named_modules() if n.startswith("model.layers.") and n.endswith("_proj")}
tensors = {}
with torch.no_grad():
    for name, layer in layers.items():
        if method == "nf4":
            import bitsandbytes.functional as BF
            tensors[name] = BF.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
        elif method == "int8":
            tensors[name + ".weight"] = layer.weight.data.clone()
            tensors[name + ".SCB"] = layer.weight.SCB.float().clone()
        else:
            tensors[name] = layer(x[str(layer.in_features)]).float()
    result["logits"] = model(x["ids"]).logits.float().tolist()
torch.save(tensors, out)
print(json.dumps(result))
'''


@pytest.fixture(scope="module")
def quantised(tmp_path_factory):
    if not PYTHON.exists():
        pytest.skip(f"no {PYTHON}: set up .venv-quant (see this module's docstring) or set ALIGNLAB_QUANT_PYTHON")
    root = tmp_path_factory.mktemp("hfquant")
    g = torch.Generator().manual_seed(1)
    calibration = [torch.randint(0, 256, (4, 64), generator=g) for _ in range(4)]
    dirs = {}
    for method in ("int8", "nf4", "gptq", "awq"):
        torch.manual_seed(0)
        model = CausalLM(preset("llama", vocab_size=256, dim=128, n_layers=2, n_heads=2, hidden_dim=256,
                                max_seq_len=128)).requires_grad_(False)
        cfg = QuantConfig(method, bits=4 if method != "int8" else 8, group_size=64)
        quantize_post_training(model, cfg, calibration)
        dirs[method] = save_quantized(model, root / method, cfg)
    inputs = {"128": torch.randn(16, 128, generator=g), "256": torch.randn(16, 256, generator=g),
              "ids": torch.randint(0, 256, (2, 24), generator=g)}
    torch.save(inputs, root / "inputs.pt")
    (root / "helper.py").write_text(HELPER)
    return root, dirs, inputs


def run_transformers(root: Path, directory: Path, method: str) -> tuple[dict, dict]:
    out = root / f"{method}.pt"
    done = subprocess.run([str(PYTHON), str(root / "helper.py"), str(directory), method, str(root / "inputs.pt"),
                           str(out)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), torch.load(out)


@pytest.mark.parametrize("method,cls", [("int8", "Linear8bitLt"), ("nf4", "Linear4bit"), ("gptq", "TorchAtenLinear"),
                                        ("awq", "TorchAtenAwqLinear")])
def test_transformers_reads_alignlabs_quantised_weights(quantised, method, cls):
    root, dirs, inputs = quantised
    result, theirs = run_transformers(root, dirs[method], method)
    assert result["classes"] == [cls]
    ours = load_quantized(dirs[method])
    layers = {n: m for n, m in ours.named_modules() if n.startswith("model.layers.") and n.endswith("_proj")}
    assert len(layers) == 14
    for name, layer in layers.items():
        if method == "nf4":
            assert torch.equal(theirs[name], layer.dequantize()), name  # the same bits, the same weights
        elif method == "int8":
            assert torch.equal(theirs[name + ".weight"], layer.weight), name
            torch.testing.assert_close(theirs[name + ".SCB"], layer.SCB)
        else:
            with torch.no_grad():
                want = layer(inputs[str(layer.in_features)])
            assert (theirs[name] - want).abs().max() < 0.02 * want.abs().max(), name
    with torch.no_grad():
        ours_logits = ours(inputs["ids"])
    agree = (torch.tensor(result["logits"]).argmax(-1) == ours_logits.argmax(-1)).float().mean()
    assert agree > 0.9, f"next-token argmax agrees on {agree:.0%} of positions"
