"""ACE (alignlab/ace.py): the playbook's delta operations, the rule reflector, the curator's counts, dedup and
budget, and the whole loop on a scripted model that answers right only when its notes hold the facts it gets wrong."""

from __future__ import annotations

import json
import re

import pytest

from alignlab.ace import (
    NOTES,
    ACEConfig,
    CuratorConfig,
    Entry,
    Playbook,
    curate,
    entry_usage,
    model_lessons,
    rule_lessons,
    run_ace,
    with_playbook,
)


def test_playbook_operations_versions_and_atomic_save(tmp_path):
    p = Playbook()
    p.apply([{"op": "add", "text": "7 * 8 = 56"}, {"op": "add", "text": "6 * 9 = 54"}], 1)
    p.apply([{"op": "helpful", "id": 2, "n": 3}, {"op": "harmful", "id": 1}, {"op": "remove", "id": 1}], 2)
    assert p.version == 2 and [(e.id, e.text, e.helpful, e.added) for e in p.entries] == [(2, "6 * 9 = 54", 3, 1)]
    p.save(tmp_path / "playbook.json")
    assert not list(tmp_path.glob("*.tmp"))
    q = Playbook.load(tmp_path / "playbook.json")
    assert q == p and q.find(" 6 * 9 = 54. ") is q.entries[0]
    with pytest.raises(ValueError, match="unknown"):
        p.apply([{"op": "rewrite"}], 3)


def test_render_puts_the_most_helpful_first_and_joins_the_system_prompt():
    p = Playbook([Entry(1, "a", helpful=1), Entry(2, "b", helpful=5), Entry(3, "c", harmful=1)], 3, 4)
    assert p.render() == f"{NOTES}\nb\na\nc"
    prompt = [{"role": "system", "content": "You are Tiny."}, {"role": "user", "content": "q"}]
    assert with_playbook(prompt, p)[0]["content"] == "You are Tiny.\n" + p.render()
    assert with_playbook(prompt[1:], p)[0] == {"role": "system", "content": p.render()}
    assert with_playbook(prompt, Playbook()) == prompt


def test_rule_lessons_correct_every_wrong_step_and_usage_reads_the_steps_a_reply_worked():
    reply = "<think>7 * 50 = 350\n7 * 8 = 54\n350 + 54 = 404</think>\nAnswer: 404"
    assert rule_lessons(reply) == ["7 * 8 = 56"]
    p = Playbook([Entry(1, "7 * 8 = 56"), Entry(2, "350 + 54 = 404"), Entry(3, "6 * 9 = 54")], 1, 4)
    assert entry_usage(p, reply) == {1: False, 2: True}


def test_model_lessons_read_the_lesson_line():
    seen = []

    def chat(messages):
        seen.append(messages[0]["content"])
        return "Sure.\nLesson: carry the ten when units add past 9.\n"

    assert model_lessons(chat, "What is 38 + 45?", "73", "83") == ["carry the ten when units add past 9."]
    assert "Right answer: 83" in seen[0]
    assert model_lessons(lambda m: "no idea", "q", "r", "a") == []


def test_curate_counts_dedups_and_keeps_the_budget():
    p = Playbook([Entry(1, "1 + 1 = 2", helpful=4), Entry(2, "2 + 2 = 4", harmful=1), Entry(3, "3 + 3 = 6")], 1, 4)
    lessons = ["7 * 8 = 56", "7 * 8 = 56.", "6 * 9 = 54", "1 + 1 = 2", "9 * 9 = 81"]
    usage = [{1: True, 2: False}, {2: False}, {}]
    ops, counts = curate(p, lessons, usage, CuratorConfig(max_entries=4, max_new=2, prune_margin=3))
    assert {"op": "helpful", "id": 1, "n": 1} in ops and {"op": "harmful", "id": 2, "n": 2} in ops
    added = [op["text"] for op in ops if op["op"] == "add"]
    assert added == ["7 * 8 = 56", "6 * 9 = 54"]  # the most frequent first, at most max_new, none twice
    assert counts["duplicates"] == 2  # "1 + 1 = 2" is in the playbook, "7 * 8 = 56." repeats a lesson
    removed = {op["id"] for op in ops if op["op"] == "remove"}
    assert removed == {2}  # harmful 3 - helpful 0 reaches the margin; then 2 kept + 2 new = the budget of 4
    p.apply(ops, 2)
    assert len(p.entries) == 4 and p.find("7 * 8 = 56") is not None


# --- the loop, on a scripted model ------------------------------------------------------------------------------------

BAD = {(7, 8): 54, (6, 9): 56, (4, 7): 24}  # the scripted model's wrong facts


def scripted(prompts: list[list[dict]]) -> list[str]:
    """Multiplies a one-digit number by a two-digit one in TinyWorld's worked steps, wrong on the facts in BAD unless
    its notes (the system prompt) state the right one."""
    out = []
    for prompt in prompts:
        notes = prompt[0]["content"] if prompt[0]["role"] == "system" else ""
        a, b = map(int, re.search(r"(\d+) \* (\d+)", prompt[-1]["content"]).groups())
        tens, units = b - b % 10, b % 10
        unit = a * units
        if (a, units) in BAD and f"{a} * {units} = {a * units}" not in notes:
            unit = BAD[(a, units)]
        steps = [f"{a} * {tens} = {a * tens}", f"{a} * {units} = {unit}", f"{a * tens} + {unit} = {a * tens + unit}"]
        out.append("<think>" + "\n".join(steps) + f"</think>\nAnswer: {a * tens + unit}")
    return out


def write_tasks(path, pairs):
    with open(path, "w") as f:
        for a, b in pairs:
            prompt = [{"role": "system", "content": "You are Tiny."},
                      {"role": "user", "content": f"What is {a} * {b}?"}]
            f.write(json.dumps({"prompt": prompt, "answer": str(a * b)}) + "\n")


def test_the_loop_learns_the_facts_its_model_gets_wrong_and_the_held_out_tasks_improve(tmp_path):
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    write_tasks(train, [(a, 10 * t + u) for a in (4, 6, 7) for t in (2, 3, 5) for u in (7, 8, 9, 1)])
    write_tasks(val, [(a, 10 * t + u) for a in (4, 6, 7) for t in (4, 6, 8) for u in (7, 8, 9, 2)])
    cfg = ACEConfig(source=str(train), val_source=str(val), rounds=3, per_round=20, val_tasks=100)
    r = run_ace(scripted, cfg, tmp_path / "ace", log=lambda s: None)
    playbook = Playbook.load(tmp_path / "ace" / "playbook.json")
    assert {e.text for e in playbook.entries} == {"7 * 8 = 56", "6 * 9 = 54", "4 * 7 = 28"}
    assert r["fixed_prompt"] == pytest.approx(27 / 36) and r["playbook"] == 1.0
    assert r["difference_ci"][0] > 0  # the CI confirms the gain
    rounds = [json.loads(x) for x in (tmp_path / "ace" / "rounds.jsonl").read_text().splitlines()]
    assert [x["round"] for x in rounds] == [1, 2, 3] and rounds[-1]["entries"] == 3
    assert rounds[-1]["train_accuracy"] == 1.0 and rounds[-1]["context_tokens"] > 0
    log = [json.loads(x) for x in (tmp_path / "ace" / "playbook_log.jsonl").read_text().splitlines()]
    assert sum(op["op"] == "add" for op in log) == 3  # never added twice
    assert (tmp_path / "ace" / "plots" / "ace.png").exists()


def test_the_gate_rejects_an_edit_that_makes_the_batch_worse(tmp_path):
    def confused(prompts):  # right without notes, wrong with any
        return [s if NOTES not in prompt[0]["content"] else s.split("Answer:")[0] + "Answer: 0"
                for prompt, s in zip(prompts, scripted(prompts))]

    train = tmp_path / "t.jsonl"
    write_tasks(train, [(7, 38), (7, 48), (6, 29), (5, 21)])
    cfg = ACEConfig(source=str(train), val_source=str(train), rounds=2, per_round=4, val_tasks=4)
    r = run_ace(confused, cfg, tmp_path / "gated", log=lambda s: None)
    assert r["entries"] == 0 and r["difference"] == 0.0
    rounds = [json.loads(x) for x in (tmp_path / "gated" / "rounds.jsonl").read_text().splitlines()]
    assert rounds[0]["rejected"] == 2
    r = run_ace(confused, ACEConfig(**{**cfg.__dict__, "gate": False}), tmp_path / "ungated", log=lambda s: None)
    assert r["entries"] == 2 and r["difference"] < 0


def test_the_budget_ranks_new_lessons_with_the_old_entries():
    p = Playbook([Entry(1, "1 + 1 = 2", helpful=3), Entry(2, "2 + 2 = 4"), Entry(3, "3 + 3 = 6", helpful=1)], 1, 4)
    ops, counts = curate(p, ["7 * 8 = 56", "6 * 9 = 54", "9 * 9 = 81"], [], CuratorConfig(max_entries=2, max_new=4))
    p.apply(ops, 2)
    assert [e.text for e in p.entries] == ["1 + 1 = 2", "3 + 3 = 6"]  # proven entries stay, unproven ones wait
    assert counts["added"] == 0 and counts["removed"] == 1
    fresh = Playbook()
    fresh.apply(curate(fresh, ["a = 1", "b = 2", "c = 3"], [], CuratorConfig(max_entries=2, max_new=4))[0], 1)
    assert len(fresh.entries) == 2  # never more than the budget


def test_each_rounds_accuracy_is_logged_with_the_playbook_it_was_answered_with(tmp_path):
    train = tmp_path / "t.jsonl"
    write_tasks(train, [(7, 38), (6, 29), (4, 17), (7, 48)])
    run_ace(scripted, ACEConfig(source=str(train), val_source=str(train), rounds=2, per_round=4, val_tasks=4),
            tmp_path / "ace", log=lambda s: None)
    rounds = [json.loads(x) for x in (tmp_path / "ace" / "rounds.jsonl").read_text().splitlines()]
    assert rounds[0]["entries_used"] == 0 and rounds[0]["train_accuracy"] == 0.0  # every task needs a bad fact
    assert rounds[0]["entries"] == 3 and rounds[1]["entries_used"] == 3 and rounds[1]["train_accuracy"] == 1.0
