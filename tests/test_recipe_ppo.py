"""`alignlab ppo`: runs finish, save the policy and the critic and log trl's metrics; the recipe hands GAE the right
per-token rewards (the score on the last completion token, -kl_coef * KL on every token) and values (the critic at
the position that predicts each token); the update pushes the right way; a resumed run continues exactly, critic
included; a failing reward function leaves the run alive."""

from __future__ import annotations

import json
import math

import pytest
import torch

from alignlab.model.hf import load_model
from alignlab.model.reward import RewardModel, load_reward_model, save_reward_model
from alignlab.objectives.rl import gae, whiten
from alignlab.recipes.ppo import PPOConfig, completion_values, ppo_advantages, run
from alignlab.rl.collect import RolloutConfig
from alignlab.rl.rollout import rollout_logps
from alignlab.train import checkpoint as ckpt
from alignlab.train.trainer import TrainConfig

HERE = "tests.test_recipe_ppo"


# reward functions in trl's convention, referenced from configs as tests.test_recipe_ppo:<name>


def digit_reward(prompts, completions, **kwargs):
    """The share of digits in the reply: varies between the random model's completions."""
    texts = [c[-1]["content"] for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]


def low_ids(prompts, completions, completion_ids, **kwargs):
    """The share of the completion's tokens in the lower half of the vocabulary: ~0.5 for the random model."""
    return [sum(t < 384 for t in ids) / max(len(ids), 1) for ids in completion_ids]


def always_raises(prompts, completions, **kwargs):
    raise RuntimeError("this reward function is broken")


# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prompts(world):
    return world.rl_prompts("train", level=2)[:40], world.rl_prompts("test", level=2)[:6]


def config(tmp_path, base, name="ppo", train=None, **kw):
    train = TrainConfig(**{"max_steps": 3, "lr": 1e-3, "schedule": "constant", "warmup_steps": 0, "eval_every": 2,
                           "save_every": 2, "plot": False, **(train or {})})
    kw = {"num_generations": 1, "prompts_per_step": 6, "max_completion_length": 16, "eval_prompts": 6,
          "data": "tinyworld:rl:2", "num_ppo_epochs": 2, "allow_custom_rewards": True,
          "reward_funcs": {"format": 1.0, "correctness": 1.0, f"{HERE}:digit_reward": 1.0}, **kw}
    fields = set(RolloutConfig.__dataclass_fields__)  # keyword arguments go where they belong
    rollout = RolloutConfig(**{k: v for k, v in kw.items() if k in fields})
    return PPOConfig(out_dir=str(tmp_path / name), model=str(base), train=train, rollout=rollout,
                     **{k: v for k, v in kw.items() if k not in fields})


def metrics(tmp_path, name="ppo") -> list[dict]:
    return [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]


STEP_KEYS = {"loss", "grad_norm", "loss/policy", "loss/value", "policy/clipfrac", "policy/approxkl", "val/clipfrac",
             "val/vpred", "val/error", "entropy", "kl"}
ROLLOUT_KEYS = {"objective/scores", "objective/kl", "objective/non_score_reward", "objective/rlhf_reward",
                "objective/entropy", "objective/returns", "objective/values", "reward", "reward_std",
                "rewards/digit_reward/mean", "rewards/digit_reward/errors", "frac_reward_zero_std",
                "completions/mean_length", "completions/clipped_ratio", "format_rate", "accuracy", "rollout_s"}


def test_ppo_steps_finish_save_and_log_the_metrics(tmp_path, base, prompts):
    result = run(config(tmp_path, base, train={"plot": True}), train_records=prompts[0], val_records=prompts[1])
    assert result["status"] == "finished" and result["step"] == 3 and result["rollouts"] == 2
    logged = metrics(tmp_path)
    steps = [r for r in logged if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    for r in steps:
        assert STEP_KEYS <= set(r), STEP_KEYS - set(r)
        assert all(math.isfinite(r[k]) for k in STEP_KEYS)
    # num_ppo_epochs = 2: a rollout batch at steps 1 and 3, its metrics logged on the step that sampled it
    assert [ROLLOUT_KEYS <= set(r) for r in steps] == [True, False, True]
    assert steps[0]["policy/clipfrac"] == 0.0 and steps[0]["policy/approxkl"] < 1e-9  # ratio 1 before any update
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-6) and steps[0]["objective/kl"] == pytest.approx(0, abs=1e-5)
    assert steps[-1]["objective/kl"] != 0.0  # the policy moved from the reference
    assert steps[0]["val/vpred"] != steps[1]["val/vpred"]  # the critic is trained
    assert [r["step"] for r in logged if "val/accuracy" in r] == [2, 3]
    assert set(result["start"]) == {"val/accuracy", "val/format_rate", "val/format_ok_wrong"}
    out = tmp_path / "ppo"
    assert (out / "plots" / "rl.png").exists() and (out / "checkpoints").is_dir()
    policy, critic = load_model(out / "model"), load_reward_model(out / "value_model")
    assert policy.config.vocab_size == critic.config.vocab_size == load_model(base).config.vocab_size
    start = RewardModel.from_causal_lm(base)  # the critic began as the policy's backbone (plus a new head)
    assert any(not torch.equal(p, q) for p, q in zip(critic.backbone.state_dict().values(),
                                                    start.backbone.state_dict().values()))
    assert json.loads((out / "result.json").read_text())["value_model_dir"] == str(out / "value_model")


# ----------------------------------------------------------------------------------------------------------------
# What GAE is given


def test_advantages_put_the_score_on_the_last_token_and_the_kl_on_every_token():
    """Hand-made rollout batch: rows of 4, 2 and 3 completion tokens; the third could not be scored."""
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.float32)
    logps = -torch.tensor([[1.0, 2.0, 0.5, 1.5], [0.2, 0.4, 9.0, 9.0], [1.0, 1.0, 1.0, 9.0]])
    ref = -torch.tensor([[1.5, 1.0, 0.5, 2.5], [0.1, 0.9, 3.0, 3.0], [2.0, 2.0, 2.0, 2.0]])
    values = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, -0.5, 7.0, 7.0], [1.0, 1.0, 1.0, 1.0]])
    scores = torch.tensor([1.0, -2.0, math.nan])
    c = 0.1
    out = ppo_advantages(scores, logps, ref, values, mask, kl_coef=c, gamma=0.9, lam=0.8)

    kl1 = [-1.0 + 1.5, -2.0 + 1.0, -0.5 + 0.5, -1.5 + 2.5]  # k1 = logp - ref, token by token
    kl2 = [-0.2 + 0.1, -0.4 + 0.9]
    rewards = torch.tensor([[-c * kl1[0], -c * kl1[1], -c * kl1[2], -c * kl1[3] + 1.0],  # the score on token 4
                            [-c * kl2[0], -c * kl2[1] - 2.0, 0.0, 0.0],  # ... on token 2; nothing on padding
                            [0.0, 0.0, 0.0, 0.0]])  # unscored: no reward, and out of the loss
    loss_mask = mask * torch.tensor([[1.0], [1.0], [0.0]])
    torch.testing.assert_close(out["rewards"], rewards)
    torch.testing.assert_close(out["loss_mask"], loss_mask)
    advantages, returns = gae(rewards, values, loss_mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(out["returns"], returns)
    torch.testing.assert_close(out["advantages"], whiten(advantages, loss_mask))
    # the last token of row 2 by hand: delta = r + 0 (the episode ends) - V
    assert returns[1, 1].item() == pytest.approx(-c * kl2[1] - 2.0)

    # whiten_rewards rescales the rewards (not their mean) before GAE; k3 is the other estimator
    w = ppo_advantages(scores, logps, ref, values, mask, kl_coef=c, whiten_rewards=True)
    torch.testing.assert_close(w["rewards"], whiten(rewards, loss_mask, shift_mean=False))
    k3 = ppo_advantages(scores, logps, ref, values, mask, kl_coef=c, kl_estimator="k3")
    assert (k3["kl"] >= 0).all() and not torch.allclose(k3["kl"], out["kl"])


def test_values_are_read_where_each_token_is_predicted(base):
    critic = RewardModel.from_causal_lm(base).eval()
    ids = torch.randint(0, 100, (2, 9))
    prompt_lens = torch.tensor([3, 5])
    with torch.no_grad():
        v = completion_values(critic, ids, prompt_lens, 4)
        every = critic.token_rewards(ids)
    # completion token j of row i sits at prompt_len + j; the state before it is position prompt_len + j - 1
    torch.testing.assert_close(v[0], every[0, 2:6])
    torch.testing.assert_close(v[1], every[1, 4:8])


def test_the_recipe_passes_the_rollout_tensors_to_gae(tmp_path, base, prompts, world):
    """After one step, the checkpoint's rollout buffer: pi_old and pi_ref are the starting model's log-probs, V_old
    the given critic's values, and the advantages and returns are ppo_advantages of exactly those."""
    torch.manual_seed(1)
    critic_dir = save_reward_model(RewardModel.from_causal_lm(base), tmp_path / "critic0", tokenizer=world.tokenizer())
    cfg = config(tmp_path, base, value_model=str(critic_dir), kl_coef=0.2, gamma=0.95, lam=0.9, eval_prompts=0,
                 reward_funcs={f"{HERE}:low_ids": 1.0}, train={"max_steps": 1, "save_every": 1})
    run(cfg, train_records=prompts[0], val_records=[])
    b = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "ppo" / "checkpoints"))["data"]["buffer"]
    start, critic = load_model(base), load_reward_model(critic_dir)
    logps = rollout_logps(start, b, 1.0, 64)
    torch.testing.assert_close(b["old_logps"], logps, atol=1e-5, rtol=0)
    torch.testing.assert_close(b["ref_logps"], logps, atol=1e-5, rtol=0)
    with torch.no_grad():
        values = completion_values(critic, b["input_ids"], b["prompt_lens"], b["completion_ids"].shape[1])
    torch.testing.assert_close(b["old_values"], values * b["loss_mask"], atol=1e-5, rtol=0)
    assert b["scores"].std() > 0  # low_ids varies
    expect = ppo_advantages(b["scores"], b["old_logps"], b["ref_logps"], values, b["completion_mask"], 0.2, 0.95, 0.9)
    torch.testing.assert_close(b["advantages"], expect["advantages"])
    torch.testing.assert_close(b["returns"], expect["returns"])


# ----------------------------------------------------------------------------------------------------------------
# Learning, resume, failures, the CLI


def test_the_policy_learns_what_the_reward_pays_for(tmp_path, base, prompts):
    """The whole loop, sign included: rewarded for low token ids, the random model's share of them rises from ~0.5
    (a flipped advantage would push it down)."""
    cfg = config(tmp_path, base, prompts_per_step=16, num_ppo_epochs=2, eval_prompts=0, kl_coef=0.0,
                 reward_funcs={f"{HERE}:low_ids": 1.0}, train={"max_steps": 24, "lr": 3e-2, "eval_every": 0,
                                                               "save_every": 0})
    run(cfg, train_records=prompts[0], val_records=[])
    rewards = [r["reward"] for r in metrics(tmp_path) if "reward" in r]
    assert len(rewards) == 12 and rewards[0] < 0.55 and sum(rewards[-2:]) / 2 > rewards[0] + 0.2, rewards


def test_resume_continues_exactly_with_the_critic(tmp_path, base, prompts):
    """Stopped after step 2 (the end of the first epoch: the second reshuffles the batch) and resumed, a run logs
    what an uninterrupted one logs, and ends with the same policy and critic."""
    kw = dict(num_mini_batches=2, kl_coef=0.1, reward_funcs={f"{HERE}:low_ids": 1.0},
              train={"max_steps": 5, "save_every": 1, "eval_every": 3, "keep_last": 9})
    whole = run(config(tmp_path, base, name="whole", **kw), train_records=prompts[0], val_records=prompts[1])
    first = config(tmp_path, base, name="split", **{**kw, "train": {**kw["train"], "max_steps": 2}})
    run(first, train_records=prompts[0], val_records=prompts[1])
    resumed = run(config(tmp_path, base, name="split", **kw), resume=True, train_records=prompts[0],
                  val_records=prompts[1])
    assert whole["step"] == resumed["step"] == 5
    drop = ("elapsed_s", "tokens_per_s", "rollout_s", "rollout_tokens_per_s")  # timings
    a, b = ([{k: v for k, v in r.items() if k not in drop} for r in metrics(tmp_path, name)
             if "loss" in r or r["step"] > 2] for name in ("whole", "split"))
    assert len(a) == 7 and a == b  # 5 steps, evaluations at 3 and 5
    last = next(r for r in a if r["step"] == 5 and "loss" in r)
    assert "objective/values" in last  # step 5 sampled a new batch: V_old from the restored, trained critic
    for sub, load in (("model", load_model), ("value_model", load_reward_model)):
        wa, wb = load(tmp_path / "whole" / sub), load(tmp_path / "split" / sub)
        assert all(torch.equal(p, q) for p, q in zip(wa.state_dict().values(), wb.state_dict().values()))


def test_a_failing_reward_function_leaves_the_run_alive(tmp_path, base, prompts, capsys):
    funcs = {f"{HERE}:always_raises": 1.0, f"{HERE}:digit_reward": 1.0}
    result = run(config(tmp_path, base, reward_funcs=funcs, eval_prompts=0, num_ppo_epochs=1),
                 train_records=prompts[0], val_records=[])
    assert result["status"] == "finished"
    text = "".join(capsys.readouterr())
    assert text.count("reward function 'always_raises' failed (RuntimeError: this reward function is broken)") == 1
    steps = [r for r in metrics(tmp_path) if "loss" in r]
    assert [r["rewards/always_raises/errors"] for r in steps] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["objective/scores"]) for r in steps)
    assert result["reward_failures"]["always_raises"]["errors"] == 3


def test_lora_and_config_checks(tmp_path, base, prompts):
    result = run(config(tmp_path, base, method="lora", num_ppo_epochs=1, eval_prompts=0, train={"max_steps": 2}),
                 train_records=prompts[0], val_records=[])
    out = tmp_path / "ppo"
    assert result["status"] == "finished" and (out / "adapter" / "adapter_config.json").exists()
    assert load_reward_model(out / "value_model").score.weight.shape[0] == 1
    for kw, match in [({"reference": "none"}, "needs a reference"), ({"reference": "lora"}, "needs method=lora"),
                      ({"num_mini_batches": 7}, "micro-batches"), ({"kl_estimator": "k2"}, "kl_estimator"),
                      ({"lam": 1.5}, "lam")]:
        with pytest.raises(ValueError, match=match):
            run(config(tmp_path, base, **kw), train_records=prompts[0], val_records=[])


def test_cli_registers_ppo(monkeypatch):
    from alignlab import cli
    from alignlab.recipes import ppo

    seen = []
    monkeypatch.setattr(ppo, "run", lambda cfg, resume: seen.append((cfg, resume)))
    assert cli.main(["ppo", "--config", "configs/ppo/tinyworld.yaml", "--resume", "vf_coef=0.2"]) in (0, None)
    (cfg, resume), = seen
    assert type(cfg) is PPOConfig and resume and cfg.rollout.data == "tinyworld:rl:3,4" and cfg.vf_coef == 0.2
    assert cfg.rollout.num_generations == 1 and cfg.kl_coef == 0.05 and cfg.train.max_steps == 480
