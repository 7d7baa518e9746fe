"""lm-evaluation-harness against `alignlab serve`: its `local-completions` model scores a local multiple-choice task
file exactly as `alignlab eval` scores the same file on the same weights (acc and acc_norm equal), and its
generation requests get the engine's greedy text.

Marked `interop` (deselected by default): lm-eval lives in its own venv, as CI sets it up:

    python3 -m venv .venv-lmeval
    .venv-lmeval/bin/pip install torch==2.13.0 && .venv-lmeval/bin/pip install 'lm-eval[api]==0.4.13' torch==2.13.0
    OMP_NUM_THREADS=2 .venv/bin/python -m pytest -m interop tests/test_interop_lm_eval.py

ALIGNLAB_LMEVAL_PYTHON names another interpreter with lm-eval. The server runs in this process; lm-eval reads the
tokenizer through the server's /tokenize endpoints (tokenizer_backend=auto) and the tasks from a YAML file with
`dataset_path: json` (offline: HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from alignlab.eval.backends import GenRequest, LocalModel
from alignlab.eval.harness import evaluate
from alignlab.serve import build_state

from .test_eval_harness import WORDS, model_dir, write_mc  # noqa: F401  (model_dir is a fixture)
from .test_serve import load, serving

pytestmark = pytest.mark.interop
ROOT = Path(__file__).resolve().parents[1]
LMEVAL_PYTHON = Path(os.environ.get("ALIGNLAB_LMEVAL_PYTHON", ROOT / ".venv-lmeval" / "bin" / "python"))

MC_TASK = """task: alignlab_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
  - metric: acc_norm
"""

GEN_TASK = """task: alignlab_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 12
  do_sample: false
metric_list:
  - metric: exact_match
"""


@pytest.fixture(scope="module")
def lm_eval_python():
    if not LMEVAL_PYTHON.exists():
        pytest.skip(f"lm-evaluation-harness not installed at {LMEVAL_PYTHON} (see this module's docstring)")
    return LMEVAL_PYTHON


def test_lm_eval_scores_a_served_model_as_alignlab_does(lm_eval_python, model_dir, tmp_path):  # noqa: F811
    mc = write_mc(tmp_path / "mc.jsonl", n=40, seed=1)
    gen = tmp_path / "gen.jsonl"
    gen.write_text("".join(json.dumps({"question": " ".join(WORDS[i:i + 5]), "answer": "x"}) + "\n"
                           for i in range(6)))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "alignlab_mc.yaml").write_text(MC_TASK.format(data=mc))
    (tasks / "alignlab_gen.yaml").write_text(GEN_TASK.format(data=gen))

    model, tok = load(model_dir)
    with serving(build_state(model, tok, model_names=["tiny"], model_path=str(model_dir))) as server:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        run = subprocess.run(
            [str(lm_eval_python), "-m", "lm_eval", "--model", "local-completions", "--model_args",
             f"base_url={server.api}/completions,model=tiny,tokenizer_backend=auto,num_concurrent=2,max_retries=1",
             "--tasks", "alignlab_mc,alignlab_gen", "--include_path", str(tasks), "--output_path",
             str(tmp_path / "out"), "--log_samples"],
            capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    (results_file,) = (tmp_path / "out").rglob("results_*.json")
    theirs = json.loads(results_file.read_text())["results"]["alignlab_mc"]

    local = LocalModel(str(model_dir), dtype="fp32")
    ours = evaluate(local, [f"mc:{mc}"], tmp_path / "ours")["tasks"][f"mc:{mc}"]["metrics"]
    assert theirs["acc,none"] == pytest.approx(ours["acc"]["value"], abs=1e-12)
    assert theirs["acc_norm,none"] == pytest.approx(ours["acc_norm"]["value"], abs=1e-12)
    (ours_file,) = (tmp_path / "ours").glob("mc_*.json")
    picks = json.loads(ours_file.read_text())["samples"]
    assert 0 < ours["acc"]["value"] < 1 and any(s["pred"] != s["pred_norm"] for s in picks)  # both rules matter

    (samples_file,) = (tmp_path / "out").rglob("samples_alignlab_gen_*.jsonl")
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    prompts = {s["doc"]["question"]: s["resps"][0][0] for s in samples}
    expected = local.generate([GenRequest(q, max_tokens=12, stop=("\n",)) for q in prompts])
    assert list(prompts.values()) == expected
