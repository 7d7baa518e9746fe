"""Graded judges (single 1-10, reference-guided, rubric 1-5), the pairwise LLMJudge over any backend, and the judge
checks: a judge that always says "A" is caught by position consistency, one that likes length by the length test,
one that likes its own model by self-preference, and calibration counts agreement with labels."""

from __future__ import annotations

import pytest

from alignlab.data.world.safety import REFUSAL
from alignlab.eval import judge_checks as jc
from alignlab.eval.grading import DEFAULT_RUBRIC, Grader, LLMJudge, parse_score
from alignlab.eval.judge import Judge, TinyWorldJudge


class Scripted:
    """A judge model whose replies a function of the prompt's text decides."""

    name = label = "scripted"

    def __init__(self, reply):
        self.reply, self.prompts = reply, []

    def generate(self, requests):
        texts = [r.prompt[-1]["content"] for r in requests]
        self.prompts += texts
        return [self.reply(t) for t in texts]


def test_parse_score():
    assert parse_score("Good answer. Rating: [[7]]") == 7
    assert parse_score("[[3]] at first, then [[8.5]]") == 8.5
    assert parse_score("Rating: [[11]]") is None and parse_score("seven") is None
    assert parse_score("Feedback: fine. [RESULT] 4", "rubric") == 4
    assert parse_score("[RESULT] (5)", "rubric") == 5 and parse_score("[RESULT] 9", "rubric") is None


def test_graders_render_their_prompts_and_count_unparseable_replies():
    model = Scripted(lambda t: "Rating: [[9]]" if "42" in t.split("[The Start of the Answer]")[-1] else "hmm")
    grader = Grader(model, "reference")
    grades = grader.grade([("6 * 7?", "42", "42"), ("6 * 7?", "41", "42")])
    assert [g.score for g in grades] == [9, None] and grader.n_unparseable == 1
    assert "[The Start of the Reference Answer]\n42" in model.prompts[0]
    with pytest.raises(ValueError, match="reference answer"):
        grader.grade([("q", "a", None)])
    rubric = Grader(Scripted(lambda t: "Feedback: ok [RESULT] 4"), "rubric")
    assert rubric.grade([("q", "a", None)])[0].score == 4
    assert "Score 5: " + DEFAULT_RUBRIC["scores"][5] in rubric.model.prompts[0]


def test_llm_judge_reads_verdicts_from_any_backend():
    judge = LLMJudge(Scripted(lambda t: "[[A]]" if "[Answer A]\ngood" in t else "B is better"))
    assert judge.compare_batch([("q", "good", "bad", None), ("q", "bad", "good", None)]) == ["A", "B"]
    assert LLMJudge(Scripted(lambda t: "no idea")).compare("q", "a", "b") == "tie"


class AlwaysA(Judge):
    def compare(self, prompt, a, b, record=None):
        return "A"


class Longer(Judge):
    def compare(self, prompt, a, b, record=None):
        return "A" if len(a) > len(b) else "B" if len(b) > len(a) else "tie"


class Mine(Judge):
    """Prefers answers that say "mine" (its own model's), whatever the reference thinks."""

    def compare(self, prompt, a, b, record=None):
        return "A" if "mine" in a else "B" if "mine" in b else "tie"


ITEMS = [("What is 2 + 2?", f"It is {i}.", f"Maybe {i + 1}.", None) for i in range(20)]


def test_position_and_length_bias_are_caught():
    pos = jc.position_bias(AlwaysA(), ITEMS)
    assert pos["consistency"]["value"] == 0 and pos["first_wins"]["value"] == 1
    assert jc.position_bias(Longer(), ITEMS)["consistency"]["value"] == 1
    length = jc.length_bias(Longer(), ITEMS)
    assert length["longer_wins"]["value"] == 1 and length["longer_wins"]["ci"][0] > 0.8
    assert jc.length_bias(AlwaysA(), ITEMS)["longer_wins"]["value"] == 0  # its bias is the position, not length


def test_self_preference_and_calibration_against_a_rule_judge(world):
    attacks = [r for r in world.safety_prompts("test") if r["label"] == "attack"][:12]
    labelled = [(r["prompt"], REFUSAL, r["violation"], r) for r in attacks]
    rules = TinyWorldJudge(secret=world.secret)
    cal = jc.calibration(rules, labelled)
    assert cal["agreement"]["value"] == 1 and cal["wrong"]["value"] == 0
    assert jc.calibration(AlwaysA(), labelled)["ties"]["value"] == 1
    own = [(r["prompt"], r["violation"] + " (mine)", REFUSAL, r) for r in attacks]
    pref = jc.self_preference(Mine(), rules, own)
    assert pref["by_judge"]["value"] == 1 and pref["by_reference"]["value"] == 0 and pref["difference"] == 1


def test_grader_calibration():
    grader = Grader(Scripted(lambda t: "[[8]]" if "right" in t.split("[The Start of the Answer]")[-1] else "[[2]]"))
    cal = jc.grader_calibration(grader, [("q", "right", "wrong", None)] * 5 + [("q", "wrong", "right", None)])
    assert cal["agreement"]["k"] == 5 and cal["wrong"]["k"] == 1 and cal["unparseable"] == 0
