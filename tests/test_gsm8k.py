"""GSM8K: the loader turns the real test split into RL prompts with gold numbers, and exact match scores replies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignlab.data.errors import DataError
from alignlab.data.gsm8k import SYSTEM_PROMPT, hf_source, load_gsm8k
from alignlab.rewards import parse_number
from alignlab.tasks.gsm8k import format_ok, is_correct, score

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"
needs_data = pytest.mark.shared_data(GSM8K / "test.jsonl")  # skipped where missing, failed under CI (conftest.py)


@pytest.fixture(scope="module")
def test_split():
    return load_gsm8k(GSM8K / "test.jsonl")


@needs_data
def test_the_test_split_loads_as_prompts_with_gold_numbers(test_split):
    assert len(test_split) == 1319  # SOURCES.md
    first = test_split[0]
    assert first["prompt"][0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert first["prompt"][1]["role"] == "user" and first["prompt"][1]["content"].startswith("Janet")
    assert first["answer"] == "18" and "<<" not in first["solution"]  # calculator annotations stripped
    assert all(parse_number(r["answer"]) is not None and "," not in r["answer"] for r in test_split)
    assert load_gsm8k(GSM8K / "test.jsonl", limit=5, system=None)[0]["prompt"][0]["role"] == "user"


@needs_data
def test_gold_solutions_score_100_percent_and_shifted_answers_0(test_split):
    gold = [f"<think>{r['solution']}</think>\nAnswer: {r['answer']}" for r in test_split]
    assert score(gold, test_split) == {"accuracy": 1.0, "format_rate": 1.0, "format_ok_wrong": 0.0, "n": 1319}
    shifted = gold[1:] + gold[:1]  # every reply answers another question
    s = score(shifted, test_split)
    assert s["accuracy"] < 0.05 and s["format_ok_wrong"] == 1.0 - s["accuracy"]


@pytest.mark.parametrize("reply, gold, correct, formatted", [
    ("<think>16 - 3 - 4 = 9, 9 * 2 = 18</think>\nAnswer: 18", "18", True, True),
    ("<think>...</think>\nAnswer: $18.00", "18", True, True),  # currency and decimals: the same number
    ("<think>...</think>\nAnswer: 1,000", "1000", True, True),
    ("<think>...</think>\nAnswer: 18<|im_end|>", "18", True, True),  # a trailing end-of-turn token
    ("<think>...</think>\n#### 18", "18", True, False),  # right number, not the asked format
    ("The answer is 18.", "18", True, False),  # last number, no format
    ("<think>18 is tempting</think>\nAnswer: 17", "18", False, True),  # format right, answer wrong
    ("<think>so it is 18", "18", False, False),  # never closed: truncated, no answer
    ("<think>...</think>\nAnswer: 18.5", "18", False, True),
    ("<think>...</think>\nAnswer: 0.5", "1/2", True, True),
])
def test_exact_match_on_known_replies(reply, gold, correct, formatted):
    assert is_correct(reply, gold) is correct
    assert format_ok(reply) is formatted


def test_score_counts():
    records = [{"answer": "18"}, {"answer": "3"}, {"answer": "5"}]
    replies = ["<think>a</think>\nAnswer: 18", "The answer is 3", "<think>a</think>\nAnswer: 6"]
    assert score(replies, records) == {"accuracy": 2 / 3, "format_rate": 2 / 3, "format_ok_wrong": 1 / 3, "n": 3}
    with pytest.raises(ValueError, match="2 replies for 3 records"):
        score(replies[:2], records)


def test_bad_rows_name_where(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"question": "2 + 2?", "answer": "4"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: .*####"):
        load_gsm8k(path)
    path.write_text(json.dumps({"q": "2 + 2?", "answer": "#### 4"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: .*'question'"):
        load_gsm8k(path)


def test_hub_source_for_users():
    from alignlab.data.loaders import parse_hf_records

    assert hf_source("test") == "hf:openai/gsm8k:main/test"
    assert parse_hf_records(hf_source("train")) == ("openai/gsm8k", "main", "train")


@needs_data
def test_grpo_prompt_sources(test_split):
    from alignlab.tasks import default_val_source, load_source

    task, records = load_source(f"gsm8k:{GSM8K / 'test.jsonl'}", limit=7)
    assert task.name == "gsm8k" and len(records) == 7 and records[0]["answer"] == test_split[0]["answer"]
    assert default_val_source("gsm8k") == default_val_source("gsm8k:train") == "gsm8k:test"


@needs_data
def test_grpo_runs_on_gsm8k_from_the_local_file(tmp_path):
    """The GPU recipe's data path on a tiny random model: GSM8K prompts through the chat template, rewards by the
    GSM8K task (format "Answer:" line, exact-match correctness), held-out accuracy on the test file."""
    import torch

    from alignlab.data.world import TinyWorld
    from alignlab.model import CausalLM, preset
    from alignlab.model.hf import save_model
    from alignlab.recipes.grpo import GRPOConfig, run
    from alignlab.rl.collect import RolloutConfig
    from alignlab.train.trainer import TrainConfig

    tok = TinyWorld(seed=0, size="quick").tokenizer()  # byte-level BPE: any text encodes
    torch.manual_seed(0)
    model = CausalLM(preset("llama", vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=2, max_seq_len=512,
                            eos_token_id=tok.eos_token_id))
    base = save_model(model, tmp_path / "base", tokenizer=tok)
    rollout = RolloutConfig(data=f"gsm8k:{GSM8K / 'test.jsonl'}", val_data=f"gsm8k:{GSM8K / 'test.jsonl'}",
                            max_prompts=40, max_prompt_len=200, num_generations=2, prompts_per_step=2,
                            max_completion_length=8, eval_prompts=3)
    cfg = GRPOConfig(out_dir=str(tmp_path / "grpo"), model=str(base), rollout=rollout,
                     train=TrainConfig(max_steps=2, lr=1e-3, eval_every=0, save_every=0, plot=False))
    result = run(cfg)
    assert result["status"] == "finished" and result["val/accuracy"] == 0.0  # a random model: no right answer
    logged = [json.loads(line) for line in (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert {"rewards/format/mean", "rewards/correctness/mean", "format_ok_wrong", "accuracy"} <= set(logged[0])
