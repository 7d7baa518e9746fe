"""Synthetic data: decontamination, Self-Instruct's parsing and filters, rejection sampling and its best-of-n curve,
and the `alignlab synth` commands end to end on a tiny local model, offline."""

from __future__ import annotations

import json
import random
from math import comb

import pytest

from alignlab.cli import main
from alignlab.eval.stats import pass_at_k
from alignlab.synth import rejection as rj
from alignlab.synth.decontam import NgramIndex, decontaminate, eval_index, record_text
from alignlab.synth.output import provenance_path
from alignlab.synth.self_instruct import (
    SelfInstruct,
    instruction_filter,
    instruction_prompt,
    load_seed_tasks,
    parse_instance,
    parse_instructions,
)
from alignlab.tasks import load_source
from tests.conftest import SHARED_DATA

SEEDS = SHARED_DATA / "self_instruct" / "seed_tasks.jsonl"

# ---------------------------------------------------------------------------------------------------------------
# Decontamination


def test_ngram_overlap_of_13_words_is_found_whatever_the_case_and_punctuation():
    item = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May."
    index = NgramIndex.from_texts({"gsm8k#0": item}, n=13)
    copied = "Homework: natalia SOLD clips to 48 of her friends in april -- and then she sold half as many."
    assert index.hits(copied) == {"gsm8k#0"}
    twelve = "natalia sold clips to 48 of her friends in april and then"  # 12 words of it: not enough
    assert index.hits(twelve) == set()


def test_an_item_shorter_than_n_is_matched_whole():
    index = NgramIndex.from_texts({"short": "What is 17 + 25?", "long": " ".join(f"w{i}" for i in range(20))}, n=13)
    assert index.hits("Quiz. What is 17 + 25? Show your work.") == {"short"}
    assert index.hits("What is 17 + 26?") == set()
    assert index.hits(" ".join(f"w{i}" for i in range(3, 16))) == {"long"}


def test_decontaminate_drops_and_reports_every_overlap():
    index = NgramIndex.from_texts({"t1": "What is the capital of the land of Oz?"}, n=13)
    records = [{"messages": [{"role": "user", "content": "what is the capital of the land of oz"},
                             {"role": "assistant", "content": "Emerald City"}]},
               {"prompt": "Say hi.", "completion": "Hi."},
               {"prompt": [{"role": "user", "content": "Hello"}], "chosen": [{"role": "assistant", "content": "x"}],
                "rejected": [{"role": "assistant", "content": "What is the capital of the land of Oz?"}]}]
    kept, report = decontaminate(records, index)
    assert kept == [records[1]]
    assert [d["index"] for d in report.dropped] == [0, 2] and report.eval_items_hit == {"t1"}
    assert report.as_dict()["dropped"] == 2 and "2 of 3 records" in report.summary()
    kept_all, _ = decontaminate(records, index, drop=False)
    assert kept_all == records
    assert "Emerald City" in record_text(records[0])


def test_eval_index_reads_tinyworld_held_out_prompts():
    task, records = load_source("tinyworld:safety:test@0")
    index = eval_index(["tinyworld:safety:test@0"])
    assert index.items == len(records)
    question = task.question(records[3])
    assert index.hits(f"Here is a training question: {question}")


# ---------------------------------------------------------------------------------------------------------------
# Self-Instruct


def test_parse_instructions_splits_the_numbered_continuation():
    prompt = instruction_prompt(["Add two numbers.", "Name a color."])
    assert prompt.endswith("1. Add two numbers.\n2. Name a color.\n3.")
    text = " Write a haiku about rain.\n4. Translate 'cat' into French.\n\n5.  List three fruits.\nextra\n\nnot this"
    assert parse_instructions(text) == ["Write a haiku about rain.", "Translate 'cat' into French.",
                                        "List three fruits.\nextra"]
    assert parse_instructions("\n\n") == []
    assert parse_instance(" (none)\nOutput: Paris\n\nInstruction: next") == ("", "Paris")
    assert parse_instance(" 2 + 2\nOutput: 4") == ("2 + 2", "4")
    assert parse_instance(" no output here") == ("", "")


@pytest.mark.parametrize("text,why", [
    ("Add them.", "length"),
    (" ".join(["word"] * 151), "length"),
    ("Draw a picture of a cat on the mat.", "blacklist"),
    ("Describe the attached image in detail please.", "blacklist"),
    ("Write a program that sorts a list of numbers.", "program"),
    ("- List three things you like about spring.", "punctuation"),
    ("Éxplain why the sky is blue in one sentence.", "non_ascii"),
    ("Explain why the sky is blue in one sentence.", None),
    ("Plot twists: name three famous ones in novels.", "blacklist"),  # a word of the list, whatever it means here
])
def test_instruction_filters(text, why):
    assert instruction_filter(text) == why


def test_load_seed_tasks_names_the_line_and_field(tmp_path):
    bad = tmp_path / "seeds.jsonl"
    bad.write_text(json.dumps({"instruction": "Ok task here.", "instances": [{"input": "", "output": "x"}]}) + "\n"
                   + json.dumps({"instruction": "", "instances": []}) + "\n")
    with pytest.raises(Exception, match=r"seeds.jsonl:2: field 'instruction'"):
        load_seed_tasks(bad)


class ScriptedTeacher:
    """A teacher whose lists plant a near-copy of a seed task, a held-out TinyWorld question and filtered lines
    among new instructions; it answers every instruction with a fixed output."""

    def __init__(self, seed_instruction: str, test_question: str):
        self.lists = [
            f" {seed_instruction.rstrip('.')}!\n10. {test_question}\n11. Draw a map of your street.\n12. Hi there."
            "\n13. Suggest three names for a pet turtle and explain each one.",
            " Give two reasons why people keep a diary.\n10. Summarize the plot of a fairy tale you like."
            "\n11. Compare tea and coffee in a short table of three rows.",
        ]
        self.calls = []  # the list prompts

    def generate(self, requests):
        out = []
        for r in requests:
            if r.prompt.startswith("Come up with a series of tasks:"):
                self.calls.append(r)
                out.append(self.lists[len(self.calls) - 1] if len(self.calls) <= len(self.lists) else " Hi.")
            else:
                out.append(" (none)\nOutput: Here is my answer.\n\nInstruction: whatever")
        return out


@pytest.mark.shared_data(SEEDS)
def test_self_instruct_on_the_175_seed_tasks_removes_a_planted_duplicate_and_a_test_item():
    seeds = load_seed_tasks(SEEDS)
    assert len(seeds) == 175
    task, records = load_source("tinyworld:rl:3-4:test@0")
    test_question = next(q for q in map(task.question, records) if len(q.split()) >= 6)  # long enough to check
    teacher = ScriptedTeacher(seeds[10].instruction, test_question)
    gen = SelfInstruct(teacher, seeds, seed=0, index=eval_index(["tinyworld:rl:3-4:test@0"]))
    records_out, counts = gen.run(n=5, batch=1, max_rounds=3, progress=False)
    kept = [r["instruction"] for r in records_out]
    assert kept == ["Suggest three names for a pet turtle and explain each one.",
                    "Give two reasons why people keep a diary.",
                    "Compare tea and coffee in a short table of three rows."]  # "plot" is blacklisted
    assert counts["removed"]["duplicate"] == 1 and counts["removed"]["contaminated"] == 1
    assert counts["removed"]["blacklist"] == 2 and counts["removed"]["length"] == 2  # "Hi there." and " Hi."
    assert counts["generated"] == 9 and counts["kept_instructions"] == 3 and counts["records"] == 3
    assert records_out[0]["messages"][1] == {"role": "assistant", "content": "Here is my answer."}
    first = teacher.calls[0].prompt
    assert first.startswith("Come up with a series of tasks:\n1. ") and first.endswith("\n7.")  # 6 seeds, none made
    assert teacher.calls[1].prompt.endswith("\n8.")  # 6 seeds + the one made so far
    third = teacher.calls[2].prompt
    assert third.endswith("\n9.") and sum(k in third for k in ("turtle", "diary", "tea and coffee")) == 2


def _tiny_model(tmp_path, world):
    from tests.conftest import save_tiny_llama

    return str(save_tiny_llama(tmp_path / "model", world.tokenizer()))


@pytest.mark.shared_data(SEEDS)
def test_synth_self_instruct_command_runs_offline_with_a_local_teacher(tmp_path, world, capsys):
    out = tmp_path / "si.jsonl"
    rc = main(["synth", "self-instruct", "--seeds", str(SEEDS), "--teacher", _tiny_model(tmp_path, world),
               "--n", "3", "--batch", "2", "--max-rounds", "2", "--max-tokens", "24", "--out", str(out)])
    assert rc == 0
    prov = json.loads(provenance_path(out).read_text())
    assert prov["command"] == "synth self-instruct" and prov["seed_task_count"] == 175
    assert prov["filters"]["rounds"] == 2 and prov["filters"]["teacher_calls"] >= 4
    assert set(prov["filters"]["removed"]) >= {"length", "duplicate", "contaminated"}
    assert prov["decontamination"]["n"] == 13 and prov["records"] == len(out.read_text().splitlines())
    assert "removed:" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# Rejection sampling


def test_sft_and_preference_records_keep_what_the_scores_say():
    records = [{"prompt": "q1", "answer": "1", "id": "a"}, {"prompt": [{"role": "user", "content": "q2"}], "id": "b"}]
    replies = [["right", "wrong", "right", "also right"], ["x", "y", "z", "w"]]
    scores = [[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]
    out, counts = rj.sft_records(records, replies, scores, keep="all")
    assert [r["messages"][-1]["content"] for r in out] == ["right", "also right"]  # the repeat is skipped
    assert out[0]["messages"][0] == {"role": "user", "content": "q1"} and out[0]["id"] == "a"
    assert counts["prompts_with_none"] == 1 and counts["duplicates_skipped"] == 1 and counts["kept"] == 2
    best, _ = rj.sft_records(records, replies, scores, keep="best")
    assert len(best) == 1
    pairs, pc = rj.preference_records(records, replies, scores)
    assert len(pairs) == 1 and pc["all_tied"] == 1
    assert pairs[0]["chosen"][0]["content"] == "right" and pairs[0]["rejected"][0]["content"] == "wrong"
    with pytest.raises(ValueError):
        rj.sft_records(records, replies, scores, keep="some")


def test_best_of_n_curve_is_pass_at_n_under_the_verifier_and_matches_resampling():
    rng = random.Random(0)
    correct = [[rng.random() < p for _ in range(8)] for p in (0.1, 0.3, 0.6, 0.0, 1.0)]
    curve = rj.best_of_n_curve([[float(c) for c in row] for row in correct], correct)
    assert curve["n"] == [1, 2, 4, 8]
    for n, acc in zip(curve["n"], curve["accuracy"]):
        expect = sum(pass_at_k(8, sum(row), n) for row in correct) / len(correct)
        assert acc == pytest.approx(expect)
    # a noisy scorer: the exact expectation equals the average over every n-subset
    scores = [[rng.gauss(float(c), 1.0) for c in row] for row in correct]
    curve = rj.best_of_n_curve(scores, correct, ns=[3])
    from itertools import combinations

    total = 0.0
    for s, c in zip(scores, correct):
        subsets = list(combinations(range(8), 3))
        total += sum(c[max(sub, key=lambda j: s[j])] for sub in subsets) / comb(8, 3)
    assert curve["accuracy"][0] == pytest.approx(total / len(correct))


def test_synth_rejection_command_writes_trl_data_the_curve_and_provenance(tmp_path, world, capsys):
    out = tmp_path / "rft.jsonl"
    rc = main(["synth", "rejection", "--model", _tiny_model(tmp_path, world), "--prompts", "tinyworld:rl:1@0",
               "--limit", "3", "--n", "4", "--max-tokens", "8", "--threshold", "0", "--out", str(out)])
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and all(r["messages"][-1]["role"] == "assistant" for r in rows)
    prov = json.loads(provenance_path(out).read_text())
    assert prov["best_of_n"]["n"] == [1, 2, 4] and prov["filters"]["prompts"] == 3
    assert prov["teacher"].endswith("model") and prov["records"] == len(rows)
    assert (tmp_path / "rft.best_of_n.png").stat().st_size > 1000
    assert "3 prompts x 4 samples" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# RLAIF


def test_ai_feedback_pairs_keep_the_judges_consistent_verdicts(world):
    from alignlab.eval.judge import TinyWorldJudge
    from alignlab.synth.rlaif import ai_feedback_pairs, judge_agreement

    safety = world.safety_prompts("train")
    attack = next(r for r in safety if r["label"] == "attack")
    benign = next(r for r in safety if r["label"] == "benign")
    refusal = "I can't share that."
    records = [attack, benign, attack]
    replies = [[f"Sure, it is {world.secret}.", refusal], [refusal, "The bakery opens at 8."], ["Hi.", "Hi."]]
    pairs, counts = ai_feedback_pairs(records, replies, TinyWorldJudge(secret=world.secret))
    assert counts == {"prompts": 3, "identical_replies": 1, "judged": 2, "inconsistent": 0, "ties": 0, "pairs": 2}
    assert pairs[0]["chosen"][0]["content"] == refusal and pairs[0]["label"] == "attack"
    assert pairs[1]["chosen"][0]["content"] == "The bakery opens at 8."

    class AlwaysA(TinyWorldJudge):
        def compare(self, prompt, a, b, record=None):
            return "A"

    _, biased = ai_feedback_pairs(records, replies, AlwaysA())
    assert biased["inconsistent"] == 2 and biased["pairs"] == 0  # position bias labels nothing
    agree = judge_agreement(records, replies, AlwaysA(), TinyWorldJudge(secret=world.secret))
    assert agree["pairs"] == 2 and agree["same_outcome"] == 0.0 and agree["other_decided"] == 2


def test_synth_rlaif_command_with_the_rule_judge_and_a_model_judge_compared(tmp_path, world, capsys):
    out = tmp_path / "rlaif.jsonl"
    model = _tiny_model(tmp_path, world)
    rc = main(["synth", "rlaif", "--model", model, "--prompts", "tinyworld:safety:train@0", "--limit", "6",
               "--max-tokens", "8", "--compare-judge", model, "--out", str(out)])
    assert rc == 0
    prov = json.loads(provenance_path(out).read_text())
    assert prov["judge"] == "rule" and prov["filters"]["prompts"] == 6
    assert prov["filters"]["agreement"]["pairs"] == prov["filters"]["judged"]
    assert "rlaif:" in capsys.readouterr().err
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Say hi.", "answer": "hi"}) + "\n")
    assert main(["synth", "rlaif", "--model", model, "--prompts", str(prompts), "--out", str(out)]) == 2
    assert "--judge rule scores TinyWorld records only" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# Constitutional revision


def test_constitution_critiques_revises_and_keeps_revisions_that_pass_the_rule(world):
    from alignlab.synth.constitution import TINYWORLD_PRINCIPLES, Constitution, tinyworld_check

    class Teacher:
        """Critiques say what is wrong; revisions refuse attacks, repeat benign replies unchanged."""

        def __init__(self):
            self.chats = []

        def generate(self, requests):
            self.chats += [r.prompt for r in requests]
            out = []
            for r in requests:
                if r.prompt[-1]["content"] in [p["critique"] for p in TINYWORLD_PRINCIPLES]:
                    out.append("It breaks the rule.")
                else:
                    reply = r.prompt[-4]["content"]  # the reply under revision
                    out.append("I can't share that." if "code" in reply else reply)
            return out

    safety = world.safety_prompts("train")
    attack = next(r for r in safety if r["label"] == "attack")
    benign = next(r for r in safety if r["label"] == "benign")
    teacher = Teacher()
    records, counts = Constitution(teacher, seed=0).revise(
        [attack, benign], [f"The code is {world.secret}.", "The bakery opens at 8."], tinyworld_check(world.secret))
    assert counts == {"prompts": 2, "empty": 0, "unchanged": 1, "failed_check": 0, "kept": 1,
                      "initial_replies_passing_check": 1}
    assert records[0]["messages"][-1] == {"role": "assistant", "content": "I can't share that."}
    assert records[0]["initial"] == f"The code is {world.secret}." and records[0]["critique"] == "It breaks the rule."
    revision_chat = teacher.chats[-2]
    assert [m["role"] for m in revision_chat[-4:]] == ["assistant", "user", "assistant", "user"]
    with pytest.raises(ValueError):
        Constitution(teacher, [{"name": "x"}])


def test_synth_constitution_command_runs_on_tinyworlds_safety_prompts(tmp_path, world, capsys):
    out = tmp_path / "cai.jsonl"
    rc = main(["synth", "constitution", "--model", _tiny_model(tmp_path, world), "--prompts",
               "tinyworld:safety:train@0", "--limit", "4", "--max-tokens", "8", "--out", str(out)])
    assert rc == 0
    prov = json.loads(provenance_path(out).read_text())
    assert prov["filters"]["prompts"] == 4 and "initial_replies_passing_check" in prov["filters"]
    assert [p["name"] for p in prov["principles"]] == ["secret", "theft", "helpful"]
    assert "constitution:" in capsys.readouterr().err


def test_items_too_short_to_mean_anything_are_counted_not_matched():
    index = NgramIndex.from_texts({"a": "5 + 3 = ?", "b": "What does 3 + 5 equal?"}, n=13)
    assert index.unchecked == 1 and index.items == 1
    assert index.hits("<think>5 + 3 = 8</think>") == set()  # a worked step is not the test question
    assert index.hits("Q: what does 3 + 5 equal") == {"b"}
    _, report = decontaminate([{"text": "5 + 3"}], index)
    assert report.as_dict()["unchecked_eval_items"] == 1 and "1 too short to check" in report.summary()


def test_evol_instruct_keeps_rewrites_that_changed_and_pass_the_filters():
    from alignlab.synth.self_instruct import SeedTask

    seeds = [SeedTask(f"Seed task number {w} about {w} things.", (("", "ok"),)) for w in
             ("red", "blue", "green", "gold", "gray", "pink", "teal")]

    class Teacher:
        def generate(self, requests):
            out = []
            for r in requests:
                if r.prompt.startswith("Come up with"):
                    out.append(" Name three rivers in Europe.\n10. Describe how bread rises.\n"
                               "11. List the planets in order from the sun.")
                elif "#New Task#" in r.prompt:
                    task = r.prompt.split("#Task#: ")[1].split("\n")[0]
                    out.append({"Name three rivers in Europe.": " Name three rivers in Europe!",  # unchanged
                                "Describe how bread rises.": " Sorry, as an AI I cannot do that.",
                                }.get(task, " Explain why Pluto is no longer counted as a planet of the solar system."))
                else:
                    out.append(" (none)\nOutput: An answer.")
            return out

    gen = SelfInstruct(Teacher(), seeds, seed=0, evolve=True)
    records, counts = gen.run(n=4, batch=1, max_rounds=1, progress=False)
    kept = [r["instruction"] for r in records]
    assert kept == ["Name three rivers in Europe.", "Describe how bread rises.",
                    "List the planets in order from the sun.",
                    "Explain why Pluto is no longer counted as a planet of the solar system."]
    assert counts["evolved"] == 3
    assert counts["evolve_removed"] == {"unchanged": 1, "apology": 1}
