"""`alignlab eval`: log-likelihoods equal over the engine and over the server (as lm-eval's local-completions asks
for them), multiple choice scored as lm-eval scores it, HumanEval's pass@k through the harness, generation tasks,
the cache that makes a killed run resume without redoing finished work, the report, and clear errors."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from alignlab.cli import main
from alignlab.data.errors import DataError
from alignlab.eval.backends import GenRequest, LocalModel, RemoteModel, encode_pair
from alignlab.eval.harness import Cache, chat, evaluate
from alignlab.serve import build_state
from alignlab.tasks import load_source
from alignlab.tasks.instructions import INSTRUCTIONS, FormatInstructions
from alignlab.tasks.multiple_choice import MultipleChoice, choose

from .conftest import SHARED_DATA
from .test_eval_humaneval import ADD
from .test_serve import load, serving

WORDS = "the guard gate secret city tom ann sum plus rain sun book tea red blue".split()


@pytest.fixture(scope="module")
def model_dir(base):
    return base


def write_mc(path, n=20, seed=0):
    """Questions of random words with 2-4 options of 1-4 words (uneven lengths, so acc and acc_norm differ)."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            k = rng.randint(2, 4)
            f.write(json.dumps({"question": " ".join(rng.choices(WORDS, k=6)) + "?",
                                "choices": [" ".join(rng.choices(WORDS, k=rng.randint(1, 4))) for _ in range(k)],
                                "label": rng.randrange(k)}) + "\n")
    return path


@pytest.fixture(scope="module")
def local(model_dir):
    return LocalModel(str(model_dir), dtype="fp32")


def test_encode_pair_moves_the_contexts_trailing_space_to_the_continuation():
    seen = []

    def encode(text):
        seen.append(text)
        return list(text)

    whole, n_ctx = encode_pair(encode, "Answer: ", "yes")
    assert seen == ["Answer: yes", "Answer:"] and n_ctx == len("Answer:") and len(whole) == len("Answer: yes")


def test_local_loglikelihood_is_the_sum_of_the_continuations_token_logprobs(local):
    tok, model = local.tokenizer, local.model
    context, continuation = "Question: the guard?\nAnswer:", " the gate"
    (ll, greedy), = local.loglikelihood([(context, continuation)])
    whole = tok.encode(context + continuation, add_special_tokens=False)
    n_ctx = len(tok.encode(context, add_special_tokens=False))
    with torch.no_grad():
        logp = model(torch.tensor([whole])).float().log_softmax(-1)[0]
    expected = sum(float(logp[t - 1, whole[t]]) for t in range(n_ctx, len(whole)))
    assert ll == pytest.approx(expected, abs=1e-5)
    # a continuation the model itself chose greedily is greedy, where its text encodes back to the tokens chosen (a
    # random model can pick a lone byte of a multi-byte character, which decodes to U+FFFD and encodes differently)
    checked = 0
    for word in WORDS:
        ctx = f"Question: the {word}?\nAnswer:"
        out = local.generate([GenRequest(ctx, max_tokens=3)])[0]
        if "\ufffd" in out:
            continue
        (_, greedy), = local.loglikelihood([(ctx, out)])
        assert greedy, (ctx, out)
        checked += 1
    assert checked >= 3


def test_multiple_choice_scores_equal_locally_and_through_the_server(model_dir, local, tmp_path):
    mc = write_mc(tmp_path / "mc.jsonl")
    here = evaluate(local, [f"mc:{mc}"], tmp_path / "local")
    model, tok = load(model_dir)
    with serving(build_state(model, tok, model_names=["tiny"], model_path=str(model_dir))) as server:
        remote = RemoteModel(server.api, concurrency=4)
        assert remote.served == "tiny"
        there = evaluate(remote, [f"mc:{mc}"], tmp_path / "remote")
    a = json.loads((tmp_path / "local" / f"mc_{str(mc).strip('/').replace('/', '_')}.json").read_text())
    for key in ("acc", "acc_norm"):
        assert here["tasks"][f"mc:{mc}"]["metrics"][key] == there["tasks"][f"mc:{mc}"]["metrics"][key]
    b = json.loads((tmp_path / "remote" / f"mc_{str(mc).strip('/').replace('/', '_')}.json").read_text())
    for s, t in zip(a["samples"], b["samples"]):
        assert s["loglikelihoods"] == pytest.approx(t["loglikelihoods"], abs=1e-4)
        assert (s["pred"], s["pred_norm"]) == choose(s["loglikelihoods"], s["choices"])


def test_choose_is_lm_evals_argmax_raw_and_per_character():
    assert choose([-3.0, -4.0], ["a", "bbbb"]) == (0, 1)  # -4/4 > -3/1
    assert choose([-2.0, -2.0], ["aa", "bb"]) == (0, 0)  # ties: the first


def test_mc_records_accept_mmlu_layout_and_reject_bad_labels(tmp_path):
    good = tmp_path / "mmlu.jsonl"
    good.write_text(json.dumps({"question": "q", "choices": ["x", "y"], "answer": 1}) + "\n"
                    + json.dumps({"question": "q", "choices": ["x", "y"], "answer": "A"}) + "\n")
    assert [r["label"] for r in MultipleChoice(str(good)).records()] == [1, 0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "choices": ["x", "y"], "label": 0}) + "\n"
                   + json.dumps({"question": "q", "choices": ["x", "y"], "label": 5}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'label'"):
        MultipleChoice(str(bad)).records()


class Counting:
    """A model wrapper that counts what it is asked and can fail after some calls (a killed run)."""

    def __init__(self, inner, fail_after: int | None = None):
        self.inner, self.fail_after, self.generated, self.calls = inner, fail_after, 0, 0
        self.name, self.label = inner.name, inner.label

    def generate(self, requests):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt
        self.calls += 1
        self.generated += len(requests)
        return self.inner.generate(requests)

    def loglikelihood(self, pairs):
        return self.inner.loglikelihood(pairs)


def test_a_killed_run_resumes_without_regenerating_finished_samples(local, tmp_path):
    task = "tinyworld:rl:1-4:test@0"
    whole = evaluate(Counting(local), [task], tmp_path / "whole", limit=40, max_tokens=6)
    killed = Counting(local, fail_after=1)
    with pytest.raises(KeyboardInterrupt):
        evaluate(killed, [task], tmp_path / "resumed", limit=40, max_tokens=6)
    assert killed.generated == 32  # one chunk finished before the kill
    with (tmp_path / "resumed" / "cache.jsonl").open("a") as f:
        f.write('{"key": "cut by a ki')  # a line the kill cut short
    resumed = Counting(local)
    again = evaluate(resumed, [task], tmp_path / "resumed", limit=40, max_tokens=6)
    assert resumed.generated == 8 and again["cached"] == 32
    assert again["tasks"] == whole["tasks"]
    rerun = Counting(local)
    evaluate(rerun, [task], tmp_path / "resumed", limit=40, max_tokens=6)
    assert rerun.generated == 0


class Scripted:
    """A 'model' whose completions are given: the canonical body for even seeds, a wrong one for odd."""

    name = label = "scripted"

    def generate(self, requests):
        return ["    return a + b\n\ndef x():\n    pass\n" if r.seed % 2 == 0 else "    return a * b\n"
                for r in requests]


def test_humaneval_pass_at_k_through_the_harness(tmp_path):
    problems = tmp_path / "he.jsonl"
    problems.write_text(json.dumps(ADD) + "\n")
    res = evaluate(Scripted(), [f"humaneval:{problems}"], tmp_path / "he", samples=4, temperature=0.8)
    metrics = res["tasks"][f"humaneval:{problems}"]["metrics"]
    assert metrics["pass@1"]["value"] == pytest.approx(0.5)  # 2 of 4 pass: pass@1 = c/n
    assert set(metrics) == {"pass@1"}  # k = 10 needs 10 samples
    with pytest.raises(Exception, match="needs --temperature"):
        evaluate(Scripted(), [f"humaneval:{problems}"], tmp_path / "he2", samples=4)


def test_cli_writes_results_and_a_report(model_dir, tmp_path, capsys):
    mc = write_mc(tmp_path / "mc.jsonl", n=6)
    out = tmp_path / "out"
    assert main(["eval", "--model", str(model_dir), "--tasks", f"mc:{mc},tinyworld:safety@0", "--limit", "4",
                 "--max-new-tokens", "4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "acc_norm" in printed and "accuracy" in printed and "0 results from the cache" in printed
    results = json.loads((out / "results.json").read_text())
    m = results["tasks"][f"mc:{mc}"]["metrics"]["acc"]
    assert m["n"] == 4 and 0 <= m["ci"][0] <= m["value"] <= m["ci"][1] <= 1
    report = (out / "report.md").read_text()
    assert "| 95% interval |" in report and "Log-likelihood ranks" in report and (out / "eval.png").exists()
    assert main(["eval", "--model", str(model_dir), "--tasks", "mc:/no/such.jsonl", "--out", str(out)]) == 2


def test_cache_keys_depend_on_every_part():
    assert Cache.key("m", "a") != Cache.key("m", "b") != Cache.key("n", "a")
    assert Cache.key("m", GenRequest("x").key()) != Cache.key("m", GenRequest("x", temperature=0.5).key())
    assert not math.isnan(len(Cache.key("m")))


MT_BENCH = SHARED_DATA / "mt_bench" / "question.jsonl"


class Fixed:
    """A model that gives one fixed reply to everything and keeps the prompts it was sent."""

    name = label = "fixed"

    def __init__(self, reply: str):
        self.reply, self.prompts = reply, []

    def generate(self, requests):
        self.prompts += [r.prompt for r in requests]
        return [self.reply] * len(requests)


@pytest.mark.shared_data(MT_BENCH)
def test_mt_bench_two_turns_graded_by_a_judge(local, tmp_path):
    judge = Fixed("Fine. Rating: [[7]]")
    res = evaluate(local, [f"mt_bench:{MT_BENCH}"], tmp_path / "mt", max_tokens=6, judge=judge)
    metrics = res["tasks"][f"mt_bench:{MT_BENCH}"]["metrics"]
    assert metrics["turn 1"]["value"] == metrics["turn 2"]["value"] == 7 and metrics["turn 1"]["n"] == 80
    assert set(metrics) >= {"math", "coding", "writing", "unparseable"} and metrics["unparseable"]["value"] == 0
    shown = [p[-1]["content"] for p in judge.prompts]
    assert len(shown) == 160
    assert sum("[The Start of the Reference Answer]" in p for p in shown) == 60  # 30 questions x 2 turns
    assert sum("[Follow-up]" in p for p in shown) == 80  # turn 2 shows the first answer
    report = (tmp_path / "mt" / "report.md").read_text()
    assert "| turn 1 | 7.00 |" in report and "A judge model's 1-10 grade" in report
    with pytest.raises(Exception, match="--judge"):
        evaluate(local, [f"mt_bench:{MT_BENCH}"], tmp_path / "mt2")


def test_chat_interleaves_questions_and_answers():
    assert [m["role"] for m in chat(["q1", "q2"], ["a1"])] == ["user", "assistant", "user"]
    assert chat(["q1"], []) == [{"role": "user", "content": "q1"}]


def test_format_instructions_are_checked_by_program(world):
    task = FormatInstructions(seed=0, world=world)
    records = task.records("test")
    assert {r["instruction"] for r in records} == set(INSTRUCTIONS)
    assert all(INSTRUCTIONS[r["instruction"]][0] in r["prompt"][-1]["content"] for r in records)
    good = {"capitals": "DEE IS THE GUARD.", "lowercase": "dee is the guard.", "end_done": "Dee is the guard. Done.",
            "start_okay": "Okay, Dee is the guard.", "max_words": "Dee is the guard.",
            "no_commas": "Dee is the guard.", "quotes": '"Dee is the guard."', "mention_town": "The town guard is Dee."}
    bad = {"capitals": "Dee is the guard.", "lowercase": "Dee is the guard.", "end_done": "Done. Dee is the guard.",
           "start_okay": "Dee is the guard, okay.", "max_words": "Dee is the guard of the vault and the gate too.",
           "no_commas": "Dee, the guard.", "quotes": 'Dee is "the guard".', "mention_town": "Dee is the guard."}
    for name in INSTRUCTIONS:
        assert task.correct(good[name], {"instruction": name}), name
        assert not task.correct(bad[name], {"instruction": name}), name
    task2, recs = load_source("tinyworld:ifeval@0", limit=3)
    assert isinstance(task2, FormatInstructions) and len(recs) == 3


GSM8K = SHARED_DATA / "gsm8k" / "test.jsonl"


@pytest.mark.shared_data(GSM8K)
def test_fewshot_puts_worked_examples_before_each_prompt(tmp_path):
    model = Fixed("<think>x</think>\nAnswer: 0")
    res = evaluate(model, [f"gsm8k:{GSM8K}"], tmp_path / "fs", limit=3, fewshot=2)
    assert res["tasks"][f"gsm8k:{GSM8K}"]["metrics"]["accuracy"]["n"] == 3  # the two shots are not scored
    prompt = model.prompts[0]
    assert [m["role"] for m in prompt] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert prompt[2]["content"].startswith("<think>") and "\nAnswer: " in prompt[2]["content"]
    shots = [json.loads(line) for line in GSM8K.read_text().splitlines()[:3]]
    assert prompt[1]["content"] == shots[0]["question"].strip()
    assert prompt[-1]["content"] == shots[2]["question"].strip()
    assert prompt[2]["content"].endswith(shots[0]["answer"].split("####")[-1].strip().replace(",", ""))
