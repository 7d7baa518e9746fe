"""`alignlab distill`: a smaller student pulled toward a frozen teacher, off-policy and on-policy (GKD's lambda)."""

from __future__ import annotations

import json

import pytest
import torch

from alignlab.cli import main
from alignlab.errors import ConfigError
from alignlab.model.hf import load_model
from alignlab.objectives import IGNORE_INDEX
from alignlab.recipes.distill import DistillConfig, OnPolicyBatches, divergence_sum, run
from alignlab.recipes.sft import ConversationBatches, tokenize_conversations
from alignlab.text import load_tokenizer
from alignlab.train.trainer import TrainConfig
from tests.conftest import save_tiny_llama


@pytest.fixture(scope="module")
def models(tmp_path_factory, world):
    root = tmp_path_factory.mktemp("distill")
    tok = world.tokenizer()
    teacher = save_tiny_llama(root / "teacher", tok, dim=48, n_heads=2, seed=1)
    student = save_tiny_llama(root / "student", tok, dim=16, n_heads=2, seed=2)
    data = root / "chats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in world.sft_conversations("train")[:64]))
    return teacher, student, data


def _cfg(tmp_path, models, **kw):
    teacher, student, data = models
    train = TrainConfig(max_steps=kw.pop("steps", 12), lr=3e-3, warmup_steps=0, eval_every=0, save_every=0,
                        plot=False)
    return DistillConfig(out_dir=str(tmp_path / "run"), student=str(student), teacher=str(teacher), data=str(data),
                         val_data=str(data), batch_size=8, max_len=128, max_new_tokens=12, sample_prompts=0,
                         train=train, **kw)


def test_a_student_equal_to_its_teacher_has_zero_divergence(models, world):
    teacher_dir, _, data = models
    tok = load_tokenizer(teacher_dir)
    m = load_model(teacher_dir, dtype=torch.float32)
    examples, _ = tokenize_conversations(tok, world.sft_conversations("train")[:4], 128)
    batch = ConversationBatches(examples, 4, tok.padding_id, 0).next_batch()
    with torch.no_grad():
        total, n = divergence_sum(m, m, batch, beta=0.5, temperature=2.0)
    assert n == int((batch["labels"] != IGNORE_INDEX).sum()) and abs(float(total)) < 1e-5


def test_off_policy_distillation_lowers_the_held_out_divergence(tmp_path, models):
    before = run(_cfg(tmp_path / "zero", models, steps=1, beta=0.0))["val_loss"]
    after = run(_cfg(tmp_path, models, steps=30, beta=0.0))
    assert after["status"] == "finished" and after["val_loss"] < 0.9 * before
    assert (tmp_path / "run" / "model" / "config.json").exists()


def test_on_policy_batches_train_on_the_students_own_samples(models, world):
    teacher_dir, student_dir, _ = models
    tok = load_tokenizer(student_dir)
    student = load_model(student_dir, dtype=torch.float32)
    examples, _ = tokenize_conversations(tok, world.sft_conversations("train")[:8], 128)
    cfg = DistillConfig(lmbda=1.0, max_new_tokens=6)
    batch = OnPolicyBatches(ConversationBatches(examples, 4, tok.padding_id, 0), student, tok, cfg).next_batch()
    for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist()):
        trained = [t for t, y in enumerate(labels) if y != IGNORE_INDEX]
        assert 1 <= len(trained) <= 6 and all(labels[t] == ids[t + 1] for t in trained)
        assert tok.decode(ids[:trained[0] + 1]).endswith("<|assistant|>")  # the reply follows the generation prompt


def test_the_command_runs_on_policy_and_refuses_a_different_tokenizer(tmp_path, models, capsys):
    teacher, student, data = models
    rc = main(["distill", f"out_dir={tmp_path / 'cli'}", f"student={student}", f"teacher={teacher}", f"data={data}",
               "lmbda=0.5", "max_new_tokens=8", "batch_size=4", "train.max_steps=3", "train.plot=false"])
    assert rc == 0 and (tmp_path / "cli" / "model" / "config.json").exists()
    from alignlab.text.char import CharTokenizer

    other = save_tiny_llama(tmp_path / "other", CharTokenizer.from_text("abc def"), dim=16)
    with pytest.raises(ConfigError, match="share a tokenizer"):
        run(DistillConfig(out_dir=str(tmp_path / "x"), student=str(student), teacher=str(other), data=str(data)))
