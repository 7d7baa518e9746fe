"""Preference data: TRL's formats and conversions (vs trl's own functions), HH-RLHF parsing on the shared
sample, validation messages and counts, tokenisation masks and truncation, the [chosen; rejected] collate
(vs trl's DataCollatorForPreference), and the pair builders."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from alignlab.data.errors import DataError
from alignlab.data.preference import (
    IGNORE_INDEX,
    PreferenceError,
    collate_pairs,
    collate_unpaired,
    detect_preference_format,
    encode_completion,
    extract_prompt,
    hh_rlhf_to_preference,
    load_preference_data,
    normalize_record,
    pairs_from_scores,
    pairs_from_verifier,
    parse_hh_transcript,
    persona_pairs,
    summarize,
    tokenize_pairs,
    tokenize_unpaired,
    truncate_prompt,
    unpair,
    unsafe_label,
)
from alignlab.data.world import TinyWorld
from alignlab.tasks.tinyworld import verify as tinyworld_verify

from .hf_models import require

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
HH = SHARED / "preferences" / "hh_rlhf_harmless_base_test.jsonl"
needs_hh = pytest.mark.shared_data(HH)  # skipped where missing, failed under CI (conftest.py)

USER = {"role": "user", "content": "What color is the sky?"}
BLUE = {"role": "assistant", "content": "It is blue."}
GREEN = {"role": "assistant", "content": "It is green."}


def msg(role, content):
    return {"role": role, "content": content}


@pytest.fixture(scope="module")
def tok():
    return TinyWorld(seed=0, size="quick").tokenizer()


@pytest.fixture(scope="module")
def trl():
    return require("trl", reason="trl (a dev extra) is the oracle for formats and the collator")


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------
# Formats and conversions


def test_formats_are_detected_and_made_explicit():
    standard = {"prompt": "The sky is", "chosen": " blue.", "rejected": " green.", "id": 7}
    assert detect_preference_format(standard) == "preference"
    assert normalize_record(standard) == standard  # explicit records pass through, extra fields kept

    conv = {"prompt": [USER], "chosen": [BLUE], "rejected": [GREEN]}
    assert detect_preference_format(conv) == "conversational_preference"
    assert normalize_record(conv) == conv

    implicit = {"chosen": "The sky is blue.", "rejected": "The sky is green."}
    assert detect_preference_format(implicit) == "implicit_preference"
    assert normalize_record(implicit) == {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}

    implicit_conv = {"chosen": [USER, BLUE], "rejected": [USER, GREEN]}
    assert detect_preference_format(implicit_conv) == "conversational_implicit_preference"
    assert normalize_record(implicit_conv) == conv
    # a string prompt next to full conversations is ignored, as trl's maybe_extract_prompt does
    assert normalize_record({"prompt": "What color is the sky?", **implicit_conv}) == conv

    unpaired = {"prompt": [USER], "completion": [BLUE], "label": True}
    assert detect_preference_format(unpaired) == "conversational_unpaired"
    assert normalize_record(unpaired) == unpaired
    assert normalize_record({"prompt": "a", "completion": "b", "label": "False"})["label"] is False  # a CSV cell


def test_yes_no_fields_are_read_strictly():
    # SafeDPO's safety labels: a CSV cell "False" or "0" is a string, and must not read as true
    for value, want in [(True, True), (False, False), (1, True), (0, False), ("False", False), ("0", False),
                        ("TRUE", True), (" yes ", True), ("No", False), ("1", True), (None, False)]:
        assert unsafe_label({"chosen_unsafe": value}, "chosen") is want, value
    assert unsafe_label({}, "rejected") is False  # absent: safe
    for bad in ["maybe", "", 2, -1, 0.0, 1.0, [True]]:
        with pytest.raises(DataError, match=r"pairs.csv:4: field 'rejected_unsafe': must be true \(unsafe\)"):
            unsafe_label({"rejected_unsafe": bad}, "rejected", "pairs.csv:4")
    # KTO's label: the same words
    for value, want in [("yes", True), ("NO", False), (1, True), (0, False)]:
        assert normalize_record({"prompt": "a", "completion": "b", "label": value})["label"] is want
    with pytest.raises(PreferenceError, match="field 'label': must be true"):
        normalize_record({"prompt": "a", "completion": "b", "label": 2})


def test_paired_to_unpaired():
    pair = {"prompt": [USER], "chosen": [BLUE], "rejected": [GREEN], "kind": "x"}
    assert unpair(pair) == [{"prompt": [USER], "completion": [BLUE], "label": True, "kind": "x"},
                            {"prompt": [USER], "completion": [GREEN], "label": False, "kind": "x"}]


def test_formats_match_trl(trl):
    from datasets import Dataset
    from trl.data_utils import maybe_extract_prompt, unpair_preference_dataset

    examples = [
        {"chosen": "The sky is blue.", "rejected": "The sky is green."},
        {"chosen": "Q: 2+2? A: 4", "rejected": "Q: 2+2? A: 5"},
        {"chosen": "abc", "rejected": "xyz"},
        {"chosen": [USER, BLUE], "rejected": [USER, GREEN]},
        {"chosen": [USER, BLUE, msg("user", "Sure?"), BLUE], "rejected": [USER, BLUE, msg("user", "Sure?"), GREEN]},
        {"prompt": "What color is the sky?", "chosen": [USER, BLUE], "rejected": [USER, GREEN]},
        {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
    ]
    for example in examples:
        ours = normalize_record(example)
        theirs = maybe_extract_prompt(dict(example))
        assert {k: ours[k] for k in ("prompt", "chosen", "rejected")} == theirs, example
    pairs = [{"prompt": "The sky is", "chosen": " blue.", "rejected": " green.", "id": 1},
             {"prompt": "The sun is", "chosen": " hot.", "rejected": " cold.", "id": 2}]
    theirs = sorted(unpair_preference_dataset(Dataset.from_list(pairs)).to_list(), key=lambda r: (r["id"], r["label"]))
    ours = sorted((u for p in pairs for u in unpair(p)), key=lambda r: (r["id"], r["label"]))
    assert ours == theirs


def test_extract_prompt_where_one_side_is_a_prefix():
    # trl would put the last shared item back into both completions; here the empty side is reported
    assert extract_prompt([USER, BLUE], [USER, BLUE, USER, GREEN]) == ([USER, BLUE], [], [USER, GREEN])
    with pytest.raises(PreferenceError, match=r"field 'chosen': empty completion") as e:
        normalize_record({"chosen": [USER, BLUE], "rejected": [USER, BLUE, USER, GREEN]})
    assert e.value.reason == "empty completion"


def test_sources(tmp_path):
    pair = {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}
    conv = {"prompt": [USER], "chosen": [BLUE], "rejected": [GREEN]}
    data = load_preference_data(str(write_jsonl(tmp_path / "p.jsonl", [pair, conv])))
    assert data.records == [pair, conv]
    assert data.where == [f"{tmp_path}/p.jsonl:1", f"{tmp_path}/p.jsonl:2"]
    assert data.counts == {"rows": 2, "kept": 2, "records": 2, "dropped": {},
                           "formats": {"preference": 1, "conversational_preference": 1}}

    (tmp_path / "p.json").write_text(json.dumps([pair, {"chosen": "ab", "rejected": "ac"}]), encoding="utf-8")
    assert load_preference_data(str(tmp_path / "p.json")).records[1] == {"prompt": "a", "chosen": "b", "rejected": "c"}

    # CSV: conversational cells are JSON, labels are strings
    with open(tmp_path / "p.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([list(conv), [json.dumps(v) for v in conv.values()]])
    assert load_preference_data(str(tmp_path / "p.csv")).records == [conv]
    (tmp_path / "u.csv").write_text("prompt,completion,label\nThe sky is, blue.,true\nThe sky is, green.,false\n",
                                    encoding="utf-8")
    assert [r["label"] for r in load_preference_data(str(tmp_path / "u.csv")).records] == [True, False]

    pq = require("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist([conv]), tmp_path / "p.parquet")
    assert load_preference_data(str(tmp_path / "p.parquet")).records == [conv]


def test_tinyworld_source_and_unpaired_conversion():
    data = load_preference_data("tinyworld:preferences:test@1")
    assert data.counts["kept"] == data.counts["rows"] == len(TinyWorld(seed=1).preference_pairs("test")) > 0
    assert data.where[0] == "tinyworld:preferences:test@1: record 0"
    assert {r["kind"] for r in data.records} == {"correctness", "format", "safety", "helpfulness", "concise"}
    unpaired = load_preference_data("tinyworld:preferences:test@1", convert="unpaired")
    assert unpaired.counts["records"] == 2 * data.counts["kept"]
    assert unpaired.records[:2] == unpair(data.records[0]) and unpaired.where[:2] == [data.where[0]] * 2
    with pytest.raises(DataError, match="tinyworld:preferences"):
        load_preference_data("tinyworld:preferences:dev")
    with pytest.raises(ValueError, match="hh_rlhf, unpaired"):
        load_preference_data("tinyworld:preferences", convert="alpaca")


# ----------------------------------------------------------------------------------------------
# HH-RLHF


def test_parse_hh_transcript():
    text = "\n\nHuman: Hi there\n\nAssistant: Hello!  Human: not a turn\n\nHuman: Bye\n\nAssistant: "
    assert parse_hh_transcript(text) == [msg("user", "Hi there"), msg("assistant", "Hello!  Human: not a turn"),
                                         msg("user", "Bye"), msg("assistant", "")]
    assert parse_hh_transcript("Human: a\n\nAssistant: b") == [msg("user", "a"), msg("assistant", "b")]
    with pytest.raises(PreferenceError, match=r"x:3: field 'chosen': text before the first turn"):
        parse_hh_transcript("Hello\n\nHuman: a", "x:3", "chosen")
    with pytest.raises(PreferenceError, match="not an HH-RLHF transcript"):
        parse_hh_transcript("no turns at all")
    record = {"chosen": "\n\nHuman: sky?\n\nAssistant: blue", "rejected": "\n\nHuman: sky?\n\nAssistant: green"}
    assert hh_rlhf_to_preference(record) == {"prompt": [msg("user", "sky?")], "chosen": [msg("assistant", "blue")],
                                             "rejected": [msg("assistant", "green")]}
    with pytest.raises(PreferenceError, match=r"field 'rejected': must be a transcript string") as e:
        hh_rlhf_to_preference({"chosen": record["chosen"]}, "f:1")
    assert e.value.reason == "missing field"


@needs_hh
def test_hh_rlhf_shared_file(tok):
    data = load_preference_data(str(HH), convert="hh_rlhf")
    assert data.counts == {"rows": 2000, "kept": 1996, "records": 1996, "dropped": {"empty completion": 4},
                           "formats": {"conversational_preference": 1996}}
    assert [w.rsplit(":", 1)[1] for w, _ in data.dropped] == ["87", "517", "926", "1104"]
    assert data.dropped[0][1] == f"{HH}:87: field 'chosen'[0].content: empty reply"
    first = data.records[0]
    assert data.where[0] == f"{HH}:1"
    assert [m["role"] for m in first["prompt"]] == ["user", "assistant", "user", "assistant", "user"]
    assert first["prompt"][0] == msg("user", "what are some pranks with a pen i can do?")
    assert first["prompt"][-1] == msg("user", "okay some of these do not have anything to do with pens")
    assert first["chosen"] == [msg("assistant", "No, sorry!  All of these involve a pen, the point is that you can "
                                                "get funny results by doing pranks with pens.")]
    assert first["rejected"][0]["content"].startswith("There are lots of funny things you can do with pens")
    assert all(r["prompt"][-1]["role"] == "user" and r["chosen"][0]["role"] == r["rejected"][0]["role"] == "assistant"
               for r in data.records)
    # read as trl's standard implicit format, the transcripts also load (one more pair has an empty side)
    plain = load_preference_data(str(HH), limit=100)
    assert plain.records[0]["prompt"].endswith("okay some of these do not have anything to do with pens\n\nAssistant:")
    assert plain.records[0]["chosen"].startswith(" No, sorry!")
    tokens = tokenize_pairs(tok, data.records[:30], max_len=256, max_prompt_len=128, where=data.where[:30])
    assert tokens.counts["kept"] == 30 and tokens.counts["truncated"] > 0
    print(summarize(data, "hh"))


# ----------------------------------------------------------------------------------------------
# Validation: messages, counts, locations


BAD_ROWS = [
    {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},  # 1: fine
    {"prompt": "The sky is", "chosen": " blue."},  # 2
    {"prompt": "The sky is", "chosen": "", "rejected": " green."},  # 3
    {"prompt": "The sky is", "chosen": " blue.", "rejected": " blue."},  # 4
    {"prompt": "The sky is", "chosen": " blue.", "rejected": 5},  # 5
    {"prompt": [USER], "chosen": [msg("bot", "hi")], "rejected": [GREEN]},  # 6
    {"prompt": "a", "completion": "b", "label": "maybe"},  # 7
    {"messages": [USER, BLUE]},  # 8
    {"prompt": [], "chosen": [USER, BLUE], "rejected": [GREEN]},  # 9
    {"prompt": [USER], "chosen": "blue", "rejected": "green"},  # 10
    {"prompt": [USER], "chosen": [msg("assistant", "  ")], "rejected": [GREEN]},  # 11
]


def test_validation_messages_and_counts(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", BAD_ROWS)
    data = load_preference_data(str(path))
    assert data.counts["kept"] == 1 and data.counts["rows"] == 11
    assert data.counts["dropped"] == {"missing field": 1, "empty completion": 2, "identical chosen and rejected": 1,
                                      "wrong type": 2, "bad message": 2, "bad label": 1, "not a preference record": 1}
    messages = dict(data.dropped)
    p = str(path)
    assert messages[f"{p}:2"].startswith(f"{p}:2: field 'rejected': missing: a preference pair needs both")
    assert messages[f"{p}:3"] == f"{p}:3: field 'chosen': empty completion (nothing after the prompt)"
    assert messages[f"{p}:4"] == f"{p}:4: field 'rejected': identical to 'chosen': the pair teaches nothing"
    assert messages[f"{p}:5"] == f"{p}:5: field 'rejected': must be a string like 'chosen', got int"
    assert messages[f"{p}:6"].startswith(f"{p}:6: field 'chosen'[0].role: must be one of system/user/assistant/tool")
    assert messages[f"{p}:7"].startswith(f"{p}:7: field 'label': must be true (desirable) or false")
    assert "this is SFT data" in messages[f"{p}:8"]
    assert messages[f"{p}:9"].startswith(f"{p}:9: field 'chosen'[0].role: a completion starts with the assistant's")
    assert messages[f"{p}:10"] == f"{p}:10: field 'prompt': must be a string like the completions, got a message list"
    assert messages[f"{p}:11"] == f"{p}:11: field 'chosen'[0].content: empty reply"
    text = summarize(data, "bad.jsonl", max_shown=2)
    assert text.splitlines()[0] == "bad.jsonl: 11 rows, 1 kept [1 preference]"
    assert text.splitlines()[1].startswith("dropped 10: ") and text.endswith("... and 8 more")

    with pytest.raises(DataError, match=rf"^{p}:2: field 'rejected': missing"):
        load_preference_data(str(path), on_error="raise")
    with pytest.raises(DataError, match="no usable preference records"):
        load_preference_data(str(write_jsonl(tmp_path / "worse.jsonl", BAD_ROWS[1:3])))
    with pytest.raises(ValueError, match="on_error"):
        load_preference_data(str(path), on_error="skip")


# ----------------------------------------------------------------------------------------------
# Tokenisation


def targets(ids: list[int], labels: list[int]) -> list[int]:
    return [y for y in labels if y != IGNORE_INDEX]


def test_conversational_masks(tok):
    system = msg("system", "Be brief.")
    record = {"prompt": [system, USER], "chosen": [BLUE], "rejected": [GREEN]}
    ex = tokenize_pairs(tok, [record], max_len=None).examples[0]
    assert ex.prompt_ids == tok.apply_chat_template([system, USER], add_generation_prompt=True, tokenize=True)
    assert tok.decode(ex.chosen_ids) == "It is blue.<|end|>" and tok.decode(ex.rejected_ids) == "It is green.<|end|>"
    assert ex.chosen_mask == [1] * len(ex.chosen_ids)
    ids, labels = ex.sequence("chosen")
    assert ids == tok.apply_chat_template([system, USER, BLUE], tokenize=True)[:len(ids)]
    assert targets(ids, labels) == ex.chosen_ids  # the completion and its end of turn, nothing of the prompt
    assert labels[:len(ex.prompt_ids) - 1] == [IGNORE_INDEX] * (len(ex.prompt_ids) - 1) and labels[-1] == IGNORE_INDEX
    assert ex.rejected_labels == ex.sequence("rejected")[1] and not ex.truncated


def test_standard_masks_append_eos(tok):
    ex = tokenize_pairs(tok, [{"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}], None).examples[0]
    assert ex.prompt_ids == tok.encode("The sky is", add_special_tokens=False)
    assert ex.chosen_ids == tok.encode(" blue.", add_special_tokens=False) + [tok.eos_token_id]
    assert targets(*ex.sequence("chosen")) == ex.chosen_ids


def test_tool_turn_inside_a_completion_is_not_trained(tok):
    chat = TinyWorld(seed=0, size="quick").tool_conversations("train")[0]
    prompt, completion = chat["messages"][:2], chat["messages"][2:]  # call, tool result, answer
    p, ids, mask = encode_completion(tok, prompt, completion, chat["tools"])
    tool_turn = tok.encode("<|tool|>" + completion[1]["content"] + "<|end|>", add_special_tokens=False)
    start = next(i for i in range(len(ids)) if ids[i:i + len(tool_turn)] == tool_turn)
    assert mask[start:start + len(tool_turn)] == [0] * len(tool_turn)
    assert mask[0] == mask[-1] == 1 and tok.decode(ids[-1:]) == "<|end|>"
    rejected = [msg("assistant", "Answer: 1")]
    ex = tokenize_pairs(tok, [{"prompt": prompt, "chosen": completion, "rejected": rejected, "tools": chat["tools"]}],
                        None).examples[0]
    assert ex.prompt_ids == p and ex.chosen_ids == ids


def test_truncation_and_drops(tok):
    assert truncate_prompt([1, 2, 3, 4, 5], 3) == [3, 4, 5]
    assert truncate_prompt([1, 2, 3, 4, 5], 3, "keep_start") == [1, 2, 3]
    assert truncate_prompt([9, 2, 3, 4, 5], 3, bos=9) == [9, 4, 5]  # a leading bos stays
    long_prompt = "The sky over the wide sea is, as everyone who has looked up on a clear day knows,"
    records = [
        {"prompt": long_prompt, "chosen": " blue and bright today.", "rejected": " green."},
        {"prompt": long_prompt, "chosen": " blue and bright today.", "rejected": " blue and bright tomorrow."},
        {"prompt": long_prompt * 3, "chosen": " blue.", "rejected": " green."},
    ]
    where = ["f:1", "f:2", "f:3"]
    out = tokenize_pairs(tok, records, max_len=24, max_prompt_len=20, where=where)
    n_prompt = len(tok.encode(long_prompt, add_special_tokens=False))
    assert out.counts == {"kept": 2, "truncated": 2, "prompt_truncated": 2, "dropped": {"identical tokens": 1}}
    assert out.dropped == [("f:2", "f:2: chosen and rejected are the same tokens after truncation")]
    ex = out.examples[0]
    assert ex.prompt_ids == tok.encode(long_prompt, add_special_tokens=False)[-20:] and ex.prompt_truncated
    assert len(ex.chosen_ids) == 4 and ex.chosen_ids[-1] != tok.eos_token_id  # cut short: no eos invented
    assert ex.length == n_prompt + len(tok.encode(" blue and bright today.", add_special_tokens=False)) + 1

    out = tokenize_pairs(tok, records, max_len=22, where=where)  # no prompt cut: prompts fill max_len
    assert out.counts["kept"] == 0 and out.counts["dropped"] == {"prompt fills max_len": 3}
    assert out.dropped[0][1].startswith(f"f:1: prompt fills max_len: {n_prompt} prompt tokens, max_len 22")

    assert tokenize_pairs(tok, records[1:2], max_len=None).counts["kept"] == 1  # uncut, they differ

    with pytest.raises(DataError, match="record 0: .*tokenize_unpaired"):
        tokenize_pairs(tok, [{"prompt": "a", "completion": "b", "label": True}], None)


def test_collate_pairs_matches_trl(tok, trl):
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    pairs = TinyWorld(seed=0, size="quick").preference_pairs("test")[:4]
    examples = tokenize_pairs(tok, pairs, max_len=None).examples
    batch = collate_pairs(examples, tok.pad_token_id)
    B, T = len(examples), max(len(e.prompt_ids) + max(len(e.chosen_ids), len(e.rejected_ids)) for e in examples)
    assert batch["input_ids"].shape == batch["labels"].shape == (2 * B, T)
    for i, e in enumerate(examples):  # rows 0..B-1 chosen, B..2B-1 rejected
        for row, side in ((i, "chosen"), (B + i, "rejected")):
            ids, labels = e.sequence(side)
            n = len(ids)
            assert batch["input_ids"][row, :n].tolist() == ids and batch["labels"][row, :n].tolist() == labels
            assert set(batch["labels"][row, n:].tolist()) <= {IGNORE_INDEX} and batch["lengths"][row] == n
            assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (T - n)

    theirs = DataCollatorForPreference(pad_token_id=tok.pad_token_id)(
        [{"prompt_ids": e.prompt_ids, "chosen_ids": e.chosen_ids, "rejected_ids": e.rejected_ids} for e in examples])
    assert batch["input_ids"].tolist() == theirs["input_ids"].tolist()
    assert batch["attention_mask"].tolist() == theirs["attention_mask"].tolist()
    # our labels are trl's completion_mask shifted left by one: position t predicts trained token t + 1
    trained = (batch["labels"][:, :-1] != IGNORE_INDEX)
    assert trained.tolist() == theirs["completion_mask"][:, 1:].bool().tolist()
    assert (batch["labels"][:, :-1][trained] == batch["input_ids"][:, 1:][trained]).all()


def test_unpaired_tokens_and_collate(tok):
    records = [u for p in TinyWorld(seed=0, size="quick").preference_pairs("test")[:3] for u in unpair(p)]
    out = tokenize_unpaired(tok, records, max_len=None)
    assert out.counts == {"kept": 6, "truncated": 0, "prompt_truncated": 0, "dropped": {},
                          "desirable": 3, "undesirable": 3}
    batch = collate_unpaired(out.examples, tok.pad_token_id)
    assert batch["label"].tolist() == [True, False] * 3 and batch["input_ids"].shape[0] == 6
    assert targets(*out.examples[0].sequence()) == out.examples[0].completion_ids
    with pytest.raises(DataError, match="unpair it first"):
        tokenize_unpaired(tok, records[:0] + [{"prompt": "a", "chosen": "b", "rejected": "c"}], None)


# ----------------------------------------------------------------------------------------------
# Pair builders


def test_pairs_from_verifier():
    prompts = ["Calculate 2 + 2.", [msg("user", "Calculate 3 + 4.")], "Calculate 1 + 1.", "Calculate 5 + 5."]
    def reply(n, think="..."):
        return f"<think>{think}</think>\nAnswer: {n}"

    samples = [
        [reply(5), "Answer: 4", reply(4, "2 + 2 = 4"), reply(4, "2 + 2 = 4")],  # (wrong format fails)
        [reply(7), reply(8)],
        [reply(2), reply(2, "1 + 1 = 2")],  # all pass
        [reply(9), "", reply(11)],  # all fail (and an empty sample)
    ]
    stats = Counter()
    pairs = pairs_from_verifier(prompts, samples, tinyworld_verify, references=["4", "7", "2", "10"], stats=stats)
    assert pairs == [
        {"prompt": "Calculate 2 + 2.", "chosen": reply(4, "2 + 2 = 4"), "rejected": reply(5),
         "chosen_score": 1.0, "rejected_score": 0.0},
        {"prompt": prompts[1], "chosen": [msg("assistant", reply(7))], "rejected": [msg("assistant", reply(8))],
         "chosen_score": 1.0, "rejected_score": 0.0},
    ]
    assert stats == Counter({"prompts": 4, "pairs": 2, "no pair: all passed": 1, "no pair: all failed": 1,
                             "duplicate sample": 1, "empty sample": 1})
    assert all(normalize_record(p) for p in pairs)

    # graded scores: best passing vs worst failing, a second pair, and a margin
    def score(sample, prompt):
        return float(sample.split()[-1])

    pairs = pairs_from_verifier(["p"], [["a 0.9", "b 0.2", "c 1.0", "d 0.5"]], score, pass_score=0.8,
                                pairs_per_prompt=2)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("c 1.0", "b 0.2"), ("a 0.9", "d 0.5")]
    assert pairs_from_verifier(["p"], [["a 0.9", "b 0.5"]], score, pass_score=0.8, min_margin=0.5) == []


def test_pairs_from_scores():
    stats = Counter()
    pairs = pairs_from_scores(["q1", "q2", "q3"], [["a", "b", "c"], ["x", "y"], ["same"]],
                              [[3, 9, 1], [5, 5.5], [1]], margin=2, stats=stats)
    assert pairs == [{"prompt": "q1", "chosen": "b", "rejected": "c", "chosen_score": 9.0, "rejected_score": 1.0}]
    assert stats == Counter({"prompts": 3, "pairs": 1, "no pair: scores within margin": 1,
                             "no pair: fewer than 2 distinct samples": 1})
    assert pairs_from_scores(["q"], [["a", "b"]], [[4, 4]]) == []  # a tie is no preference
    assert len(pairs_from_scores(["q"], [["a", "b", "c", "d"]], [[4, 3, 2, 1]], pairs_per_prompt=2)) == 2
    with pytest.raises(ValueError, match="2 prompts, 1 sample lists"):
        pairs_from_scores(["q", "r"], [["a"]], [[1]])


def test_persona_pairs():
    persona = "You are a pirate."
    prompts = [[msg("system", persona), USER], [USER], "Hello"]
    stats = Counter()
    pairs = persona_pairs(prompts, ["Arr, blue it be.", "It is blue.", None], ["It is blue.", "It is blue.", "Hi"],
                          persona=persona, stats=stats)
    assert pairs == [{"prompt": [USER], "chosen": [msg("assistant", "Arr, blue it be.")], "rejected": [BLUE]}]
    assert stats == Counter({"prompts": 3, "pairs": 1, "no pair: identical replies": 1, "no pair: empty reply": 1})
    assert persona_pairs(["Hi"], ["Ahoy!"], ["Hello."]) == [{"prompt": "Hi", "chosen": "Ahoy!", "rejected": "Hello."}]
