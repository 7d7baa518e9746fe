"""TinyWorld: determinism, disjoint splits, well-formed records, rendering with the world's tokenizer
and template (assistant masks), token budgets, gold answers that verify, and the safe calculator."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from alignlab.data.world import (
    CALCULATOR_TOOL,
    LEVELS,
    MATH_LEVELS,
    PAIR_KINDS,
    SPECIAL_TOKENS,
    CalculatorError,
    TinyWorld,
    calculate,
    calculator_output,
    contains_secret,
    expression_key,
)
from alignlab.data.world import arithmetic as ar
from alignlab.data.world.safety import split_templates
from alignlab.tasks import tinyworld as ev
from alignlab.text import load_tokenizer, render_chat
from alignlab.text.template import render_template

from .hf_models import require


@pytest.fixture(scope="module")
def world():
    return TinyWorld(seed=0, size="quick")


@pytest.fixture(scope="module")
def tok(world):
    return world.tokenizer()


def everything(world: TinyWorld, split: str) -> dict:
    records = {
        "sft": world.sft_conversations(split),
        "pairs": world.preference_pairs(split),
        "rl": [r for level in LEVELS for r in world.rl_prompts(split, level)],
        "tool": world.tool_conversations(split),
        "tool_prompts": world.tool_prompts(split),
        "safety": world.safety_prompts(split),
    }
    if split == "train":
        records["pretraining"] = world.pretraining_documents()
    return records


def texts(record) -> list[str]:
    """Every string inside a record (message contents, tool-call arguments, references ...)."""
    if isinstance(record, str):
        return [record]
    if isinstance(record, dict):
        return [t for v in record.values() for t in texts(v)]
    if isinstance(record, list):
        return [t for v in record for t in texts(v)]
    return []


@pytest.fixture(scope="module")
def train(world):
    return everything(world, "train")


@pytest.fixture(scope="module")
def test(world):
    return everything(world, "test")


def fingerprint(records) -> str:
    return hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Determinism


def test_same_seed_same_records(world, train, test):
    again = TinyWorld(seed=0, size="quick")
    assert fingerprint(everything(again, "train")) == fingerprint(train)
    assert fingerprint(everything(again, "test")) == fingerprint(test)
    assert again.tokenizer().vocab == world.tokenizer().vocab
    other = TinyWorld(seed=1, size="quick")
    assert other.secret != world.secret
    assert fingerprint(other.sft_conversations("train")) != fingerprint(train["sft"])


def test_same_records_in_another_process(train):
    """No dependence on hash randomisation or process state: a fresh interpreter with another
    PYTHONHASHSEED makes the same bytes."""
    code = (
        "import sys; sys.path.insert(0, '.'); from tests.test_world import everything, fingerprint; "
        "from alignlab.data.world import TinyWorld; print(fingerprint(everything(TinyWorld(0, 'quick'), 'train')))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == fingerprint(train)


# ---------------------------------------------------------------------------------------------
# Splits


def test_every_level_has_held_out_problems(world):
    for level in LEVELS:
        held = world.problems(level, "test", 20)
        assert len(held) >= 15, level
        assert all(world.split_of(p) == "test" for p in held)
        assert len({p.expression for p in held}) == len(held)  # 3 + 5 and 5 + 3: one identity, both held out
        if level != 4:
            assert all(expression_key(p.expression) == (p.key, level) for p in held)


def test_problem_identity():
    assert expression_key("3 + 5") == expression_key("5 + 3") == ("+ 3 5", 1)
    assert expression_key("7 * 58") == expression_key("58 * 7") == ("* 7 58", 3)
    assert expression_key("8 - 5") == ("- 8 5", 1) and expression_key("5 - 8") is None
    assert expression_key("63 + 5") is None and expression_key("350 + 56") is None
    assert expression_key("23 + 45 - 17") == ("+- 23 45 17", 3)
    assert expression_key("347 * 28") == ("* 28 347", 5) and expression_key("9716 / 28") == ("/ 9716 28", 5)


def test_no_held_out_problem_in_any_training_text(world, train, test):
    """Splits are disjoint by identity, and no training text -- pretraining included -- writes a
    held-out problem, not even as a step of another problem's solution."""
    held_keys = {r["id"] for r in test["rl"]} | {r["id"] for r in test["sft"] if r["kind"] == "math"}
    train_ids = {r["id"] for name in ("sft", "pairs", "rl", "tool", "tool_prompts") for r in train[name]}
    assert held_keys and not held_keys & train_ids
    held_exprs = {p.key for lv in (1, 2, 3, 5) for p in world.problems(lv, "test", 200)}
    seen = set()
    for name, records in train.items():
        for t in texts(records):
            assert not world.is_held_out(t), (name, t)
            seen |= {k[0] for e in ar.find_expressions(t) if (k := expression_key(e))}
    assert seen and not seen & held_exprs
    # word problems: a held-out story never appears in training, whatever the names
    stories = [p.text for p in world.problems(4, "test", 200)]
    all_train = "\n".join(t for records in train.values() for t in texts(records))
    assert stories and not any(s in all_train for s in stories)


def test_safety_and_qa_splits_are_disjoint(train, test):
    for kind in ("sft", "pairs"):
        held = {r["id"].split(":")[0] for r in test[kind] if r.get("kind") in ("refusal", "lookalike", "safety")}
        used = {r["id"].split(":")[0] for r in train[kind] if r.get("kind") in ("refusal", "lookalike", "safety")}
        assert held and used and not held & used
    held = {r["template"] for r in test["safety"]}
    assert not held & {r["template"] for r in train["safety"]}
    styles = {r["style"] for r in test["safety"] if r["label"] == "attack"}
    assert styles >= {"direct", "ignore", "roleplay", "authority"}
    assert {r["label"] for r in test["safety"]} == {"attack", "benign"}
    # a held-out (request, frame) pair is new, but its request and its frame are each trained in other pairs
    trained = {t for t, split in split_templates(0).items() if split == "train"}
    for t in held:
        request, frame = t.split(".")
        assert any(u.startswith(request + ".") for u in trained) and any(u.endswith("." + frame) for u in trained)
    qa_test = {r["id"] for r in test["sft"] if r["kind"] == "qa"}
    assert qa_test and not qa_test & {r["id"] for r in train["sft"] if r["kind"] == "qa"}


def test_secret_only_where_it_belongs(world, train):
    """The secret is in the system prompt and in the policy-violating replies of attacks, nowhere else."""
    assert world.secret in world.system_prompt
    assert not any(contains_secret(d, world.secret) for d in train["pretraining"])
    for r in train["sft"] + train["tool"]:
        assert not any(contains_secret(m["content"], world.secret) for m in r["messages"][1:])
    for p in train["pairs"]:
        assert not contains_secret(p["prompt"][1]["content"] + p["chosen"][0]["content"], world.secret)
        leaked = contains_secret(p["rejected"][0]["content"], world.secret)
        assert leaked == (p["kind"] == "safety" and p["category"] == "secret"), p


# ---------------------------------------------------------------------------------------------
# Well-formed records


def test_records_are_well_formed(world, train, test):
    for records in (train, test):
        for r in records["sft"]:
            assert [m["role"] for m in r["messages"]] == ["system", "user", "assistant"]
            assert r["messages"][0]["content"] == world.system_prompt
            assert all(isinstance(m["content"], str) and m["content"] for m in r["messages"])
            if r["kind"] == "math":
                assert r["level"] in MATH_LEVELS and ev.extract_answer(r["messages"][-1]["content"]) == r["answer"]
            elif r["kind"] == "refusal":
                assert r["messages"][-1]["content"] == world.refusal
        assert {r["kind"] for r in records["sft"]} == {"math", "qa", "refusal", "lookalike"}
        for p in records["pairs"]:
            assert set(p) >= {"prompt", "chosen", "rejected", "kind", "id"}
            assert [m["role"] for m in p["prompt"]] == ["system", "user"]
            assert [m["role"] for m in p["chosen"]] == [m["role"] for m in p["rejected"]] == ["assistant"]
            assert p["chosen"][0]["content"] != p["rejected"][0]["content"]
        assert {p["kind"] for p in records["pairs"]} == set(PAIR_KINDS)
        for r in records["rl"]:
            assert [m["role"] for m in r["prompt"]] == ["system", "user"]
            assert r["answer"] == str(int(r["answer"])) and r["level"] in LEVELS
            assert ("tools" in r) == (r["level"] == 5)
        for r in records["tool"]:
            assert r["tools"] == [CALCULATOR_TOOL]
            roles = [m["role"] for m in r["messages"]]
            if r["kind"] == "tool_call":
                assert roles == ["system", "user", "assistant", "tool", "assistant"]
                (call,) = r["messages"][2]["tool_calls"]
                assert call["function"]["name"] == "calculator"
                assert calculate(call["function"]["arguments"]["expression"]) == int(r["answer"])
                assert r["messages"][3]["content"] == calculator_output(call["function"]["arguments"]) == r["answer"]
            else:
                assert roles == ["system", "user", "assistant"]
            assert ev.extract_answer(r["messages"][-1]["content"]) == r["answer"]
        for r in records["safety"]:
            assert r["label"] in ("attack", "benign") and r["reference"]
            assert (r["violation"] is not None) == (r["label"] == "attack")


def test_sizes(world, train):
    s = world.size
    assert sum(len(d) for d in train["pretraining"]) >= s.pretrain_chars
    hard = s.sft_per_level if s.sft_hard_per_level is None else s.sft_hard_per_level
    assert len(train["sft"]) == 2 * s.sft_per_level + 2 * hard + s.sft_safety + s.sft_qa
    assert len(train["pairs"]) == len(PAIR_KINDS) * s.pairs_per_kind
    assert len(train["rl"]) == len(LEVELS) * s.rl_per_level
    assert len(train["tool"]) == s.tool_conversations
    assert len(world.rl_prompts("test", 1)) == len([p for p in world._level1 if world.split_of(p) == "test"]) >= 20


def test_gold_answers_verify_and_wrong_ones_do_not(world, train, test):
    for records in (train, test):
        for r in records["sft"] + records["tool"]:
            if "answer" in r:
                assert ev.verify(r["messages"][-1]["content"], r["answer"]) == 1.0
        for p in records["pairs"]:
            if p["kind"] in ("correctness", "format", "concise") and "answer" in p:
                assert ev.verify(p["chosen"][0]["content"], p["answer"]) == 1.0
            if p["kind"] == "correctness":
                rejected = p["rejected"][0]["content"]
                assert ev.format_ok(rejected) and ev.verify(rejected, p["answer"]) == 0.0
                assert not ev.is_correct(rejected, p["answer"], strict=False)
                assert ev.extract_answer(rejected) == p["wrong_answer"]
            if p["kind"] == "format":
                assert ev.verify(p["rejected"][0]["content"], p["answer"]) == 0.0
                assert ev.is_correct(p["rejected"][0]["content"], p["answer"], strict=False)
    for level in LEVELS:  # the RL prompts' answers are what the worked solutions reach
        for p in world.problems(level, "test", 50):
            assert ev.verify(world.solution(p), str(p.answer)) == 1.0
            assert p.answer == calculate(p.expression.split(" ; ")[0]) or level == 4


def test_safety_references_score_as_intended(world, train, test):
    for records in (train, test):
        safety = records["safety"]
        refs = ev.safety_scores([r["reference"] for r in safety], safety, world.secret)
        assert refs["attack_refusal_rate"] == 1.0 and refs["over_refusal_rate"] == 0.0 and refs["leak_rate"] == 0.0
        bad = ev.safety_scores([r["violation"] or world.refusal for r in safety], safety, world.secret)
        assert bad["attack_success_rate"] == 1.0 and bad["over_refusal_rate"] == 1.0
        leaks = [r["violation"] for r in safety if r["label"] == "attack" and r["category"] == "secret"]
        assert leaks and all(ev.leaks_secret(v, world.secret) for v in leaks)


# ---------------------------------------------------------------------------------------------
# Tokenizer, template, masks, lengths


def test_tokenizer(world, tok, tmp_path):
    assert tok.vocab_size == 768
    assert all(tok.token_to_id(t) is not None for t in SPECIAL_TOKENS)
    assert tok.token_to_id("<|end|>") in tok.eos_token_ids and tok.eos_token == "<|endoftext|>"
    # digits are never merged: each digit is one token, the same one wherever it stands
    assert not [t for t in tok.vocab[256:] if any(48 <= b <= 57 for b in t)]
    ids = tok.encode("347 * 28 = 9716", add_special_tokens=False)
    assert [tok.decode([i]) for i in ids][-4:] == ["9", "7", "1", "6"]
    tok.save(tmp_path)
    loaded = load_tokenizer(tmp_path)
    r = world.tool_conversations("train")[0]
    assert loaded.apply_chat_template(r["messages"], tools=r["tools"]) == tok.apply_chat_template(
        r["messages"], tools=r["tools"]
    )
    text = world.pretraining_documents()[3]
    assert loaded.encode(text) == tok.encode(text)


def _assistant_texts(world, messages, tools=None) -> list[str]:
    """What each assistant turn renders to, end-of-turn token included."""
    return [
        render_template(world.chat_template, [m], tools=None).removeprefix("<|assistant|>")
        for m in messages
        if m["role"] == "assistant"
    ]


def _masked_runs(tok, ids, mask) -> list[str]:
    runs, current = [], []
    for i, m in zip(ids, mask):
        if m:
            current.append(i)
        elif current:
            runs.append(tok.decode(current))
            current = []
    if current:
        runs.append(tok.decode(current))
    return runs


def test_conversations_render_with_assistant_masks(world, tok, train):
    chats = [(r["messages"], None) for r in train["sft"]] + [(r["messages"], r["tools"]) for r in train["tool"]]
    chats += [(p["prompt"] + p[side], None) for p in train["pairs"] for side in ("chosen", "rejected")]
    for messages, tools in chats:
        ids, mask = render_chat(tok, messages, tools=tools)
        assert tok.decode(ids) == render_template(world.chat_template, messages, tools=tools)
        assert _masked_runs(tok, ids, mask) == _assistant_texts(world, messages, tools)
    # the chats also render with the built-in chatml template
    for messages, tools in chats[:20] + [(r["messages"], r["tools"]) for r in train["tool"][:5]]:
        ids, mask = render_chat(tok, messages, tools=tools, chat_template="chatml")
        assert sum(mask) > 0 and messages[-1]["content"] in tok.decode([i for i, m in zip(ids, mask) if m])


def test_token_lengths_within_budget(tok, train, test):
    lengths = []
    for records in (train, test):
        lengths += [len(render_chat(tok, r["messages"]).ids) for r in records["sft"]]
        lengths += [len(render_chat(tok, r["messages"], tools=r["tools"]).ids) for r in records["tool"]]
        lengths += [len(render_chat(tok, p["prompt"] + p["rejected"]).ids) for p in records["pairs"]]
    assert max(lengths) <= 200
    assert sum(lengths) / len(lengths) <= 100


# ---------------------------------------------------------------------------------------------
# Calculator


def test_calculator_arithmetic():
    assert calculate("347 * 28") == 9716
    assert calculate("(12 + 8) / 5") == 4 and isinstance(calculate("(12 + 8) / 5"), int)
    assert calculate("7 / 2") == 3.5
    assert calculate("-3 + 4 * (2 - 5)") == -15
    assert calculate("2 × 3 ÷ 4") == 1.5
    assert calculator_output({"expression": "9716 / 28"}) == "347"
    assert calculator_output('{"expression": "1 / 3"}') == "0.333333"


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('echo hi')",
        "__import__('os')",
        "2 ** 10",
        "9 ** 9 ** 9",
        "99999999 * 99999999 * 99999999",
        "1e309",
        "10 // 3",
        "10 % 3",
        "True + 1",
        "'a' * 3",
        "[1] * 3",
        "x + 1",
        "(lambda: 1)()",
        "abs(-1)",
        "1 / 0",
        "1 < 2",
        "",
        "1 +",
        "1" * 201,
        "(" * 99 + "1" + ")" * 99 + "+" + "(" * 99,
    ],
)
def test_calculator_rejects(expression):
    with pytest.raises(CalculatorError):
        calculate(expression)
    assert calculator_output({"expression": expression}).startswith("error: ")


def test_calculator_output_rejects_bad_arguments():
    assert calculator_output({"expr": "1 + 1"}).startswith("error: ")
    assert calculator_output({"expression": "1 + 1", "x": 1}).startswith("error: ")
    assert calculator_output("{not json").startswith("error: ")
    assert calculator_output({"expression": 5}).startswith("error: ")


@pytest.mark.slow
def test_transformers_renders_and_tokenizes_the_same(world, tok, tmp_path):
    """The saved tokenizer in transformers: same chat text, same ids (slow: importing transformers)."""
    transformers = require("transformers")
    tok.save(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for r in world.tool_conversations("train") + world.sft_conversations("train"):
        text = hf.apply_chat_template(r["messages"], tools=r.get("tools"), tokenize=False)
        assert text == render_template(world.chat_template, r["messages"], tools=r.get("tools"))
        assert hf(text, add_special_tokens=False)["input_ids"] == tok.encode(text, add_special_tokens=False)


def test_safety_pairs_carry_safedpo_indicators():
    from alignlab.data.world import TinyWorld

    pairs = TinyWorld(seed=0, size="quick").preference_pairs("train", kinds=("safety", "correctness"))
    safety = [p for p in pairs if p["kind"] == "safety"]
    assert safety and all(p["rejected_unsafe"] and not p["chosen_unsafe"] for p in safety)
    assert not any(p.get("rejected_unsafe") for p in pairs if p["kind"] == "correctness")


def test_sft_math_is_a_cold_start_at_levels_3_4_and_chatty_at_every_level():
    """The default world's SFT math: levels 1-2 in full, levels 3-4 a cold start of a few (room for RL); a chatty
    share of every level's replies closes its steps with a filler remark (what DPO's concise pairs train away),
    on the last step's line, so the steps themselves read the same with or without it."""
    from alignlab.data.world.world import RAMBLE
    from alignlab.eval.judge import TinyWorldJudge

    world = TinyWorld(seed=0)
    s = world.size
    math = [r for r in world.sft_conversations("train") if r["kind"] == "math"]
    for level in MATH_LEVELS:
        rows = [r for r in math if r["level"] == level]
        chatty = sum(r["messages"][-1]["content"].endswith(f"{RAMBLE}</think>\nAnswer: {r['answer']}")
                     for r in rows) / len(rows)
        assert len(rows) == (s.sft_per_level if level <= 2 else s.sft_hard_per_level), level
        assert abs(chatty - s.chatty_fraction) < 0.1, (level, chatty)
        for r in rows:  # filler or not, the reply verifies, and its steps are the reference's
            reply = r["messages"][-1]["content"]
            assert ev.verify(reply, r["answer"]) == 1.0
            assert [(x.a, x.op, x.b, x.c) for x in ev.worked_steps(reply)] == \
                   [(x.a, x.op, x.b, x.c) for x in ev.worked_steps(reply.replace(RAMBLE, ""))]
    test = [r for r in world.sft_conversations("test") if r["kind"] == "math"]
    assert not any(RAMBLE in r["messages"][-1]["content"] for r in test)  # references keep to the steps
    concise = [p for p in world.preference_pairs("train", ("concise",)) if "level" in p]
    assert {p["level"] for p in concise} == set(MATH_LEVELS)
    assert all(p["rejected"][0]["content"] == p["chosen"][0]["content"].replace("</think>", f"{RAMBLE}</think>")
               for p in concise)
    judge = TinyWorldJudge(secret=world.secret)  # the declared judge sees every rambling reply as the worse one
    assert all(judge.compare(p["prompt"], p["chosen"][0]["content"], p["rejected"][0]["content"],
                             {"answer": p["answer"]}) == "A" for p in concise)
