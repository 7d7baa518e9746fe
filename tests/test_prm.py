"""Process and outcome reward models: step labels (first-error convention), the BCE loss by hand, the positions a PRM
reads, a short run whose held-out loss falls, and best-of-n picks (score pickers, majority vote and its ties)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from alignlab.cli import build_parser
from alignlab.eval.rerank import (
    expected_vote,
    prompt_accuracy,
    rerank_curves,
    solution_kinds,
    solution_score,
    step_accuracy_by_kind,
    vote,
)
from alignlab.model.reward import load_reward_model, reply_positions, reward_input_ids, score_positions
from alignlab.objectives.lm import IGNORE_INDEX
from alignlab.objectives.verifier import verifier_loss, verifier_metrics
from alignlab.recipes.prm import PRMConfig, collate_verifier, run, solution_logits, verifier_example
from alignlab.tasks.tinyworld import step_labels, worked_steps
from alignlab.train.trainer import TrainConfig

RIGHT = "<think>7 * 50 = 350\n7 * 8 = 56\n350 + 56 = 406</think>\nAnswer: 406"
SLIP = "<think>7 * 50 = 350\n7 * 8 = 54\n350 + 54 = 404</think>\nAnswer: 404"  # step 2 wrong, step 3 right on it
FIRST = "<think>7 * 50 = 360\n7 * 8 = 56\n360 + 56 = 416</think>\nAnswer: 416"
COPY = "<think>7 * 50 = 350\n7 * 9 = 63\n350 + 63 = 413</think>\nAnswer: 413"  # a wrong operand, arithmetic right
PROMPT = [{"role": "user", "content": "What is 7 * 58?"}]

# --- step labels -------------------------------------------------------------------------------------------------


def test_step_labels_stop_at_the_first_error():
    assert step_labels(RIGHT) == [1, 1, 1]
    assert step_labels(SLIP) == [1, 0, 0]  # "350 + 54 = 404" is right arithmetic on a wrong number: still 0
    assert [s.right for s in worked_steps(SLIP)] == [True, False, True]
    assert step_labels(FIRST) == [0, 0, 0]
    assert step_labels(COPY) == [1, 1, 1]  # only arithmetic is checked: a copied operand is invisible here
    assert step_labels("<think>I know it.</think>\nAnswer: 406") == []
    assert step_labels("<think>12 - 30 = -18</think>\nAnswer: -18") == [1]  # a negative result is a number too
    ends = [s.end for s in worked_steps(RIGHT)]
    assert [RIGHT[:e].rsplit("\n", 1)[-1].removeprefix("<think>") for e in ends] == \
        ["7 * 50 = 350", "7 * 8 = 56", "350 + 56 = 406"]


# --- the loss ----------------------------------------------------------------------------------------------------


def test_verifier_loss_by_hand():
    scores = torch.tensor([[0.0, 2.0, 5.0], [-1.0, 3.0, 0.0]])
    labels = torch.tensor([[1, 0, IGNORE_INDEX], [IGNORE_INDEX, 1, IGNORE_INDEX]])
    # -log sigma(0) = log 2; -log sigma(-2) = log(1 + e^2); -log sigma(3) = log(1 + e^-3)
    terms = [math.log(2), math.log(1 + math.e ** 2), math.log(1 + math.e ** -3)]
    assert verifier_loss(scores, labels).item() == pytest.approx(sum(terms) / 3, rel=1e-6)
    assert verifier_loss(scores, labels, num_labels=6).item() == pytest.approx(sum(terms) / 6, rel=1e-6)
    # an ORM: one score and one label a row
    assert verifier_loss(torch.tensor([0.0, -2.0]), torch.tensor([0, 0])).item() == pytest.approx(
        (math.log(2) + math.log(1 + math.e ** -2)) / 2, rel=1e-6)
    m = verifier_metrics(scores, labels)  # 0 > 0 is "wrong" (miss), 2 > 0 says right (miss), 3 > 0 (hit)
    assert m["accuracy"] == pytest.approx(1 / 3) and m["positive_rate"] == pytest.approx(2 / 3)
    # gradients reach only labelled positions
    s = scores.clone().requires_grad_()
    verifier_loss(s, labels).backward()
    assert (s.grad[labels == IGNORE_INDEX] == 0).all() and (s.grad[labels != IGNORE_INDEX] != 0).all()


def test_solution_logit_is_the_weakest_labelled_step():
    scores = torch.tensor([[3.0, -1.0, 2.0, 9.0], [0.5, 0.5, 0.5, 0.5]])
    labels = torch.tensor([[1, 0, 1, IGNORE_INDEX], [IGNORE_INDEX] * 4])
    assert solution_logits(scores, labels).tolist() == [-1.0, float("-inf")]


# --- positions ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tok(world):
    return world.tokenizer()


def test_prm_reads_the_token_that_ends_each_step(tok):
    ids = reward_input_ids(tok, PROMPT, RIGHT)
    positions = reply_positions(tok, ids, RIGHT, [s.end for s in worked_steps(RIGHT)])
    assert positions == sorted(positions) and len(positions) == 3
    for pos, line in zip(positions, ["7 * 50 = 350", "7 * 8 = 56", "350 + 56 = 406"]):
        assert tok.decode(ids[:pos + 1]).endswith(line)  # the step is complete at pos ...
        assert not tok.decode(ids[:pos]).endswith(line)  # ... and not one token earlier
    prm_ids, prm_pos, prm_y = verifier_example(tok, {"prompt": PROMPT, "reply": SLIP, "correct": 0,
                                                     "step_labels": step_labels(SLIP),
                                                     "step_ends": [s.end for s in worked_steps(SLIP)]}, "prm", 0)
    orm_ids, orm_pos, orm_y = verifier_example(tok, {"prompt": PROMPT, "reply": SLIP, "correct": 0}, "orm", 0)
    assert prm_ids == orm_ids and prm_y == [1, 0, 0] and orm_pos == [len(orm_ids) - 1] and orm_y == [0]
    batch = collate_verifier([(prm_ids, prm_pos, prm_y, 0), (orm_ids, orm_pos, orm_y, 0)], pad_id=0)
    assert batch["labels"][0, prm_pos].tolist() == [1, 0, 0] and (batch["labels"] != IGNORE_INDEX).sum() == 4


# --- a short run -------------------------------------------------------------------------------------------------


def solution_rows(n_copies: int = 6) -> list[dict]:
    rows = []
    for reply, correct in [(RIGHT, 1), (SLIP, 0), (FIRST, 0), (COPY, 0)]:
        rows.append({"prompt": PROMPT, "reply": reply, "answer": "406", "correct": correct,
                     "step_labels": step_labels(reply), "step_ends": [s.end for s in worked_steps(reply)]})
    return rows * n_copies


@pytest.mark.parametrize("kind", ["prm", "orm"])
def test_training_lowers_the_loss_on_its_solutions_and_saves_a_verifier(tmp_path, base, tok, kind):
    path = tmp_path / "solutions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in solution_rows()))
    cfg = PRMConfig(out_dir=str(tmp_path / kind), kind=kind, model=str(base), solutions=str(path),
                    val_solutions=str(path), batch_size=8, threads=1,
                    train=TrainConfig(max_steps=25, lr=3e-3, warmup_steps=2, eval_every=0, save_every=0,
                                      weight_decay=0.0, device="cpu", plot=False))
    result = run(cfg)
    assert result["status"] == "finished"
    assert result["val_loss"] < result["before"]["val_loss"] - 0.1
    model = load_reward_model(result["model_dir"])
    steps = score_positions(model, tok, [PROMPT, PROMPT], [RIGHT, "Answer: 406"],
                            [[s.end for s in worked_steps(RIGHT)], []])
    assert [len(s) for s in steps] == [3, 0]


# --- reranking ---------------------------------------------------------------------------------------------------


def test_score_pickers_pick_the_highest_scored_solution():
    assert solution_score([0.9, 0.2, 0.8], "min") == 0.2
    assert solution_score([0.5, 0.5], "prod") == 0.25
    assert solution_score([], "min") == 0.0  # no work shown, nothing to trust
    correct = [0.0, 1.0, 0.0]
    scores = {"prm_min": [0.1, 0.9, 0.3], "prm_prod": [0.1, 0.9, 0.3], "orm": [0.8, 0.1, 0.2]}
    answers, gold = ["1", "2", "3"], "2"
    assert prompt_accuracy("prm_min", 3, correct, answers, gold, scores) == 1.0  # the PRM's pick is the right one
    assert prompt_accuracy("orm", 3, correct, answers, gold, scores) == 0.0
    assert prompt_accuracy("orm", 1, correct, answers, gold, scores) == pytest.approx(1 / 3)  # n = 1: pass@1
    # n = 2: the right solution is in 2 of the 3 pairs; the PRM picks it in both, the ORM (its lowest) in neither
    assert prompt_accuracy("prm_min", 2, correct, answers, gold, scores) == pytest.approx(2 / 3)
    assert prompt_accuracy("orm", 2, correct, answers, gold, scores) == 0.0
    assert prompt_accuracy("oracle", 2, correct, answers, gold, scores) == pytest.approx(2 / 3)


def test_majority_vote_and_its_ties():
    assert vote(["3", "4", "3", None]) == ["3"]
    assert sorted(vote(["3", "4"])) == ["3", "4"]
    assert vote([None, None]) == []
    assert vote(["3", "4", "4"], weights=[0.9, 0.3, 0.3]) == ["3"]  # weighted: one sure vote beats two unsure
    assert expected_vote(["3", "4"], "3", 2) == 0.5  # a two-way tie: the right answer wins half the time
    assert expected_vote(["3", "3", "4"], "3", 3) == 1.0
    assert expected_vote(["3", "3", "4"], "3", 2) == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert expected_vote([None, None, "3"], "3", 1) == pytest.approx(1 / 3)  # no parsable answer: wrong
    curves = rerank_curves([{"prm_min": [0.9, 0.1], "prm_prod": [0.9, 0.1], "orm": [0.1, 0.9]}],
                           [[1.0, 0.0]], [["3", "4"]], ["3"], ns=(1, 2))
    at2 = {p: rows[-1]["accuracy"] for p, rows in curves["curves"].items()}
    assert at2 == {"prm_min": 1.0, "prm_prod": 1.0, "orm": 0.0, "majority": 0.5, "prm_vote": 1.0, "oracle": 1.0}
    assert curves["differences"]["prm_min - orm"][0] == 1.0


def test_step_accuracy_by_kind_stops_at_the_first_error():
    rows = [{"reply": SLIP, "step_probs": [0.9, 0.8, 0.1], "step_labels": step_labels(SLIP), "correct": 0.0},
            {"reply": RIGHT, "step_probs": [0.9, 0.2, 0.9], "step_labels": step_labels(RIGHT), "correct": 1.0},
            {"reply": COPY, "step_probs": [0.9, 0.9, 0.9], "step_labels": step_labels(COPY), "correct": 0.0}]
    by = step_accuracy_by_kind(rows)
    # "*": 7 * 50 right thrice (all hits), 7 * 8 = 54 wrong and scored 0.8 (missed), 7 * 8 = 56 scored 0.2 (a miss),
    # 7 * 9 = 63 (hit); SLIP's third step comes after its first error, so it is not counted
    assert by["*"] == {"accuracy": 4 / 6, "steps": 6, "wrong": 1, "wrong_caught": 0.0, "right_flagged": 1 / 5}
    plus = by["+ no carry"]
    assert (plus["accuracy"], plus["steps"], plus["wrong"]) == (1.0, 2, 0) and math.isnan(plus["wrong_caught"])
    assert set(by) == {"*", "+ no carry"}  # 350 + 56 and 350 + 63: no carry out of the units digit
    assert solution_kinds(rows) == {"right": 1, "right_by_luck": 0, "step_error": 1, "no_step_error": 1}


def test_cli_parses_both_subcommands():
    args = build_parser().parse_args(["prm", "train", "model=m", "kind=orm"])
    assert args.prm_fn.__name__ == "cmd_prm_train" and args.overrides == ["model=m", "kind=orm"]
    args = build_parser().parse_args(["prm", "bon", "--policy", "p", "--prm", "a", "--orm", "b", "--n", "4"])
    assert args.prm_fn.__name__ == "cmd_prm_bon" and args.n == 4 and args.source == "tinyworld:rl:3-4:test@0"
