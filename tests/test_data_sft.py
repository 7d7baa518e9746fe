"""SFT data: formats and validation, loaders, converters, loss masks (vs transformers on real models'
templates), truncation counts, inspect-data, and the sft recipe reading them."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

from alignlab.cli import build_parser
from alignlab.data import sft
from alignlab.data.converters import (
    alpaca_to_messages,
    alpaca_to_prompt_completion,
    gsm8k_final_answer,
    gsm8k_reply,
    gsm8k_to_messages,
    parse_think,
    sharegpt_to_messages,
    strip_calculator,
    think_format,
)
from alignlab.data.errors import DataError, DataNotFoundError, MissingDependencyError
from alignlab.data.loaders import parse_hf_records, read_rows
from alignlab.data.sft import (
    detect_format,
    encode_record,
    inspect_example,
    load_sft_data,
    prompt_ids,
    split_replies,
    tokenize_records,
    validate_record,
)
from alignlab.errors import UserError
from alignlab.objectives import IGNORE_INDEX
from alignlab.text import ChatTemplateError, encode_chat, render_chat, train_bpe

from .hf_models import require

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
ALPACA = SHARED / "instructions" / "alpaca_en_demo.json"
GSM8K = SHARED / "gsm8k" / "train.jsonl"

SPECIALS = [
    "<|endoftext|>", "<|pad|>", "<|begin_of_text|>", "<|im_start|>", "<|im_end|>",  # ChatML, Qwen
    "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",  # Llama 3
    "<|system|>", "<|user|>", "<|assistant|>", "<|end|>",  # Phi-3
    "<start_of_turn>", "<end_of_turn>", "<think>", "</think>",  # Gemma, Qwen3
]  # fmt: skip
CORPUS = "".join(
    f"<|im_start|>user\nWhat is the weather in city {i}?<|im_end|>\n<|im_start|>assistant\n"
    f"It is {i % 30} degrees and sunny, mostly.<|im_end|>\n" for i in range(40)
)
SYSTEM = {"role": "system", "content": "Be brief."}
USER = {"role": "user", "content": "Weather in Paris?"}
REPLY = {"role": "assistant", "content": "Sunny, 21 degrees."}
USER2 = {"role": "user", "content": "And tomorrow?"}
REPLY2 = {"role": "assistant", "content": "Rain, 12 degrees."}
CHAT = [SYSTEM, USER, REPLY, USER2, REPLY2]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    tok = train_bpe(CORPUS, 420, special_tokens=SPECIALS, bos_token="<|begin_of_text|>", chat_template="chatml",
                    progress=False)
    d = tmp_path_factory.mktemp("tok")
    tok.save(d)
    return tok, d


@pytest.fixture(scope="module")
def tok(tok_dir):
    return tok_dir[0]


def trained_runs(tok, ids, mask) -> list[str]:
    """The trained stretches of a token sequence, decoded: ["reply<|im_end|>\\n", ...]."""
    runs, cur = [], []
    for i, m in zip(ids, mask, strict=True):
        if m:
            cur.append(i)
        elif cur:
            runs, cur = runs + [tok.decode(cur)], []
    return runs + ([tok.decode(cur)] if cur else [])


def label_runs(tok, example) -> list[str]:
    mask = [0] + [int(y != IGNORE_INDEX) for y in example.labels[:-1]]
    return trained_runs(tok, example.input_ids, mask)


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# --- formats and validation -----------------------------------------------------------------------


def test_formats_are_detected():
    assert detect_format({"text": "a"}) == "text"
    assert detect_format({"messages": [USER, REPLY], "tools": None, "id": 3}) == "messages"
    assert detect_format({"prompt": "Q", "completion": "A"}) == "prompt_completion"
    assert detect_format({"prompt": [USER], "completion": [REPLY]}) == "conversational_prompt_completion"
    assert sft.IGNORE_INDEX == IGNORE_INDEX  # the labels data/sft.py writes are the ones the losses ignore


@pytest.mark.parametrize("record, match", [
    ({"prompt": "Q"}, "prompt-only data"),
    ({"prompt": "Q", "chosen": "A", "rejected": "B"}, "preference pair"),
    ({"text": "a", "messages": [USER]}, "both 'text' and 'messages'"),
    ({"prompt": "Q", "completion": [REPLY]}, "both be strings or both be message lists"),
    ({"instruction": "Do", "input": "", "output": "Done"}, r"looks like alpaca data: convert it \(convert=alpaca\)"),
    ({"question": "1+1?", "answer": "#### 2"}, "convert=gsm8k"),
    ({"foo": 1}, "no SFT fields"),
    (["not", "a", "dict"], "expected an object"),
])  # fmt: skip
def test_wrong_formats_are_named(record, match):
    with pytest.raises(DataError, match=match):
        validate_record(record, "x.jsonl:3")


@pytest.mark.parametrize("record, message", [
    ({"messages": [USER, {"role": "bot", "content": "hi"}]},
     "field 'messages'[1].role: must be one of system/user/assistant/tool, got 'bot'"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
     "field 'messages'[0].content: must be a string, got list (content-part lists"),
    ({"messages": [{"role": "user"}]}, "field 'messages'[0].content: missing"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": [{"function": {"name": "f"}}]}]},
     "field 'messages'[0].tool_calls: only assistant messages call tools"),
    ({"messages": [USER, {"role": "assistant", "tool_calls": [{"function": {"arguments": {}}}]}]},
     "field 'messages'[1].tool_calls[0]: must be"),
    ({"messages": []}, "field 'messages': must be a non-empty list"),
    ({"prompt": [USER], "completion": [{"role": "assistant", "content": 3}]},
     "field 'completion'[0].content: must be a string, got int"),
    ({"text": ""}, "field 'text': must be a non-empty string"),
    ({"prompt": "Q", "completion": "A", "tools": []}, "field 'tools': only conversational records"),
    ({"messages": [USER, REPLY], "tools": [{"type": "function", "function": {"description": "no name"}}]},
     "field 'tools'[0].function.name: must be a non-empty string"),
])  # fmt: skip
def test_validation_names_field_and_reason(record, message):
    with pytest.raises(DataError) as e:
        validate_record(record, "data.jsonl:17")
    assert str(e.value).startswith(f"data.jsonl:17: {message}"), str(e.value)


def test_valid_records_pass():
    call = {"role": "assistant", "content": None,
            "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": {"a": 1}}}]}
    tools = [{"type": "function", "function": {"name": "add", "parameters": {}}}, {"name": "bare", "parameters": {}}]
    record = {"messages": [USER, call, {"role": "tool", "content": "2"}, REPLY], "tools": tools}
    assert validate_record(record) == "messages"
    # a conversation with no assistant message is valid; it has no target and is dropped (and counted) later
    assert validate_record({"messages": [USER]}) == "messages"


def test_load_names_file_line_field(tmp_path):
    records = [{"messages": [USER, REPLY]}] * 16 + [{"messages": [USER, REPLY, {"role": "bot", "content": "x"}]}]
    path = write_jsonl(tmp_path / "data.jsonl", records)
    with pytest.raises(DataError) as e:
        load_sft_data(str(path))
    assert str(e.value) == (f"{path}:17: field 'messages'[2].role: must be one of system/user/assistant/tool, "
                            "got 'bot'")
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{"text": "b"\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        load_sft_data(str(tmp_path / "bad.jsonl"))


# --- loaders --------------------------------------------------------------------------------------


def test_jsonl_json_and_gzip(tmp_path):
    recs = [{"text": "one"}, {"text": "two"}]
    (tmp_path / "a.jsonl").write_text('{"text": "one"}\n\n{"text": "two"}\n')
    assert [r.where for r in read_rows(tmp_path / "a.jsonl")] == [f"{tmp_path}/a.jsonl:1", f"{tmp_path}/a.jsonl:3"]
    (tmp_path / "b.json").write_text(json.dumps(recs, indent=2))  # pretty-printed: items start on lines 2 and 5
    rows = read_rows(tmp_path / "b.json")
    assert [r.record for r in rows] == recs
    assert [r.where for r in rows] == [f"{tmp_path}/b.json:2 (row 0)", f"{tmp_path}/b.json:5 (row 1)"]
    (tmp_path / "c.json").write_text(json.dumps({"data": recs}))
    assert [r.where.split(" ", 1)[1] for r in read_rows(tmp_path / "c.json")] == ["data[0]", "data[1]"]
    (tmp_path / "d.json").write_text('{"text": "one"}\n{"text": "two"}\n')  # JSON Lines named .json (BFCL)
    assert [r.record for r in read_rows(tmp_path / "d.json")] == recs
    (tmp_path / "e.jsonl.gz").write_bytes(gzip.compress(b'{"text": "one"}\n'))
    assert read_rows(tmp_path / "e.jsonl.gz")[0].record == recs[0]
    (tmp_path / "f.json").write_text('{"rows": []}')
    with pytest.raises(DataError, match=r"expected a list of records or \{\"data\": \[...\]\}"):
        read_rows(tmp_path / "f.json")
    (tmp_path / "g.jsonl").write_text("[1, 2]\n")
    with pytest.raises(DataError, match="g.jsonl:1: expected an object"):
        read_rows(tmp_path / "g.jsonl")
    with pytest.raises(DataNotFoundError, match="no such data file"):
        read_rows(tmp_path / "missing.jsonl")
    (tmp_path / "h.txt").write_text("x")
    with pytest.raises(DataError, match="unknown data file type"):
        read_rows(tmp_path / "h.txt")


def test_csv_rows_lines_and_json_cells(tmp_path):
    path = tmp_path / "d.csv"
    messages = json.dumps([USER, REPLY])
    path.write_text(
        "prompt,completion,messages\n"
        'Q1,"two\nlines",\n'  # a quoted cell spanning two lines
        f',,"{messages.replace(chr(34), chr(34) * 2)}"\n'
    )
    rows = read_rows(path)
    assert [r.where for r in rows] == [f"{path}:2", f"{path}:4"]
    assert rows[0].record == {"prompt": "Q1", "completion": "two\nlines", "messages": None}  # empty = missing
    assert rows[1].record["messages"] == [USER, REPLY]
    path.write_text("text,tools\nhello,\n")
    assert read_rows(path)[0].record == {"text": "hello", "tools": None}  # an empty tools cell: no tools
    path.write_text('messages\n"[{""role"": ""user"""\n')
    with pytest.raises(DataError, match=r"d.csv:2: field 'messages': not valid JSON"):
        read_rows(path)


def test_csv_prompt_completion_trains(tmp_path, tok):
    path = tmp_path / "pc.csv"
    path.write_text("prompt,completion\nQ: 2+2?\\nA:, 4\n")
    records, where = load_sft_data(str(path))
    assert detect_format(records[0]) == "prompt_completion" and where == [f"{path}:2"]


def test_parquet(tmp_path):
    pa = require("pyarrow")
    import pyarrow.parquet as pq

    records = [{"messages": [USER, REPLY]}, {"messages": [USER, {"role": "assistant", "content": "ok"}]}]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "d.parquet")
    rows = read_rows(tmp_path / "d.parquet")
    assert [r.record for r in rows] == records and rows[1].where.endswith("d.parquet: row 1")


def test_parquet_without_pyarrow_names_the_extra(tmp_path, monkeypatch):
    (tmp_path / "d.parquet").write_bytes(b"PAR1")
    for name in ("pyarrow", "pyarrow.parquet", "pandas"):
        monkeypatch.setitem(sys.modules, name, None)  # import -> ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install pyarrow.*alignlab\[hf\]"):
        read_rows(tmp_path / "d.parquet")


def test_hf_datasets(monkeypatch):
    datasets = require("datasets")
    calls = []

    def fake_load(name, config, split):
        calls.append((name, config, split))
        return datasets.Dataset.from_list([{"question": "1+1?", "answer": "1+1=<<1+1=2>>2\n#### 2"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    records, where = load_sft_data("hf:openai/gsm8k:main/test", convert="gsm8k_think")
    assert calls == [("openai/gsm8k", "main", "test")] and where == ["hf:openai/gsm8k:main/test: row 0"]
    assert records[0]["messages"][1]["content"] == "<think>1+1=2</think>\nAnswer: 2"
    assert parse_hf_records("hf:owner/name:test") == ("owner/name", None, "test")
    assert parse_hf_records("hf:name") == ("name", None, "train")
    assert parse_hf_records("hf:name:cfg") == ("name", "cfg", "train")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(MissingDependencyError, match=r"alignlab\[hf\]"):
        read_rows("hf:name")


# --- converters -----------------------------------------------------------------------------------


def test_alpaca():
    record = {"instruction": "Translate.", "input": "Bonjour", "output": "Hello"}
    assert alpaca_to_messages(record)["messages"] == [
        {"role": "user", "content": "Translate.\n\nBonjour"}, {"role": "assistant", "content": "Hello"}]
    no_input = alpaca_to_messages({**record, "input": ""}, system="Be kind.")["messages"]
    assert no_input[0] == {"role": "system", "content": "Be kind."} and no_input[1]["content"] == "Translate."
    pc = alpaca_to_prompt_completion(record)
    assert pc["prompt"].endswith("### Input:\nBonjour\n\n### Response:\n") and pc["completion"] == "Hello"
    assert "### Input" not in alpaca_to_prompt_completion({**record, "input": ""})["prompt"]
    conv = alpaca_to_prompt_completion(record, conversational=True)
    assert detect_format(conv) == "conversational_prompt_completion"
    history = alpaca_to_messages({**record, "history": [["Hi", "Hello!"]]})["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    with pytest.raises(DataError, match="field 'output': must be a string, missing"):
        alpaca_to_messages({"instruction": "x"})


def test_gsm8k_and_think():
    answer = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nIn all 48+24 = <<48+24=72>>72 clips.\n#### 1,072"
    record = {"question": "Natalia sold 48 clips...", "answer": answer}
    assert gsm8k_final_answer(record["answer"]) == "1072"
    assert strip_calculator("48/2 = <<48/2=24>>24") == "48/2 = 24"
    steps = "Natalia sold 48/2 = 24 clips in May.\nIn all 48+24 = 72 clips."
    assert gsm8k_reply(record) == f"<think>{steps}</think>\nAnswer: 1072"
    assert gsm8k_reply(record, think=False) == f"{steps}\n#### 1072"
    assert "<<48/2=24>>" in gsm8k_reply(record, think=False, calculator="keep")
    messages = gsm8k_to_messages(record, system="Solve.")["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert think_format("8 + 9 = 17", 17) == "<think>8 + 9 = 17</think>\nAnswer: 17"
    assert parse_think("<think>a\nb</think>\nAnswer: 3") == ("a\nb", "Answer: 3")
    assert parse_think("Answer: 3") == (None, "Answer: 3")
    with pytest.raises(DataError, match="no final '#### N' line"):
        gsm8k_reply({"question": "q", "answer": "42"})
    with pytest.raises(ValueError, match="calculator="):
        gsm8k_reply(record, calculator="maybe")


def test_sharegpt():
    record = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    assert sharegpt_to_messages(record)["messages"] == [{"role": "user", "content": "hi"},
                                                        {"role": "assistant", "content": "hello"}]
    with pytest.raises(DataError, match=r"field 'conversations'\[0\].from: must be one of"):
        sharegpt_to_messages({"conversations": [{"from": "bot", "value": "x"}]})


@pytest.mark.shared_data(ALPACA)
def test_real_alpaca_sample(tok):
    records, where = load_sft_data(str(ALPACA), convert="alpaca")
    assert len(records) == 999 and where[0].endswith("alpaca_en_demo.json:2 (row 0)")
    with_input = sum("\n\n" in r["messages"][0]["content"] for r in records)
    assert with_input >= 412  # the sample's 412 rows with an input (some instructions hold blank lines too)
    examples, counts, _ = tokenize_records(tok, records[:20], max_len=None, where=where[:20])
    assert counts == {"kept": 20, "truncated": 0, "dropped": 0}
    assert label_runs(tok, examples[0]) == [records[0]["messages"][1]["content"] + "<|im_end|>\n"]
    with pytest.raises(DataError, match=r"alpaca_en_demo.json:2 \(row 0\): no SFT fields.*convert=alpaca"):
        load_sft_data(str(ALPACA))


@pytest.mark.shared_data(GSM8K)
def test_real_gsm8k():
    import re

    think, _ = load_sft_data(str(GSM8K), convert="gsm8k_think")
    plain, where = load_sft_data(str(GSM8K), convert="gsm8k")
    assert len(think) == len(plain) == 7473 and where[-1].endswith("train.jsonl:7473")
    for r in think:
        reasoning, rest = parse_think(r["messages"][1]["content"])
        assert reasoning is not None and "<<" not in reasoning and re.fullmatch(r"Answer: -?\d+(\.\d+)?", rest)
    assert plain[0]["messages"][1]["content"].endswith("\n#### 72")


# --- masks: text, prompt-completion, conversations ------------------------------------------------


def test_text_trains_every_token_and_eos(tok):
    ids, mask = encode_record(tok, {"text": "It is sunny."})
    assert ids == tok.encode("It is sunny.", add_special_tokens=False) + [tok.eos_token_id] and all(mask)
    ids, _ = encode_record(tok, {"text": "It is sunny.<|endoftext|>"})
    assert ids.count(tok.eos_token_id) == 1  # not doubled


def test_prompt_completion_trains_the_completion_and_eos(tok):
    record = {"prompt": "Weather in Paris?\n", "completion": "Sunny, 21 degrees."}
    ids, mask = encode_record(tok, record)
    prompt = tok.encode(record["prompt"], add_special_tokens=False)
    assert ids[:len(prompt)] == prompt  # the prompt tokenized on its own, as at inference
    assert trained_runs(tok, ids, mask) == ["Sunny, 21 degrees.<|endoftext|>"]
    assert prompt_ids(tok, record) == prompt


def test_conversational_prompt_completion_trains_the_completion_only(tok):
    record = {"prompt": [SYSTEM, USER, REPLY, USER2], "completion": [REPLY2]}
    ids, mask = encode_record(tok, record)
    assert trained_runs(tok, ids, mask) == ["Rain, 12 degrees.<|im_end|>\n"]
    assert tok.decode(prompt_ids(tok, record)).endswith("And tomorrow?<|im_end|>\n<|im_start|>assistant\n")


def test_conversation_trains_every_reply_and_its_end_of_turn(tok):
    ids, mask = encode_record(tok, {"messages": CHAT})
    assert trained_runs(tok, ids, mask) == ["Sunny, 21 degrees.<|im_end|>\n", "Rain, 12 degrees.<|im_end|>\n"]
    assert (ids, mask) == tuple(render_chat(tok, CHAT))  # the same as alignlab.text.render_chat here


def test_template_without_end_of_turn_gets_eos(tok):
    plain = ("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
             "{% if add_generation_prompt %}assistant: {% endif %}")
    ids, mask = encode_chat(tok, CHAT, chat_template=plain)
    assert trained_runs(tok, ids, mask) == ["Sunny, 21 degrees.\n<|endoftext|>", "Rain, 12 degrees.\n<|endoftext|>"]
    # a template that writes the end of a turn only when the next one starts: that token is trained
    lazy_end = ("{% for m in messages %}{% if not loop.first %}<|end|>{% endif %}<|{{ m.role }}|>{{ m.content }}"
                "{% endfor %}{% if add_generation_prompt %}<|end|><|assistant|>{% endif %}")
    ids, mask = encode_chat(tok, CHAT, chat_template=lazy_end)
    assert trained_runs(tok, ids, mask) == ["Sunny, 21 degrees.<|end|>", "Rain, 12 degrees.<|endoftext|>"]


# --- templates that can't be split turn by turn ---------------------------------------------------


def test_template_rewriting_earlier_turns_is_refused(tok):
    rewrite = ("{% for m in messages %}<|im_start|>{{ m.role }}\n"
               "{{ m.content if loop.last or m.role != 'assistant' else '(earlier reply)' }}<|im_end|>\n{% endfor %}"
               "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    with pytest.raises(ChatTemplateError, match=r"not prefix-stable: messages\[2\] \(assistant\) renders as") as e:
        encode_chat(tok, CHAT, chat_template=rewrite)
    assert "Sunny" in str(e.value) and "(earlier reply)" in str(e.value)
    assert isinstance(e.value, ValueError) and isinstance(e.value, UserError)  # the user's template: no traceback
    with pytest.raises(ValueError, match="prefix-stable"):  # text.render_chat refuses it too
        render_chat(tok, CHAT, chat_template=rewrite)
    encode_chat(tok, CHAT[:3], chat_template=rewrite)  # one reply: nothing is rewritten


def test_generation_prompt_unlike_the_reply_is_refused(tok):
    prefill = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
               "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}")
    with pytest.raises(ChatTemplateError, match=r"the prompt before messages\[2\] .* is not how the whole"):
        encode_chat(tok, CHAT, chat_template=prefill)


def test_user_turn_inside_the_reply_is_refused(tok, tmp_path):
    # writes each user turn only together with the reply and ignores add_generation_prompt: the prefix
    # check passes (the prompt renders as ""), but the user's text would land in the trained span
    pairs = ("{% for m in messages %}{% if m.role == 'assistant' %}<|im_start|>user\n"
             "{{ messages[loop.index0 - 1].content }}<|im_end|>\n<|im_start|>assistant\n{{ m.content }}<|im_end|>\n"
             "{% endif %}{% endfor %}")
    with pytest.raises(ChatTemplateError, match=r"writes messages\[0\] \(user\) inside the reply of messages\[1\]"):
        encode_chat(tok, [USER, REPLY], chat_template=pairs)
    # through tokenize_records the error starts with where the record is
    with pytest.raises(ChatTemplateError, match=r"^chats.jsonl:4: chat template writes messages\[0\]"):
        tokenize_records(tok, [{"messages": [USER, REPLY]}], 64, where=["chats.jsonl:4"], chat_template=pairs)


# --- truncation and counts ------------------------------------------------------------------------


def test_truncated_last_reply_keeps_its_tokens_and_invents_no_end(tok):
    ids, mask = encode_record(tok, {"messages": CHAT})
    last = len(ids) - 1 - mask[::-1].index(0)  # the last untrained token; the reply follows
    start2 = last + 1
    cut = start2 + 3  # three tokens of the second reply survive
    examples, counts, dropped = tokenize_records(tok, [{"messages": CHAT}], max_len=cut)
    (ex,) = examples
    assert counts == {"kept": 1, "truncated": 1, "dropped": 0} and dropped == [] and ex.truncated
    assert ex.input_ids == ids[:cut] and ex.length == len(ids)
    runs = label_runs(tok, ex)
    assert runs[0] == "Sunny, 21 degrees.<|im_end|>\n" and runs[1] == tok.decode(ids[start2:cut])
    assert tok.token_to_id("<|im_end|>") not in ex.input_ids[start2:]  # the missing end of turn is not invented
    assert ex.labels[-1] == IGNORE_INDEX and ex.labels[-2] == ids[cut - 1]  # the last kept token is a target


def test_dropped_and_keep_end_are_counted(tok):
    records = [{"messages": CHAT}, {"text": "It is sunny and warm today, mostly. " * 9}]
    prompt_len = len(prompt_ids(tok, records[0]))
    examples, counts, dropped = tokenize_records(tok, records, max_len=prompt_len - 2, where=["a:1", "a:2"])
    assert counts == {"kept": 1, "truncated": 2, "dropped": 1} and dropped == ["a:1"]
    (ex,), counts, _ = tokenize_records(tok, records[:1], max_len=8, truncation="keep_end")
    full, mask = encode_record(tok, records[0])
    assert ex.input_ids == full[-8:] and counts["truncated"] == 1
    assert label_runs(tok, ex)[-1].endswith("<|im_end|>\n")
    with pytest.raises(ValueError, match="truncation='middle'"):
        tokenize_records(tok, records, 8, truncation="middle")


def test_validation_runs_on_records_given_directly(tok):
    with pytest.raises(DataError, match="^record 1: field 'messages'"):
        tokenize_records(tok, [{"messages": CHAT}, {"messages": "hi"}], 64)


# --- real models' templates vs transformers' assistant masks --------------------------------------


def _trl_template(name: str) -> str:
    trl = require("trl")
    path = Path(trl.__file__).parent / "chat_templates" / f"{name}.jinja"
    assert path.exists(), f"trl is installed but has no {path.name}: the oracle moved"
    return path.read_text()


@pytest.fixture(scope="module")
def auto(tok_dir):
    transformers = require("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(tok_dir[1]))


# (TRL's training variant with {% generation %} markers, the model's own template without them)
REAL = ["llama3", "qwen2_5", "qwen3", "qwen3_instruct_2507", "phi3", "phi3_5", "gemma3", "lfm2"]


@pytest.mark.parametrize("name", REAL)
def test_masks_match_transformers_on_real_templates(tok, auto, name):
    training, original = _trl_template(f"{name}_training"), _trl_template(name)
    for chat in (CHAT, CHAT[1:3]):
        out = auto.apply_chat_template(chat, chat_template=training, return_dict=True,
                                       return_assistant_tokens_mask=True)
        expected = trained_runs(tok, out["input_ids"], out["assistant_masks"])
        if name == "qwen2_5":  # its markers open before the "\n" that the generation prompt already holds
            assert all(r.startswith("\n") for r in expected)
            expected = [r[1:] for r in expected]
        for template in (training, original):  # with the markers, and the stock template without them
            if name == "qwen3" and template is original and len(chat) > 2:
                continue  # the stock Qwen3 template rewrites past replies: see the next test
            ids, mask = encode_chat(tok, chat, chat_template=template)
            assert ids == out["input_ids"], name
            assert trained_runs(tok, ids, mask) == expected, name


def test_stock_templates_give_transformers_an_all_zero_mask_but_not_us(tok, auto):
    # TRL pitfall: assistant_only_loss on a template without {% generation %} trains nothing
    original = _trl_template("llama3")
    out = auto.apply_chat_template(CHAT, chat_template=original, return_dict=True, return_assistant_tokens_mask=True)
    assert sum(out["assistant_masks"]) == 0
    ids, mask = encode_chat(tok, CHAT, chat_template=original)
    assert trained_runs(tok, ids, mask) == ["Sunny, 21 degrees.<|eot_id|>", "Rain, 12 degrees.<|eot_id|>"]


def test_stock_qwen3_multi_turn_is_refused_clearly(tok):
    with pytest.raises(ChatTemplateError) as e:
        encode_chat(tok, CHAT, chat_template=_trl_template("qwen3"))
    message = str(e.value)
    assert "not prefix-stable: messages[2] (assistant)" in message and "<think>" in message and "Qwen3" in message
    assert "_training.jinja" in message  # and what to do about it


def test_split_replies_trains_qwen3_as_it_generates(tok):
    qwen3 = _trl_template("qwen3")
    chat = [SYSTEM, USER, {**REPLY, "reasoning_content": "Look it up."}, USER2, REPLY2]
    records = split_replies({"messages": chat, "tools": None})
    assert [len(r["prompt"]) for r in records] == [2, 4] and all(len(r["completion"]) == 1 for r in records)
    examples, counts, _ = tokenize_records(tok, records, None, chat_template=qwen3)
    assert counts == {"kept": 2, "truncated": 0, "dropped": 0}
    first, second = (label_runs(tok, e) for e in examples)
    assert first == ["<think>\nLook it up.\n</think>\n\nSunny, 21 degrees.<|im_end|>\n"]
    assert second == ["<think>\n\n</think>\n\nRain, 12 degrees.<|im_end|>\n"]
    history = tok.decode(examples[1].input_ids)
    assert "Look it up." not in history  # the past reply as Qwen3 shows it at inference: without its reasoning
    with pytest.raises(DataError, match="opens the conversation"):
        split_replies({"messages": [REPLY, USER]})


def test_phi3_closing_eos_is_trained_only_at_the_end(tok):
    # Phi-3 appends eos after a conversation that ends on a reply, not between turns
    ids, mask = encode_chat(tok, CHAT, chat_template=_trl_template("phi3"))
    assert trained_runs(tok, ids, mask) == ["Sunny, 21 degrees.<|end|>\n", "Rain, 12 degrees.<|end|>\n<|endoftext|>"]


# --- inspect-data ---------------------------------------------------------------------------------


def test_inspect_example(tok):
    plain = inspect_example(tok, {"messages": CHAT}, color=False)
    assert "[[Sunny, 21 degrees.<|im_end|>\u21b5\n]]<|im_start|>user" in plain
    assert plain.splitlines()[-1].startswith("messages: ") and "truncated: no" in plain
    colored = inspect_example(tok, {"messages": CHAT})
    assert "\x1b[30;42mSunny, 21 degrees.<|im_end|>\u21b5\x1b[0m" in colored and "\x1b[2m" in colored
    n_ids = len(encode_record(tok, {"messages": CHAT})[0])
    cut = inspect_example(tok, {"messages": CHAT}, color=False, max_len=10)
    assert f"truncated: yes ({n_ids} tokens, cut to 10, keep_start)" in cut and "dropped: no target token left" in cut


def test_inspect_data_command(tok_dir, tmp_path, capsys):
    _, d = tok_dir
    data = write_jsonl(tmp_path / "chats.jsonl", [{"messages": CHAT}, {"prompt": "Q: 2+2?\nA:", "completion": " 4"}])
    parser = build_parser()
    args = parser.parse_args(["inspect-data", "--data", str(data), "--tokenizer", str(d), "--index", "1",
                              "--no-color"])
    args.fn(args)
    out = capsys.readouterr().out
    assert f"{data}:2: record 1 of 2, prompt_completion" in out and "[[ 4<|endoftext|>]]" in out
    args = parser.parse_args(["inspect-data", "--data", str(data), "--tokenizer", str(d), "--index", "5"])
    with pytest.raises(DataError, match="--index 5: .* has 2 records"):
        args.fn(args)
    with pytest.raises(SystemExit):  # --model or --tokenizer is required
        parser.parse_args(["inspect-data", "--data", str(data)])


# --- the sft recipe on other formats --------------------------------------------------------------


def test_recipe_reads_converted_json(tok, tmp_path):
    torch = require("torch")
    from alignlab.model import CausalLM, preset
    from alignlab.model.hf import save_model
    from alignlab.recipes.sft import SFTConfig, run
    from alignlab.train.trainer import TrainConfig

    torch.manual_seed(0)
    base = CausalLM(preset("llama", vocab_size=tok.vocab_size, dim=16, n_layers=1, n_heads=2, max_seq_len=64,
                           eos_token_id=tok.eos_token_id))
    save_model(base, tmp_path / "base", tokenizer=tok)
    rows = [{"instruction": f"Weather in city {i}?", "input": "", "output": f"It is {i} degrees."} for i in range(6)]
    rows[5]["instruction"] = "Describe the weather in every city of the world in great detail, please. " * 3
    (tmp_path / "alpaca.json").write_text(json.dumps(rows))
    cfg = SFTConfig(out_dir=str(tmp_path / "sft"), model=str(tmp_path / "base"), data=str(tmp_path / "alpaca.json"),
                    convert="alpaca", max_len=40, batch_size=2, sample_prompts=0,
                    train=TrainConfig(max_steps=2, lr=1e-3, warmup_steps=0, eval_every=0, save_every=0,
                                      peak_flops=1e11, plot=False))
    result = run(cfg)
    data = json.loads((tmp_path / "sft" / "result.json").read_text())["data"]
    assert result["status"] == "finished" and data["formats"] == {"messages": 6}
    assert data["train"] == {"kept": 5, "truncated": 1, "dropped": 1}
    assert data["dropped"] == [f"{tmp_path / 'alpaca.json'}:1 (row 5)"]


def test_tinyworld_sources_load_the_world_on_the_fly():
    from alignlab.data.sft import load_sft_data
    from alignlab.data.world import TinyWorld

    records, where = load_sft_data("tinyworld:sft:test@3")
    assert records == TinyWorld(seed=3).sft_conversations("test") and where[0] == "tinyworld:sft:test@3: record 0"
    with pytest.raises(ValueError, match="tinyworld:KIND"):
        load_sft_data("tinyworld:preferences")
