"""Reward models: rewards equal transformers' sequence classifiers, last-token selection, save/load, score(),
the Bradley-Terry step, preference data, and a short run whose held-out accuracy rises."""

from __future__ import annotations

import json

import pytest
import torch

from alignlab.cli import build_parser
from alignlab.data.errors import DataError
from alignlab.data.world import TinyWorld
from alignlab.model import CausalLM, preset
from alignlab.model.hf import save_model
from alignlab.model.reward import (
    RewardModel,
    load_reward_model,
    reward_input_ids,
    save_reward_model,
    score,
)
from alignlab.objectives.preference import bradley_terry_loss
from alignlab.recipes.reward_model import (
    PairBatches,
    RewardModelConfig,
    RewardPair,
    collate_reward_pairs,
    count_pairs,
    reward_step,
    run,
    tokenize_reward_pairs,
)
from alignlab.train.trainer import TrainConfig

from .hf_models import require

VOCAB, PAD = 128, 0


def tiny_config(arch: str = "llama", vocab: int = VOCAB, **kw):
    kv = {} if arch == "gpt2" else {"n_kv_heads": 2}
    return preset(arch, vocab_size=vocab, dim=64, n_layers=2, n_heads=4, hidden_dim=128, max_seq_len=128,
                  bos_token_id=1, eos_token_id=2, pad_token_id=PAD, **kv, **kw)


def random_reward_model(arch: str = "llama", seed: int = 0, **kw) -> RewardModel:
    torch.manual_seed(seed)
    model = RewardModel(tiny_config(arch, **kw))
    with torch.no_grad():  # a head of the backbone's scale, and random norm gains, so every weight matters
        model.score.weight.normal_()
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def padded_batch(lengths=(10, 6, 3), seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (len(lengths), max(lengths)), generator=g)  # never the pad id
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, n:], mask[i, :n] = PAD, 1
    return ids, mask


@pytest.fixture(scope="module")
def world():
    return TinyWorld(seed=0, size="quick")


# --- the model and transformers --------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_saved_reward_model_loads_in_transformers_with_the_same_rewards(tmp_path, arch):
    transformers = require("transformers")
    model = random_reward_model(arch)
    save_reward_model(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    names = {"llama": "LlamaForSequenceClassification", "qwen2": "Qwen2ForSequenceClassification",
             "gpt2": "GPT2ForSequenceClassification"}
    assert config["architectures"] == [names[arch]]
    assert config["num_labels"] == 1 and config["pad_token_id"] == PAD
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    ids, mask = padded_batch()
    with torch.no_grad():
        ours = model(ids, mask)
        theirs = hf(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
    assert ours.shape == (3,)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_transformers_reward_model_loads_here_with_the_same_rewards(tmp_path):
    transformers = require("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=PAD)
    hf = transformers.LlamaForSequenceClassification(cfg).float().eval()
    with torch.no_grad():
        hf.score.weight.normal_()
    hf.save_pretrained(tmp_path)
    model = load_reward_model(tmp_path)
    assert model.config.pad_token_id == PAD
    ids, mask = padded_batch()
    with torch.no_grad():
        torch.testing.assert_close(model(ids, mask), hf(input_ids=ids, attention_mask=mask).logits.squeeze(-1),
                                   atol=1e-4, rtol=0)


def test_from_causal_lm_keeps_the_backbone_and_drops_the_lm_head(tmp_path):
    torch.manual_seed(0)
    lm = CausalLM(tiny_config()).eval()
    save_model(lm, tmp_path)
    model = RewardModel.from_causal_lm(tmp_path).eval()
    assert not hasattr(model.backbone, "lm_head")
    assert model.score.weight.shape == (1, 64) and model.score.bias is None
    assert model.score.weight.abs().max() < 0.2  # small: rewards start near 0
    model.gradient_checkpointing = True  # what the Trainer sets reaches the backbone
    assert model.backbone.gradient_checkpointing
    ids, _ = padded_batch((7,))
    with torch.no_grad():
        hidden = lm.hidden_states(ids)[:, -1]
        torch.testing.assert_close(model(ids), (hidden @ model.score.weight.t()).squeeze(-1))


def test_reward_is_read_at_the_last_real_token_whatever_the_padding():
    model = random_reward_model()
    ids, mask = padded_batch((10, 6, 3))
    with torch.no_grad():
        batched = model(ids, mask)
        alone = torch.stack([model(ids[i:i + 1, :n]) for i, n in enumerate((10, 6, 3))]).squeeze(-1)
        torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)
        per_token = model.token_rewards(ids, mask)  # [B, T]: the reward is its entry at length - 1
        torch.testing.assert_close(batched, per_token[torch.arange(3), torch.tensor([9, 5, 2])])
        # left padding (attention mask passed to the backbone, positions from the mask) gives the same rewards
        left_ids, left_mask = torch.full_like(ids, PAD), torch.zeros_like(mask)
        for i, n in enumerate((10, 6, 3)):
            left_ids[i, 10 - n:], left_mask[i, 10 - n:] = ids[i, :n], 1
        torch.testing.assert_close(model(left_ids, left_mask), batched, atol=1e-5, rtol=0)


def test_save_load_round_trip(tmp_path, world):
    model = random_reward_model(vocab=world.tokenizer().vocab_size)
    tok = world.tokenizer()
    save_reward_model(model, tmp_path, tokenizer=tok, meta={"stage": "reward_model"})
    back = load_reward_model(tmp_path)
    assert set(back.state_dict()) == set(model.state_dict())
    for name, t in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], t), name
    ids, mask = padded_batch()
    with torch.no_grad():
        torch.testing.assert_close(back(ids, mask), model(ids, mask), atol=1e-5, rtol=0)
    assert (tmp_path / "tokenizer.json").exists() and (tmp_path / "chat_template.jinja").exists()
    assert json.loads((tmp_path / "alignlab.json").read_text())["stage"] == "reward_model"
    save_model(CausalLM(tiny_config()), tmp_path / "lm")
    with pytest.raises(Exception, match="score.weight"):
        load_reward_model(tmp_path / "lm")


def test_a_trailing_pad_that_is_eos_is_dropped_so_transformers_agrees(tmp_path, world):
    transformers = require("transformers")
    tok = world.tokenizer()
    eos = tok.eos_token_id
    ids = reward_input_ids(tok, "Calculate 2 + 2.", " 4", pad_id=eos)  # standard text: eos appended, then dropped
    assert ids[-1] != eos and ids == reward_input_ids(tok, "Calculate 2 + 2.", " 4", pad_id=tok.pad_token_id)[:-1]
    model = random_reward_model(vocab=tok.vocab_size)
    model.config.pad_token_id = eos  # a tokenizer without a pad token: pad = eos, as trl does
    save_reward_model(model, tmp_path)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor([ids + [eos]])).logits.squeeze()  # transformers skips the trailing eos
        torch.testing.assert_close(model(torch.tensor([ids])).squeeze(), theirs, atol=1e-4, rtol=0)


def test_score_matches_the_model_on_rendered_pairs(world):
    tok = world.tokenizer()
    model = random_reward_model(vocab=tok.vocab_size)
    model.config.pad_token_id = tok.pad_token_id
    pairs = world.preference_pairs("test", kinds=("correctness",))[:5]
    prompts = [p["prompt"] for p in pairs]
    completions = [p["chosen"][0]["content"] for p in pairs]  # strings after message-list prompts: the reply
    rewards = score(model, tok, prompts, completions, batch_size=2)
    assert len(rewards) == 5 and all(isinstance(r, float) for r in rewards)
    for p, r in zip(pairs, rewards):
        ids = tok.apply_chat_template(p["prompt"] + p["chosen"], tokenize=True)
        with torch.no_grad():
            assert model(torch.tensor([ids])).item() == pytest.approx(r, abs=1e-5)
    assert score(model, tok, prompts, [p["chosen"] for p in pairs], batch_size=16) == pytest.approx(rewards, abs=1e-5)
    plain = score(model, tok, ["What is 2 + 2?"], [" 4"])  # standard strings: text + eos
    ids = tok.encode("What is 2 + 2? 4", add_special_tokens=False) + [tok.eos_token_id]
    with torch.no_grad():
        assert plain[0] == pytest.approx(model(torch.tensor([ids])).item(), abs=1e-5)
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        score(model, tok, ["a", "b"], ["c"])


# --- the loss and the data -------------------------------------------------------------------------------------


def test_bradley_terry_loss_values():
    r = torch.tensor([0.3, -1.0, 2.0])
    assert bradley_terry_loss(r, r).loss.item() == pytest.approx(torch.log(torch.tensor(2.0)).item())  # sigma(0) = 1/2
    chosen, rejected = torch.tensor([1.0, 0.5]), torch.tensor([-1.0, 1.5])
    margin = torch.tensor([0.5, 0.0])
    bt = -torch.nn.functional.logsigmoid(chosen - rejected - margin).mean()
    expected = bt + 0.01 * ((chosen + rejected) ** 2).mean()
    assert bradley_terry_loss(chosen, rejected, margin, 0.01).loss.item() == pytest.approx(expected.item())
    big = bradley_terry_loss(torch.tensor([-200.0]), torch.tensor([200.0])).loss
    assert big.item() == pytest.approx(400.0)  # stable: no overflow to inf


def test_reward_step_is_a_mean_over_the_global_batch_of_pairs():
    model = random_reward_model()
    ids, mask = padded_batch((5, 4, 6, 3, 7, 2, 4, 5))  # 4 pairs: rows 0-3 chosen, 4-7 rejected
    full = {"input_ids": ids, "attention_mask": mask}
    loss, metrics = reward_step(model, full, normaliser=count_pairs(full))
    assert set(metrics) == {"accuracy", "margin", "mean_reward", "min_reward", "max_reward"}
    halves = [{"input_ids": ids[[i, i + 1, i + 4, i + 5]], "attention_mask": mask[[i, i + 1, i + 4, i + 5]]}
              for i in (0, 2)]
    accumulated = sum(reward_step(model, b, normaliser=4)[0] for b in halves)  # two micro-batches, 4 pairs in all
    assert accumulated.item() == pytest.approx(loss.item(), abs=1e-6)
    with torch.no_grad():
        r = model(ids, mask)
    assert metrics["accuracy"] == pytest.approx((r[:4] > r[4:]).float().mean().item())
    assert metrics["min_reward"] == pytest.approx(r.min().item(), rel=1e-6, abs=1e-6)  # two fp32 paths, ~1 ulp


def test_implicit_prompts_and_bad_records(world):
    """Records are validated by alignlab.data.preference (errors name the record and field); an implicit prompt
    (each side the whole conversation) gives the same tokens as the explicit pair."""
    tok = world.tokenizer()
    pair = world.preference_pairs("test", kinds=("safety",))[0]
    implicit = {"chosen": pair["prompt"] + pair["chosen"], "rejected": pair["prompt"] + pair["rejected"]}
    (a,), _, _ = tokenize_reward_pairs(tok, [pair], 512, tok.pad_token_id)
    (b,), _, _ = tokenize_reward_pairs(tok, [implicit], 512, tok.pad_token_id)
    assert (a.chosen, a.rejected) == (b.chosen, b.rejected)
    assert a.chosen == tok.apply_chat_template(pair["prompt"] + pair["chosen"], tokenize=True)
    with pytest.raises(DataError, match=r"pairs.jsonl:3: field 'rejected': missing"):
        tokenize_reward_pairs(tok, [{"prompt": "Hi", "chosen": "a"}], 64, 0, ["pairs.jsonl:3"])
    with pytest.raises(DataError, match=r"record 0: field 'rejected'"):
        tokenize_reward_pairs(tok, [{"chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"}], 64, 0)
    with pytest.raises(DataError, match=r"record 0: field 'margin' must be a number"):
        tokenize_reward_pairs(tok, [{"prompt": "Q", "chosen": " a", "rejected": " b", "margin": "big"}], 64, 0)


def test_tokenize_pairs_drops_long_pairs_and_reads_margins(world):
    tok = world.tokenizer()
    records = [{"prompt": "Q:", "chosen": " yes", "rejected": " no", "margin": 1},
               {"prompt": "Q:", "chosen": " yes " * 50, "rejected": " no", "margin": 0.5}]
    pairs, counts, dropped = tokenize_reward_pairs(tok, records, max_len=20, pad_id=tok.pad_token_id)
    assert counts == {"kept": 1, "dropped": 1} and dropped == ["record 1"]
    assert pairs[0].margin == 1.0 and pairs[0].chosen[-1] == tok.eos_token_id
    pairs, _, _ = tokenize_reward_pairs(tok, records[:1], max_len=20, pad_id=tok.pad_token_id, margin_column="")
    assert pairs[0].margin is None
    batch = collate_reward_pairs([RewardPair([5, 6, 7], [8]), RewardPair([9], [10, 11])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [9, 0, 0], [8, 0, 0], [10, 11, 0]]  # chosen rows, then rejected
    assert batch["attention_mask"].sum(-1).tolist() == [3, 1, 1, 2] and "margin" not in batch


def test_pair_batches_resume_exactly():
    pairs = [RewardPair([i + 1] * (i % 3 + 1), [i + 2]) for i in range(7)]
    a = PairBatches(pairs, batch_size=3, pad_id=0, seed=0)
    for _ in range(2):
        a.next_batch()
    b = PairBatches(pairs, batch_size=3, pad_id=0, seed=99)
    b.load_state_dict(a.state_dict())
    for _ in range(4):
        assert torch.equal(a.next_batch()["input_ids"], b.next_batch()["input_ids"])


def test_command_line_run_on_standard_pairs_with_margins(tmp_path, world):
    tok = world.tokenizer()
    save_model(CausalLM(tiny_config(vocab=tok.vocab_size)), tmp_path / "base", tokenizer=tok)
    pairs = [{"prompt": f"{a} + {a} =", "chosen": f" {2 * a}", "rejected": f" {2 * a + 1}", "margin": 0.5}
             for a in range(12)]
    bad = {"prompt": "1 + 1 =", "chosen": " 2"}  # no rejected side: dropped and counted by the loader
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in [*pairs, bad]))
    parser = build_parser()
    args = parser.parse_args(["reward-model", f"out_dir={tmp_path / 'rm'}", f"model={tmp_path / 'base'}",
                              f"data={tmp_path / 'pairs.jsonl'}", f"val_data={tmp_path / 'pairs.jsonl'}",
                              "batch_size=4", "center_rewards_coefficient=0.01", "train.max_steps=3",
                              "train.eval_every=0", "train.plot=false"])
    assert not args.resume and args.config is None
    args.fn(args)
    result = json.loads((tmp_path / "rm" / "result.json").read_text())
    assert result["data"]["margins"] and result["data"]["train"] == {"kept": 12, "dropped": 0}
    assert result["data"]["read"]["train"]["dropped"] == {"missing field": 1}
    assert result["step"] == 3 and "val_accuracy" in result and "val_accuracy" in result["before"]
    assert json.loads((tmp_path / "rm" / "model" / "config.json").read_text())["pad_token_id"] == tok.pad_token_id


# --- a run ---------------------------------------------------------------------------------------------------


def test_training_lowers_the_loss_and_raises_held_out_accuracy(tmp_path, world):
    """A random 2-layer Llama learns TinyWorld's format and safety preferences in 60 steps (about 2 s); pairs
    judged by arithmetic correctness need a pretrained backbone and are left to the pipeline."""
    tok = world.tokenizer()
    kinds = ("format", "safety")
    torch.manual_seed(0)
    save_model(CausalLM(preset("llama", vocab_size=tok.vocab_size, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                               max_seq_len=256)), tmp_path / "base", tokenizer=tok)
    cfg = RewardModelConfig(out_dir=str(tmp_path / "rm"), model=str(tmp_path / "base"), max_len=256, batch_size=8,
                            train=TrainConfig(max_steps=60, lr=3e-3, warmup_steps=5, weight_decay=0.0, eval_every=0,
                                              save_every=0, plot=False))
    result = run(cfg, train_records=world.preference_pairs("train", kinds=kinds),
                 val_records=world.preference_pairs("test", kinds=kinds))
    assert result["status"] == "finished" and result["data"]["train"] == {"kept": 80, "dropped": 0}
    before = result["before"]
    assert before["val_loss"] == pytest.approx(0.693, abs=0.01)  # a small head: rewards near 0, loss near log 2
    # before training the accuracy is a random head's (71% on these pairs): the loss says more than its rise
    assert result["val_accuracy"] >= 0.9 and result["val_accuracy"] > before["val_accuracy"] + 0.2
    assert result["val_loss"] < before["val_loss"] - 0.2
    lines = [json.loads(line) for line in (tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()]
    train_losses = [m["loss"] for m in lines if "loss" in m]
    assert sum(train_losses[-10:]) / 10 < sum(train_losses[:10]) / 10 - 0.2
    assert all(k in lines[0] for k in ("accuracy", "margin", "mean_reward", "min_reward", "max_reward"))
    saved = json.loads((tmp_path / "rm" / "result.json").read_text())
    assert saved["val_accuracy"] == result["val_accuracy"]
    model = load_reward_model(tmp_path / "rm" / "model")
    assert model.config.pad_token_id == tok.pad_token_id
    pair = world.preference_pairs("test", kinds=("safety",))[0]
    chosen, rejected = score(model, tok, [pair["prompt"]] * 2, [pair["chosen"], pair["rejected"]])
    assert chosen > rejected
