"""Run inside a venv with bfcl-eval: read cases (JSON on stdin, from bfcl_cases.py) and print bfcl-eval's verdict
of each, one JSON line per case. Irrelevance is bfcl-eval's relevance rule: right when nothing decodes to a call."""

import json
import os
import sys
import tempfile

os.environ.setdefault("BFCL_PROJECT_ROOT", tempfile.mkdtemp())

from bfcl_eval.constants.enums import Language  # noqa: E402
from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker  # noqa: E402
from bfcl_eval.utils import is_empty_output  # noqa: E402

for case in json.load(sys.stdin):
    output = [{c["name"]: c["arguments"]} for c in case["calls"]]
    if case["category"] == "irrelevance":
        valid = is_empty_output(output)
        error_type = "" if valid else "irrelevance_error:decoder_success"
    else:
        r = ast_checker(case["functions"], output, case["answer"], Language.PYTHON, case["category"],
                        "Qwen/Qwen3-0.6B-FC")
        valid, error_type = r["valid"], r.get("error_type", "")
    print(json.dumps({"valid": valid, "error_type": error_type}))
