"""HumanEval (Chen et al. 2021, arXiv:2107.03374): 164 Python functions to complete, checked by running their tests.

    task = HumanEval("../shared/data/humaneval/HumanEval.jsonl.gz")     # or HumanEval() for the Hub's copy
    records = task.records()           # {"prompt": signature + docstring, "task_id", "test", "entry_point", ...}
    program(record, truncate(completion))   # prompt + completion + test + check(entry_point): the file to run

A completion continues the prompt's text (a base model's job; the prompt is plain text, not a chat), and is cut
at the first of STOP: a line that starts a new top-level block ends the function. The program is run by the
evaluation in alignlab's sandbox (eval.harness.humaneval_passes, over tools.sandbox: its own process and temporary
directory, time and memory limits, no network, no writes outside that directory), so a completion that loops,
forks, deletes files or opens a socket fails its problem and touches nothing else. Scoring n samples a problem:
pass@k's unbiased estimator (eval.stats.pass_at_k).
"""

from __future__ import annotations

from alignlab.data.errors import DataError
from alignlab.tasks.base import Task

HF_SOURCE = "hf:openai/openai_humaneval/test"
STOP = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]  # the Codex paper's stop sequences
FIELDS = ("task_id", "prompt", "test", "entry_point")


def program(record: dict, completion: str) -> str:
    """The file HumanEval's harness runs: the prompt, the completion, the tests, and the call to check()."""
    return f"{record['prompt']}{completion}\n\n{record['test']}\n\ncheck({record['entry_point']})\n"


def truncate(completion: str, stop: list[str] = STOP) -> str:
    """The completion up to the first stop sequence (what a server cuts at when asked to stop there)."""
    cut = min((i for s in stop if (i := completion.find(s)) >= 0), default=len(completion))
    return completion[:cut]


class HumanEval(Task):
    """HumanEval's problems from a local .jsonl(.gz) or the Hugging Face Hub; right = the tests pass when run."""

    name = "humaneval"
    stop = STOP

    def __init__(self, source: str = ""):
        self.source = source or HF_SOURCE

    def records(self, split: str = "test") -> list[dict]:
        from alignlab.data.loaders import read_rows

        rows = read_rows(self.source)
        for where, r in rows:
            missing = [f for f in FIELDS if not isinstance(r.get(f), str)]
            if missing:
                raise DataError(f"{where}: a HumanEval problem needs the text fields {', '.join(FIELDS)}; "
                                f"missing or not text: {', '.join(missing)}")
        if not rows:
            raise DataError(f"{self.source}: no HumanEval problems")
        return [r for _, r in rows]

    def correct(self, reply: str, record: dict) -> bool:
        raise NotImplementedError("HumanEval is scored by running its tests: alignlab.eval.harness.humaneval_passes")

    def question(self, record: dict) -> str:
        return record["prompt"]
