"""The first SFT recipe: assistant-only labels, padding, resumable batches, input errors, a run end to end."""

from __future__ import annotations

import json

import pytest
import torch

from alignlab.data.errors import DataError
from alignlab.data.world import TinyWorld
from alignlab.errors import ConfigError
from alignlab.lora import load_adapter
from alignlab.model import CausalLM, preset
from alignlab.model.hf import load_model, save_model
from alignlab.objectives import IGNORE_INDEX, lm_step
from alignlab.recipes.sft import (
    ConversationBatches,
    LoraOptions,
    SFTConfig,
    collate,
    read_jsonl,
    run,
    tokenize_conversations,
)
from alignlab.train.trainer import TrainConfig


@pytest.fixture(scope="module")
def world():
    return TinyWorld(seed=0, size="quick")


def test_labels_are_the_assistant_reply_and_its_end_token(world):
    tok = world.tokenizer()
    record = world.sft_conversations("train", kinds=("math",))[0]
    (ex,), counts = tokenize_conversations(tok, [record], max_len=512)
    assert counts == {"kept": 1, "truncated": 0, "dropped": 0}
    trained = [y for y in ex.labels if y != IGNORE_INDEX]
    reply = record["messages"][-1]["content"]
    assert tok.decode(trained) == reply + "<|end|>"  # the reply, then the end-of-turn token: it learns to stop
    # labels are next tokens: where a label is set, it is the following input id
    for t, y in enumerate(ex.labels):
        if y != IGNORE_INDEX:
            assert y == ex.input_ids[t + 1]


def test_truncation_and_drops_are_counted(world):
    tok = world.tokenizer()
    records = world.sft_conversations("train", kinds=("math",))[:3]
    prompt_len = len(tok.apply_chat_template(records[0]["messages"][:-1], add_generation_prompt=True, tokenize=True))
    examples, counts = tokenize_conversations(tok, records, max_len=prompt_len + 3)
    assert counts["truncated"] == 3 and counts["kept"] + counts["dropped"] == 3
    _, counts = tokenize_conversations(tok, records, max_len=prompt_len - 5)  # no assistant token left
    assert counts == {"kept": 0, "truncated": 3, "dropped": 3}


def test_collate_pads_on_the_right_with_ignored_labels():
    from alignlab.recipes.sft import Example

    batch = collate([Example([1, 2, 3], [2, 3, IGNORE_INDEX]), Example([4], [IGNORE_INDEX])], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["labels"].tolist() == [[2, 3, IGNORE_INDEX], [IGNORE_INDEX] * 3]


def test_batches_cover_each_epoch_and_resume_exactly():
    from alignlab.recipes.sft import Example

    examples = [Example([i, i], [i, IGNORE_INDEX]) for i in range(10)]
    a = ConversationBatches(examples, 4, pad_id=0, seed=3)
    firsts = [a.next_batch()["input_ids"][:, 0].tolist() for _ in range(5)]  # 20 = two epochs
    seen = sum(firsts, [])
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    b = ConversationBatches(examples, 4, pad_id=0, seed=3)
    for _ in range(3):
        b.next_batch()
    state = json.loads(json.dumps(b.state_dict(), default=list))  # survives a round trip through a checkpoint
    c = ConversationBatches(examples, 4, pad_id=0, seed=99)
    c.load_state_dict({**state, "rng": _tuple(state["rng"])})
    assert [c.next_batch()["input_ids"][:, 0].tolist() for _ in range(2)] == firsts[3:]


def _tuple(x):
    return tuple(_tuple(v) for v in x) if isinstance(x, list) else x


def test_read_jsonl_names_file_line_and_field(tmp_path):
    path = tmp_path / "chats.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n\n{"messages": []}\n')
    with pytest.raises(DataError, match=r"chats.jsonl:3: field 'messages'"):
        read_jsonl(path)
    path.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{not json\n')
    with pytest.raises(DataError, match=r"chats.jsonl:2: not valid JSON"):
        read_jsonl(path)


@pytest.mark.parametrize("method, packing, drop", [("full", False, 0.8), ("full", True, 0.8), ("lora", False, 0.97),
                                                    ("qlora", True, 0.97)])
def test_sft_run_lowers_the_held_out_loss_and_saves_a_model(tmp_path, world, method, packing, drop):
    tok = world.tokenizer()
    torch.manual_seed(0)
    base = CausalLM(preset("llama", vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=2, max_seq_len=256,
                           eos_token_id=tok.eos_token_id))
    save_model(base, tmp_path / "base", tokenizer=tok)
    train, val = world.sft_conversations("train"), world.sft_conversations("test")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": r["messages"]}) + "\n" for r in train))
    cfg = SFTConfig(out_dir=str(tmp_path / "sft"), model=str(tmp_path / "base"), data=str(data), max_len=256,
                    method=method, packing=packing, batch_size=2 if packing else 8, eval_batches=2, sample_prompts=1,
                    sample_tokens=16, lora=LoraOptions(r=8, alpha=16),
                    train=TrainConfig(max_steps=30, lr=3e-3 if method == "full" else 1e-2, warmup_steps=3,
                                      eval_every=15, save_every=15, peak_flops=1e11, plot=False))
    result = run(cfg, val_records=val)
    assert result["status"] == "finished" and result["data"]["train"]["kept"] == len(train)
    if packing:
        assert result["data"]["packing"]["rows"] < len(train) / 2  # ~80-token chats, several per 256-token row
    model = load_model(tmp_path / "sft" / "model")
    assert json.loads((tmp_path / "sft" / "model" / "alignlab.json").read_text())["stage"] == "sft"
    examples, _ = tokenize_conversations(tok, val[:32], max_len=256)
    batch = collate(examples, pad_id=tok.pad_token_id)
    n = int((batch["labels"] != IGNORE_INDEX).sum())
    with torch.no_grad():
        before, after = (float(lm_step(m.eval(), batch, n)) for m in (base, model))
    assert after < drop * before, (before, after)  # held-out assistant tokens, before and after SFT
    if method != "full":  # the adapter, in PEFT's format, applied to the base gives the merged model's logits
        adapter = json.loads((tmp_path / "sft" / "adapter" / "adapter_config.json").read_text())
        assert adapter["peft_type"] == "LORA" and adapter["r"] == 8
        fresh = load_adapter(load_model(tmp_path / "base"), tmp_path / "sft" / "adapter")
        x = batch["input_ids"][:2]
        with torch.no_grad():
            torch.testing.assert_close(fresh.eval()(x), model(x), atol=1e-4, rtol=1e-4)


def test_sft_config_rejects_an_unknown_method(tmp_path, world):
    tok = world.tokenizer()
    save_model(CausalLM(preset("llama", vocab_size=tok.vocab_size, dim=16, n_layers=1, n_heads=2, max_seq_len=64)),
               tmp_path / "base", tokenizer=tok)
    cfg = SFTConfig(out_dir=str(tmp_path / "sft"), model=str(tmp_path / "base"), method="prefix")
    with pytest.raises(ConfigError, match="method must be one of full, lora, qlora"):
        run(cfg, train_records=world.sft_conversations("train")[:4])
