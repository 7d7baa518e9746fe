"""mergekit as the oracle of `alignlab.merge`: the same tiny Llamas merged by both, tensors compared in fp32.

Marked `interop` (deselected by default): mergekit lives in its own venv, next to alignlab's torch:

    python3 -m venv .venv-mergekit
    .venv-mergekit/bin/pip install -c constraints.txt torch==2.13.0
    .venv-mergekit/bin/pip install -c constraints.txt mergekit          # 0.1.5 when this was written
    OMP_NUM_THREADS=2 .venv/bin/python -m pytest -m interop tests/test_interop_mergekit.py

ALIGNLAB_MERGEKIT_PYTHON names another interpreter with mergekit. One subprocess runs every merge through
mergekit's Python API (`run_merge`, what `mergekit-yaml config.yml out` calls), from the YAML configs written here.

What matches (atol 1e-6): linear, task_arithmetic, ties (trim, sign election, disjoint mean, weights, λ), slerp,
and DARE (dare_linear, dare_ties) at density 1, and a linear and a TIES merge of two LoRA adapters (mergekit's
`base+adapter` syntax folds each adapter in through PEFT; alignlab merges their deltas s B A). What differs by design:
DARE below density 1. mergekit draws its masks from torch's global generator (`--random-seed`) in its own tensor
order, and rescales the kept entries to keep each tensor's L1 norm, where alignlab draws from its own seeded
generator and rescales by 1 / (1 - p) as the paper does; the two agree in expectation only, so DARE is compared where
it is deterministic (density 1: nothing dropped), which still checks the weights, λ, normalize and the sign election.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from alignlab.lora import LoraConfig, apply_lora, save_adapter
from alignlab.merge import MergeOptions, merge_directories
from alignlab.merge.models import model_tensors
from alignlab.model.hf import load_model, save_model

from .test_merge import fine_tune, tiny

pytestmark = pytest.mark.interop
ROOT = Path(__file__).resolve().parents[1]
MERGEKIT_PYTHON = Path(os.environ.get("ALIGNLAB_MERGEKIT_PYTHON", ROOT / ".venv-mergekit" / "bin" / "python"))

RUN_ALL = """
import json, sys, yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import MergeOptions, run_merge

for job in json.load(open(sys.argv[1])):
    config = MergeConfiguration.model_validate(yaml.safe_load(open(job["config"])))
    run_merge(config, job["out"], MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True,
                                               lora_merge_cache=job["cache"]))
"""

# name -> (alignlab's options, [(model, weight)], whether the base is given, mergekit's config)
CASES = {
    "linear": (dict(), [("a", 1.0), ("b", 3.0)], False, """
merge_method: linear
models:
  - {model: {a}, parameters: {weight: 1.0}}
  - {model: {b}, parameters: {weight: 3.0}}
"""),
    "linear_no_normalize": (dict(normalize=False), [("a", 0.3), ("b", 0.5)], False, """
merge_method: linear
parameters: {normalize: false}
models:
  - {model: {a}, parameters: {weight: 0.3}}
  - {model: {b}, parameters: {weight: 0.5}}
"""),
    "task_arithmetic": (dict(lam=0.7), [("a", 1.0), ("b", 0.5)], True, """
merge_method: task_arithmetic
base_model: {base}
parameters: {lambda: 0.7}
models:
  - {model: {a}, parameters: {weight: 1.0}}
  - {model: {b}, parameters: {weight: 0.5}}
"""),
    "ties": (dict(density=0.4, lam=0.9), [("a", 1.0), ("b", 0.6), ("c", 0.8)], True, """
merge_method: ties
base_model: {base}
parameters: {lambda: 0.9}
models:
  - {model: {a}, parameters: {weight: 1.0, density: 0.4}}
  - {model: {b}, parameters: {weight: 0.6, density: 0.4}}
  - {model: {c}, parameters: {weight: 0.8, density: 0.4}}
"""),
    "dare_ties": (dict(density=1.0), [("a", 1.0), ("b", 0.6), ("c", 0.8)], True, """
merge_method: dare_ties
base_model: {base}
models:
  - {model: {a}, parameters: {weight: 1.0, density: 1.0}}
  - {model: {b}, parameters: {weight: 0.6, density: 1.0}}
  - {model: {c}, parameters: {weight: 0.8, density: 1.0}}
"""),
    "dare_linear": (dict(density=1.0, normalize=True), [("a", 1.0), ("b", 0.6)], True, """
merge_method: dare_linear
base_model: {base}
parameters: {normalize: true}
models:
  - {model: {a}, parameters: {weight: 1.0, density: 1.0}}
  - {model: {b}, parameters: {weight: 0.6, density: 1.0}}
"""),
    "slerp": (dict(t=0.3), [("a", 1.0), ("b", 1.0)], False, """
merge_method: slerp
base_model: {a}
parameters: {t: 0.3}
models:
  - {model: {a}}
  - {model: {b}}
"""),
    "linear_adapters": (dict(), [("lora_a", 1.0), ("lora_c", 2.0)], True, """
merge_method: linear
models:
  - {model: {base}+{lora_a}, parameters: {weight: 1.0}}
  - {model: {base}+{lora_c}, parameters: {weight: 2.0}}
"""),
    "ties_adapters": (dict(density=0.5), [("lora_a", 1.0), ("lora_c", 1.0)], True, """
merge_method: ties
base_model: {base}
models:
  - {model: {base}+{lora_a}, parameters: {weight: 1.0, density: 0.5}}
  - {model: {base}+{lora_c}, parameters: {weight: 1.0, density: 0.5}}
"""),
}


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    """Every case merged by mergekit (one subprocess) and by alignlab: {case: (mergekit's, alignlab's)}."""
    if not MERGEKIT_PYTHON.exists():
        pytest.skip(f"mergekit is not installed at {MERGEKIT_PYTHON} (see this module's docstring)")
    root = tmp_path_factory.mktemp("mergekit")
    base = tiny()
    dirs = {"base": save_model(base, root / "base"),
            "a": save_model(fine_tune(base, 1), root / "a"),
            "b": save_model(fine_tune(base, 2, names=("q_proj", "up_proj", "norm")), root / "b"),
            "c": save_model(fine_tune(base, 3, names=("k_proj", "down_proj", "embed")), root / "c")}
    for name, seed, cfg in (("lora_a", 1, dict(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])),
                            ("lora_c", 3, dict(r=2, lora_alpha=8, target_modules=["v_proj", "up_proj"]))):
        torch.manual_seed(seed)
        dirs[name] = save_adapter(apply_lora(copy.deepcopy(base), LoraConfig(init_lora_weights=False, **cfg)),
                                  root / name)
    jobs = []
    for case, (_, _, _, yaml) in CASES.items():
        config = root / f"{case}.yml"
        text = yaml
        for name, d in dirs.items():
            text = text.replace("{" + name + "}", str(d))
        config.write_text(text.strip() + "\ndtype: float32\n")
        jobs.append({"config": str(config), "out": str(root / "mergekit" / case), "cache": str(root / "cache")})
    (root / "jobs.json").write_text(json.dumps(jobs))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    run = subprocess.run([str(MERGEKIT_PYTHON), "-c", RUN_ALL, str(root / "jobs.json")], capture_output=True,
                         text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = {}
    for case, (options, models, with_base, _) in CASES.items():
        method = case.removesuffix("_no_normalize").removesuffix("_adapters")
        merge_directories(MergeOptions(method, **options), [(dirs[m], w) for m, w in models], root / "alignlab" / case,
                          base=dirs["base"] if with_base else None)
        out[case] = (model_tensors(load_model(root / "mergekit" / case)),
                     model_tensors(load_model(root / "alignlab" / case)))
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_alignlab_merges_as_mergekit_does(merged, case):
    theirs, ours = merged[case]
    assert theirs.keys() == ours.keys()
    for key in ours:
        assert torch.allclose(ours[key], theirs[key], rtol=0, atol=1e-6), (
            f"{case}: {key} differs by {(ours[key] - theirs[key]).abs().max().item():.3g}")
