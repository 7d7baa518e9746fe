"""Model outputs to check against BFCL's answers: the ground truth itself and the ways a model gets it wrong
(a wrong name, a missing, extra or wrongly typed argument, a wrong value, another accepted value, a string
written differently, parallel calls in another order, a call too many or too few, any call on an irrelevance
question). Shared by test_eval_bfcl.py and the bfcl-eval oracle test."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

from alignlab.data.bfcl import ground_truth_calls

CATS = ("simple_python", "multiple", "parallel")


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load(data_dir: Path) -> list[tuple[str, dict, list | None]]:
    out = []
    for cat in CATS:
        answers = {a["id"]: a for a in _read(data_dir / "possible_answer" / f"BFCL_v4_{cat}.json")}
        out += [(cat, q, answers[q["id"]]) for q in _read(data_dir / f"BFCL_v4_{cat}.json")]
    out += [("irrelevance", q, None) for q in _read(data_dir / "BFCL_v4_irrelevance.json")]
    return out


def _wrong_type(value):
    if isinstance(value, bool):
        return "yes"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return 7
    if isinstance(value, list):
        return "a list"
    return 3.5


def _wrong_value(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 13
    if isinstance(value, str):
        return value + " zz"
    if isinstance(value, list):
        return value[:-1] if value else ["zz"]
    if isinstance(value, dict):
        return {**value, "zz_key": 1}
    return None


def _respell(value):
    return value.upper().replace(" ", "  ") if isinstance(value, str) else value


def cases(data_dir: Path, seed: int = 0) -> list[dict]:
    """[{"case", "category", "functions", "calls": [{"name", "arguments"}], "answer"}]."""
    rng = random.Random(seed)
    out = []
    for cat, q, ans in load(data_dir):
        fns = q["function"]
        if ans is None:
            out.append({"case": "irrelevance, no call", "category": cat, "functions": fns, "calls": [], "answer": None})
            f = fns[0]
            args = {p: 1 for p in f["parameters"].get("required", [])}
            out.append({"case": "irrelevance, a call", "category": cat, "functions": fns,
                        "calls": [{"name": f["name"], "arguments": args}], "answer": None})
            continue
        required = {f["name"]: f["parameters"].get("required", []) for f in fns}
        gold = ground_truth_calls(ans, required)
        truth = ans["ground_truth"]

        def add(name, calls, cat=cat, fns=fns, truth=truth):
            out.append({"case": name, "category": cat, "functions": fns, "calls": calls, "answer": truth})

        add("ground truth", gold)
        i = rng.randrange(len(gold))
        call = gold[i]
        mutated = copy.deepcopy(gold)
        mutated[i]["name"] = call["name"] + "_v2"
        add("wrong name", mutated)
        if call["arguments"]:
            key = rng.choice(sorted(call["arguments"]))
            value = call["arguments"][key]
            for name, fn in (("wrong type", _wrong_type), ("wrong value", _wrong_value), ("respelled", _respell)):
                mutated = copy.deepcopy(gold)
                mutated[i]["arguments"][key] = fn(value)
                add(name, mutated)
            mutated = copy.deepcopy(gold)
            del mutated[i]["arguments"][key]
            add("argument left out", mutated)
            if isinstance(value, int) and not isinstance(value, bool):
                mutated = copy.deepcopy(gold)
                mutated[i]["arguments"][key] = float(value)
                add("int as float", mutated)
        mutated = copy.deepcopy(gold)
        mutated[i]["arguments"]["unknown_option"] = True
        add("extra argument", mutated)
        # another accepted value of each argument (the last one listed)
        (name, accepted), = truth[i].items()
        alt = {k: v[-1] for k, v in accepted.items() if isinstance(v, list) and v and v[-1] != ""}
        if alt and not any(isinstance(v, (dict, list)) for v in alt.values()):
            mutated = copy.deepcopy(gold)
            mutated[i]["arguments"].update(alt)
            add("another accepted value", mutated)
        # every optional argument given its accepted value, where the answer lists one
        opt = {k: [x for x in v if x != ""][0] for k, v in accepted.items()
               if isinstance(v, list) and "" in v and any(x != "" for x in v)}
        if opt and not any(isinstance(v, dict) for v in opt.values()):
            mutated = copy.deepcopy(gold)
            mutated[i]["arguments"].update(opt)
            add("optional arguments given", mutated)
        if len(gold) > 1:
            add("parallel, reversed", gold[::-1])
            add("parallel, one missing", gold[:-1])
        add("one call too many", gold + [copy.deepcopy(gold[0])])
        add("no call", [])
    return out
