"""HFTokenizer against transformers' AutoTokenizer on tokenizer directories laid out like real
models (Qwen-, Llama- and BERT-like configs), plus load_tokenizer's dispatch."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from alignlab.errors import CheckpointError, UserError
from alignlab.text import CharTokenizer, HFTokenizer, get_chat_template, load_tokenizer, train_bpe

from .hf_models import require

transformers = require("transformers")

CORPUS = "".join(
    f"User {i} asks: what is {i} + {i * 3}? The answer is {i * 4}. Don't panic, it's fine!\n"
    f"Größe, café, 日本語のテキスト {i}. \t  indent\n"
    for i in range(80)
)
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]
SAMPLES = [
    "",
    "hello world",
    "User 3 asks: what is 3 + 9?",
    "  leading spaces and trailing  ",
    "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhey<|eot_id|>",
    "日本語 and émojis 🤖🤖 <pad> [MASK]",
    "<|endoftext|><|endoftext|>x",
]


def bpe_json(specials):
    """tokenizer.json text of a small byte-level BPE trained here (no model download possible)."""
    tok = train_bpe(
        CORPUS, 300 + len(specials), special_tokens=specials, eos_token=None, pad_token=None, progress=False
    )
    return _to_rust(tok)


def _to_rust(tok):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        tok.save(d)
        return RustTokenizer.from_file(f"{d}/tokenizer.json")


def make_dir(path, rust, config, **files):
    path.mkdir(parents=True, exist_ok=True)
    rust.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    for name, content in files.items():
        (path / name.replace("__", ".")).write_text(
            content if isinstance(content, str) else json.dumps(content)
        )
    return path


def assert_same(directory, samples=SAMPLES):
    """Our HFTokenizer and transformers' AutoTokenizer agree on everything we use."""
    ours = load_tokenizer(directory)
    auto = transformers.AutoTokenizer.from_pretrained(str(directory))
    assert isinstance(ours, HFTokenizer)
    assert ours.vocab_size == len(auto)
    for name in (
        "bos_token",
        "eos_token",
        "pad_token",
        "unk_token",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
    ):
        assert getattr(ours, name) == getattr(auto, name), name
    for s in samples:
        for add in (True, False):
            ids = auto.encode(s, add_special_tokens=add)
            assert ours.encode(s, add_special_tokens=add) == ids, (s, add)
            for skip in (True, False):
                assert ours.decode(ids, skip_special_tokens=skip) == auto.decode(
                    ids, skip_special_tokens=skip
                )
    return ours, auto


def test_qwen_like(tmp_path):
    rust = bpe_json(QWEN_SPECIALS)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",  # not Qwen2Tokenizer: it rebuilds its own pipeline
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "add_bos_token": False,
        "model_max_length": 32768,
        "chat_template": get_chat_template("chatml"),
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "errors": "replace",
    }
    im_end, eot = rust.token_to_id("<|im_end|>"), rust.token_to_id("<|endoftext|>")
    d = make_dir(tmp_path, rust, config, generation_config__json={"eos_token_id": [im_end, eot]})
    ours, auto = assert_same(d)
    assert ours.bos_token_id is None and ours.model_max_length == auto.model_max_length == 32768
    assert ours.eos_token_ids == [im_end, eot]
    messages = [{"role": "user", "content": "hi"}]
    assert ours.apply_chat_template(messages, add_generation_prompt=True) == auto.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    )
    assert ours.apply_chat_template(messages, tokenize=True) == auto.apply_chat_template(
        messages, tokenize=True, return_dict=False
    )


def llama_dir(path, **config):
    # Llama 3's tokenizer.json adds <|begin_of_text|> in its post-processor
    rust = bpe_json(LLAMA_SPECIALS)
    bos_id = rust.token_to_id("<|begin_of_text|>")
    rust.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
        special_tokens=[("<|begin_of_text|>", bos_id)],
    )  # fmt: skip
    config = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", **config}
    return make_dir(path, rust, {"tokenizer_class": "PreTrainedTokenizerFast", **config})


@pytest.mark.parametrize(
    "config", [{}, {"add_bos_token": False}, {"add_bos_token": True, "add_eos_token": True}]
)
def test_llama_like_post_processor_decides(tmp_path, config):
    # transformers 5 ignores add_bos_token / add_eos_token in the config when tokenizer.json exists
    ours, _ = assert_same(llama_dir(tmp_path, **config))
    assert ours.encode("hello")[0] == ours.bos_token_id and ours.encode("hello")[-1] != ours.eos_token_id
    assert ours.add_bos_token and not ours.add_eos_token
    assert ours.eos_token_ids == [ours.token_to_id("<|eot_id|>"), ours.token_to_id("<|end_of_text|>")]


@pytest.mark.parametrize("add_bos, add_eos", [(False, False), (True, True), (False, True), (None, True)])
def test_bos_eos_overrides_like_transformers_setters(tmp_path, add_bos, add_eos):
    d = llama_dir(tmp_path)
    ours = HFTokenizer.load(d, add_bos_token=add_bos, add_eos_token=add_eos)
    auto = transformers.AutoTokenizer.from_pretrained(str(d))
    auto.add_bos_token, auto.add_eos_token = bool(add_bos), bool(add_eos)
    for s in SAMPLES:
        assert ours.encode(s) == auto.encode(s)
        assert ours.encode(s, add_special_tokens=False) == auto.encode(s, add_special_tokens=False)
    assert (ours.add_bos_token, ours.add_eos_token) == (bool(add_bos), bool(add_eos))
    # saved and loaded again, the choice sticks (it is in tokenizer.json's post-processor)
    ours.save(tmp_path / "saved")
    assert_same(tmp_path / "saved")
    assert load_tokenizer(tmp_path / "saved").encode("hi") == ours.encode("hi")


def test_special_tokens_missing_from_vocab_are_appended(tmp_path):
    rust = bpe_json(QWEN_SPECIALS)
    n = rust.get_vocab_size(with_added_tokens=True)
    config = {"eos_token": "<|endoftext|>", "pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>"}
    ours, auto = assert_same(make_dir(tmp_path, rust, config), SAMPLES + ["<s>x<pad><unk>"])
    assert ours.vocab_size == n + 3
    assert {ours.pad_token_id, ours.unk_token_id, ours.bos_token_id} == {n, n + 1, n + 2}


def test_bert_like_wordpiece_with_cleanup(tmp_path):
    # special tokens that are plain vocab entries become special added tokens; decode cleans spaces
    words = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "hello",
        "world",
        ",",
        ".",
        "!",
        "don",
        "'",
        "t",
        "##s",
        "cat",
    ]
    rust = RustTokenizer(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    rust.normalizer = normalizers.BertNormalizer(lowercase=True)
    rust.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    rust.decoder = decoders.WordPiece(cleanup=False)
    rust.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": True,
        **{f"{n}_token": f"[{n.upper()}]" for n in ("pad", "unk", "cls", "sep", "mask")},
    }
    samples = ["Hello, world!", "hello world . cats", "don't [MASK] cat [SEP]", "unknownword"]
    ours, auto = assert_same(make_dir(tmp_path, rust, config), samples)
    assert ours.decode(ours.encode("hello , world .")) == "[CLS] hello, world. [SEP]"


def test_chat_template_from_jinja_file(tmp_path):
    rust = bpe_json(QWEN_SPECIALS)
    template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    d = make_dir(tmp_path, rust, {"eos_token": "<|im_end|>"}, chat_template__jinja=template)
    ours, auto = assert_same(d)
    assert ours.chat_template == auto.chat_template == template
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert ours.apply_chat_template(messages) == auto.apply_chat_template(messages, tokenize=False)


def test_named_chat_templates(tmp_path):
    rust = bpe_json(QWEN_SPECIALS)
    templates = [
        {"name": "default", "template": "D{{ messages | length }}"},
        {"name": "tool_use", "template": "T"},
    ]
    ours, auto = assert_same(
        make_dir(tmp_path, rust, {"eos_token": "<|im_end|>", "chat_template": templates})
    )
    messages = [{"role": "user", "content": "x"}]
    for tools in (None, [{"type": "function", "function": {"name": "f"}}]):
        expected = auto.apply_chat_template(messages, tools=tools, tokenize=False)
        assert ours.apply_chat_template(messages, tools=tools) == expected
    ours.save(tmp_path / "again")
    assert load_tokenizer(tmp_path / "again").chat_template == {
        "default": "D{{ messages | length }}",
        "tool_use": "T",
    }


def test_chat_template_files_take_priority_over_config(tmp_path):
    # as in transformers: chat_template.jinja and additional_chat_templates/NAME.jinja replace
    # whatever the config's "chat_template" says; one file alone is a plain template
    rust = bpe_json(QWEN_SPECIALS)
    config = {"eos_token": "<|im_end|>", "chat_template": "config {{ messages | length }}"}
    d = make_dir(tmp_path, rust, config, chat_template__jinja="file {{ messages | length }}")
    ours, auto = assert_same(d)
    assert ours.chat_template == auto.chat_template == "file {{ messages | length }}"

    (d / "additional_chat_templates").mkdir()
    (d / "additional_chat_templates" / "tool_use.jinja").write_text("tools {{ tools | length }}")
    ours, auto = assert_same(d)
    assert ours.chat_template == auto.chat_template
    assert ours.chat_template == {"default": "file {{ messages | length }}", "tool_use": "tools {{ tools | length }}"}
    messages = [{"role": "user", "content": "x"}]
    tools = [{"type": "function", "function": {"name": "f"}}]
    for kwargs in ({}, {"tools": tools}, {"chat_template": "tool_use", "tools": tools}):
        assert ours.apply_chat_template(messages, **kwargs) == auto.apply_chat_template(
            messages, tokenize=False, **kwargs
        )

    (d / "chat_template.jinja").unlink()  # named templates only: the config's is still ignored
    ours, auto = assert_same(d)
    assert ours.chat_template == auto.chat_template == {"tool_use": "tools {{ tools | length }}"}
    assert ours.apply_chat_template(messages, tools=tools) == "tools 1"
    with pytest.raises(ValueError, match="default"):
        ours.apply_chat_template(messages)


def test_save_writes_template_files_like_transformers(tmp_path):
    # the files win over the config, so saving over a tokenizer's own directory rewrites them
    d = make_dir(tmp_path, bpe_json(QWEN_SPECIALS), {"eos_token": "<|im_end|>"}, chat_template__jinja="old{{ 1 }}")
    ours = load_tokenizer(d)
    ours.chat_template = {"default": get_chat_template("chatml"), "tool_use": "new {{ tools | length }}"}
    ours.save(d)
    assert "chat_template" not in json.loads((d / "tokenizer_config.json").read_text())
    again, auto = assert_same(d)
    assert again.chat_template == auto.chat_template == ours.chat_template
    ours.chat_template = {"default": "x{{ 1 }}", "../escape": "y{{ 1 }}"}
    with pytest.raises(ValueError, match="escape"):
        ours.save(tmp_path / "other")


def test_chat_template_by_name(tmp_path):
    # like transformers' get_chat_template: chat_template= may name one of the tokenizer's
    # templates; alignlab also knows its built-ins; anything else that is not jinja is an error
    rust = bpe_json(QWEN_SPECIALS)
    templates = [
        {"name": "default", "template": "D{{ messages | length }}"},
        {"name": "tool_use", "template": "T{{ messages | length }}"},
    ]
    ours, auto = assert_same(make_dir(tmp_path, rust, {"eos_token": "<|im_end|>", "chat_template": templates}))
    messages = [{"role": "user", "content": "x"}]
    for name in ("default", "tool_use"):
        expected = auto.apply_chat_template(messages, chat_template=name, tokenize=False)
        assert ours.apply_chat_template(messages, chat_template=name) == expected
    chatml = auto.apply_chat_template(messages, chat_template=get_chat_template("chatml"), tokenize=False)
    assert ours.apply_chat_template(messages, chat_template="chatml") == chatml
    with pytest.raises(ValueError, match="unknown chat template 'chatm1'") as e:
        ours.apply_chat_template(messages, chat_template="chatm1")
    assert all(name in str(e.value) for name in ("default", "tool_use", "chatml", "llama3"))


def test_malformed_tokenizer_json_is_a_value_error(tmp_path):
    bad_merge = {"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": [["a", "b"]]}}
    (tmp_path / "tokenizer.json").write_text(json.dumps(bad_merge))
    with pytest.raises(ValueError, match=r"tokenizer\.json.*Token `a` out of vocabulary") as e:
        load_tokenizer(tmp_path)
    assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="key must be a string"):
        HFTokenizer.load(tmp_path)


def test_save_roundtrip(tmp_path):
    rust = bpe_json(LLAMA_SPECIALS)
    config = {
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
        "pad_token": "<pad>",
    }
    d = make_dir(tmp_path / "a", rust, config, chat_template__jinja=get_chat_template("llama3"))
    ours = HFTokenizer.load(d, add_bos_token=True)
    ours.save(tmp_path / "b")
    assert {p.name for p in (tmp_path / "b").iterdir()} == {
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"
    }  # fmt: skip
    again, auto = assert_same(tmp_path / "b")
    assert again.chat_template == auto.chat_template == get_chat_template("llama3")
    assert again.encode("hi") == ours.encode("hi") and again.encode("hi")[0] == again.bos_token_id
    assert again.vocab_size == ours.vocab_size and again.pad_token_id == ours.pad_token_id


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.text(max_size=15), st.sampled_from(QWEN_SPECIALS)), max_size=8).map("".join))
def test_random_text_matches_auto(tmp_path_factory, s):
    d = _qwen_dir(tmp_path_factory)
    ours, auto = _loaded[d]
    ids = auto.encode(s)
    assert ours.encode(s) == ids
    assert ours.decode(ids, skip_special_tokens=True) == auto.decode(ids, skip_special_tokens=True)


_loaded = {}


def _qwen_dir(tmp_path_factory):
    if not _loaded:
        d = make_dir(tmp_path_factory.mktemp("qwen"), bpe_json(QWEN_SPECIALS), {"eos_token": "<|im_end|>"})
        _loaded[d] = (load_tokenizer(d), transformers.AutoTokenizer.from_pretrained(str(d)))
    return next(iter(_loaded))


def test_load_tokenizer_dispatch_and_errors(tmp_path):
    char = CharTokenizer.from_text("abc")
    char.save(tmp_path / "char")
    assert isinstance(load_tokenizer(tmp_path / "char"), CharTokenizer)
    assert isinstance(load_tokenizer(tmp_path / "char" / "char_tokenizer.json"), CharTokenizer)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty.*tokenizer.json.*char_tokenizer.json") as e:
        load_tokenizer(tmp_path / "empty")
    assert isinstance(e.value, UserError)  # a path the user gave: one line, no traceback
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "nowhere")
    (tmp_path / "empty" / "notes.txt").write_text("x", encoding="utf-8")
    (tmp_path / "empty" / "tokenizer.json").write_text("not json", encoding="utf-8")
    for path in (tmp_path / "empty" / "notes.txt", tmp_path / "empty"):
        with pytest.raises(CheckpointError, match="not a (valid )?tokenizer"):  # a ValueError too
            load_tokenizer(path)
