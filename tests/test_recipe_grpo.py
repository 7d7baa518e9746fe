"""`alignlab grpo` / `alignlab rloo`: runs finish and log the monitors; reward functions that raise or hang and batches
with no reward variance leave the run alive, warned about and counted; a resumed run continues exactly; rollouts'
log-probs match the engine's and the update pushes the right way."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

from alignlab.errors import ConfigError
from alignlab.model.hf import load_model
from alignlab.recipes.grpo import LOSS_TYPES, GRPOConfig, rloo_config, run
from alignlab.rl.collect import RolloutConfig
from alignlab.tasks import default_val_source, load_source, world_spec
from alignlab.train.trainer import TrainConfig

HERE = "tests.test_recipe_grpo"

# ----------------------------------------------------------------------------------------------------------------
# reward functions in trl's convention, referenced from configs as tests.test_recipe_grpo:<name>


def digit_reward(prompts, completions, **kwargs):
    """The share of digits in the reply: varies between the random model's completions."""
    texts = [c[-1]["content"] for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]


def low_ids(prompts, completions, completion_ids, **kwargs):
    """The share of the completion's tokens in the lower half of the vocabulary: ~0.5 for the random model, and
    easy to raise (the head's rows for those ids)."""
    return [sum(t < 384 for t in ids) / max(len(ids), 1) for ids in completion_ids]


def always_raises(prompts, completions, **kwargs):
    raise RuntimeError("this reward function is broken")


def hangs(prompts, completions, **kwargs):
    time.sleep(3)
    return [0.0] * len(completions)


def half_none(prompts, completions, **kwargs):
    return [None if i % 2 else 1.0 for i in range(len(completions))]


def constant(prompts, completions, **kwargs):
    return [1.0] * len(completions)


# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prompts(world):
    return world.rl_prompts("train", level=2)[:40], world.rl_prompts("test", level=2)[:6]


ROLLOUT_FIELDS = set(RolloutConfig.__dataclass_fields__)


def config(tmp_path, base, cls=GRPOConfig, name="grpo", train=None, **kw):
    """A small run's config; keyword arguments go to the `rollout:` block or the top level, wherever they belong."""
    train = TrainConfig(**{"max_steps": 3, "lr": 1e-3, "schedule": "constant", "warmup_steps": 0, "eval_every": 2,
                           "save_every": 2, "plot": False, **(train or {})})
    kw = {"num_generations": 4, "prompts_per_step": 3, "max_completion_length": 16, "eval_prompts": 6,
          "data": "tinyworld:rl:2", "reward_funcs": {"format": 1.0, "correctness": 1.0, f"{HERE}:digit_reward": 1.0},
          "allow_custom_rewards": True, **kw}
    rollout = RolloutConfig(**{k: v for k, v in kw.items() if k in ROLLOUT_FIELDS})
    top = {k: v for k, v in kw.items() if k not in ROLLOUT_FIELDS}
    return cls(out_dir=str(tmp_path / name), model=str(base), train=train, rollout=rollout, **top)


def metrics(tmp_path, name="grpo") -> list[dict]:
    return [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]


MONITORS = {"reward", "reward_std", "rewards/format/mean", "rewards/correctness/std", "rewards/digit_reward/mean",
            "rewards/digit_reward/errors", "rewards/digit_reward/timeouts", "rewards/digit_reward/nones",
            "frac_reward_zero_std", "kl", "entropy", "clip_ratio/low_mean", "clip_ratio/high_mean",
            "clip_ratio/region_mean", "completions/mean_length", "completions/max_length",
            "completions/mean_terminated_length", "completions/clipped_ratio", "completions/terminated",
            "completions/clipped", "format_rate", "accuracy", "format_ok_wrong", "rollout_s", "grad_norm", "loss"}


def test_grpo_steps_finish_and_log_the_monitors(tmp_path, base, prompts):
    result = run(config(tmp_path, base, train={"plot": True}), train_records=prompts[0], val_records=prompts[1])
    assert result["status"] == "finished" and result["step"] == 3
    logged = metrics(tmp_path)
    steps = [r for r in logged if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    for r in steps:
        assert MONITORS <= set(r), MONITORS - set(r)
        assert r["completions/terminated"] + r["completions/clipped"] == 12  # 3 prompts x 4
        assert r["kl"] >= 0.0 and r["entropy"] > 0.0
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # pi = pi_ref before the first update
    assert steps[-1]["kl"] > 0.0  # and not after
    assert any(r["grad_norm"] > 0 for r in steps)  # digit_reward varies within groups: a learning signal
    assert [r["step"] for r in logged if "val/accuracy" in r] == [2, 3]
    assert set(result["start"]) == {"val/accuracy", "val/format_rate", "val/format_ok_wrong"}
    assert (tmp_path / "grpo" / "plots" / "rl.png").exists() and (tmp_path / "grpo" / "plots" / "loss.png").exists()
    assert load_model(tmp_path / "grpo" / "model").config.vocab_size == load_model(base).config.vocab_size
    saved = json.loads((tmp_path / "grpo" / "result.json").read_text())
    assert saved["reward_failures"]["digit_reward"]["calls"] == 3


def test_rloo(tmp_path, base, prompts):
    cfg = config(tmp_path, base, cls=rloo_config, name="rloo")
    assert cfg.algorithm == "rloo" and cfg.beta == 0.05  # trl's RLOO default: the KL folded into the reward
    result = run(cfg, train_records=prompts[0], val_records=prompts[1])
    assert result["status"] == "finished"
    steps = [r for r in metrics(tmp_path, "rloo") if "loss" in r]
    assert len(steps) == 3 and all(MONITORS - {"clip_ratio/low_min"} <= set(r) for r in steps)
    assert steps[-1]["kl"] > 0.0


@pytest.mark.parametrize("cls", [GRPOConfig, rloo_config])
def test_the_policy_learns_what_the_reward_pays_for(tmp_path, base, prompts, cls):
    """The whole loop, sign included: rewarded for low token ids, the random model's share of them rises from ~0.5."""
    cfg = config(tmp_path, base, cls=cls, num_generations=8, prompts_per_step=4, eval_prompts=0, beta=0.0,
                 reward_funcs={f"{HERE}:low_ids": 1.0}, train={"max_steps": 8, "lr": 3e-2})
    run(cfg, train_records=prompts[0], val_records=[])
    rewards = [r["reward"] for r in metrics(tmp_path) if "reward" in r]
    assert len(rewards) == 8 and rewards[0] < 0.55 and sum(rewards[-2:]) / 2 > rewards[0] + 0.15, rewards


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_options_lora_reference_mu_2_grad_accum_masks(tmp_path, base, prompts, loss_type):
    """Every loss type with LoRA (reference: the adapters disabled), beta != 0, mu = 2 (pi_old recomputed), two
    micro-batches, clip-higher, truncated completions masked and zero-variance groups dropped."""
    cfg = config(tmp_path, base, loss_type=loss_type, method="lora", beta=0.04, num_iterations=2,
                 epsilon_high=0.28, mask_truncated_completions=True, dynamic_sampling=True, max_completion_length=8,
                 train={"max_steps": 4, "grad_accum": 2, "lr": 1e-2})
    result = run(cfg, train_records=prompts[0], val_records=prompts[1])
    assert result["status"] == "finished" and (tmp_path / "grpo" / "adapter" / "adapter_config.json").exists()
    steps = [r for r in metrics(tmp_path) if "loss" in r]
    assert [("reward" in r) for r in steps] == [True, False, True, False]  # one rollout batch per mu = 2 steps
    assert all(r["completions/clipped"] > 0 for r in steps if "reward" in r)  # 8 tokens: most hit the limit
    assert all(math.isfinite(r["loss"]) for r in steps)


def test_failing_hanging_and_none_rewards_leave_the_run_alive(tmp_path, base, prompts, capsys):
    funcs = {f"{HERE}:always_raises": 1.0, f"{HERE}:hangs": 1.0, f"{HERE}:half_none": 1.0,
             f"{HERE}:digit_reward": 1.0}
    start = time.perf_counter()
    result = run(config(tmp_path, base, reward_funcs=funcs, reward_timeout_s=0.2, eval_prompts=0),
                 train_records=prompts[0], val_records=[])
    assert result["status"] == "finished" and time.perf_counter() - start < 30  # the hang cost 0.2 s per step
    out = capsys.readouterr()
    text = out.out + out.err
    assert "reward function 'always_raises' failed (RuntimeError: this reward function is broken)" in text
    assert "reward function 'hangs' failed (timed out after 0.2 s)" in text
    steps = [r for r in metrics(tmp_path) if "loss" in r]
    assert [r["rewards/always_raises/errors"] for r in steps] == [1, 2, 3]  # counted at every step
    assert [r["rewards/hangs/timeouts"] for r in steps] == [1, 2, 3]
    assert [r["rewards/half_none/nones"] for r in steps] == [6, 12, 18]
    assert all(math.isnan(float(r["rewards/always_raises/mean"])) for r in steps)  # logged as "nan"
    assert all(r["rewards/unscored"] == 0 for r in steps)  # digit_reward scored every completion
    assert result["reward_failures"]["hangs"]["timeouts"] == 3


def test_all_zero_variance_batches_warn_and_count(tmp_path, base, prompts, capsys):
    result = run(config(tmp_path, base, reward_funcs={f"{HERE}:constant": 1.0}, dynamic_sampling=True),
                 train_records=prompts[0], val_records=prompts[1])
    assert result["status"] == "finished" and "zero_variance" in result["alarms"]
    text = capsys.readouterr().out
    assert text.count("alarm (zero_variance) at step 1: every group of this batch got equal rewards") == 1
    steps = [r for r in metrics(tmp_path) if "loss" in r]
    assert [r["zero_variance_batches"] for r in steps] == [1, 2, 3]
    assert all(r["frac_reward_zero_std"] == 1.0 and r["alarm/zero_variance"] == 1 and r["groups/zero_std"] == 3
               for r in steps)
    assert all(r["loss"] == 0.0 and r["grad_norm"] == 0.0 for r in steps)  # no signal, no gradient


def test_resume_continues_exactly(tmp_path, base, prompts):
    """A run stopped after step 1 (mid rollout batch: mu = 2) and resumed logs what an uninterrupted run logs."""
    kw = dict(num_iterations=2, train={"max_steps": 3, "save_every": 1, "eval_every": 2, "keep_last": 5})
    whole = run(config(tmp_path, base, name="whole", **kw), train_records=prompts[0], val_records=prompts[1])
    first = config(tmp_path, base, name="split", **{**kw, "train": {**kw["train"], "max_steps": 1}})
    run(first, train_records=prompts[0], val_records=prompts[1])
    resumed = run(config(tmp_path, base, name="split", **kw), resume=True, train_records=prompts[0],
                  val_records=prompts[1])
    assert whole["step"] == resumed["step"] == 3
    drop = ("elapsed_s", "tokens_per_s", "rollout_s", "rollout_tokens_per_s")  # timings
    # (the stopped run also evaluated at its last step, 1: the Trainer always evaluates at the end)
    a, b = ([{k: v for k, v in r.items() if k not in drop} for r in metrics(tmp_path, name)
             if "loss" in r or r["step"] > 1] for name in ("whole", "split"))
    assert len(a) == 5 and a == b
    assert any("reward" in r for r in a if r["step"] == 3)  # step 3 sampled a new batch after the resume
    wa, wb = load_model(tmp_path / "whole" / "model"), load_model(tmp_path / "split" / "model")
    assert all(torch.equal(p, q) for p, q in zip(wa.state_dict().values(), wb.state_dict().values()))
    # resuming a finished run trains nothing and reports its final held-out metrics again
    again = run(config(tmp_path, base, name="whole", **kw), resume=True, train_records=prompts[0],
                val_records=prompts[1])
    assert again["step"] == 3 and again["val/accuracy"] == whole["val/accuracy"]
    saved = json.loads((tmp_path / "whole" / "result.json").read_text())
    assert saved["val/accuracy"] == whole["val/accuracy"] and saved["start"] == whole["start"]


def test_prompt_sources_and_config_checks(tmp_path, base):
    assert world_spec("tinyworld:rl") == ("rl", (1, 2, 3, 4), None, 0)
    assert world_spec("tinyworld:rl:3,4") == ("rl", (3, 4), None, 0)
    assert world_spec("tinyworld:rl:2-4:test@7") == ("rl", (2, 3, 4), "test", 7)
    assert world_spec("tinyworld:rl:test:1") == ("rl", (1,), "test", 0)
    for bad in ("tinyworld:rl:9", "tinyworld:rl:easy", "tinyworld:rlx"):
        with pytest.raises(ValueError, match="expected tinyworld:rl"):
            world_spec(bad)
    task, records = load_source("tinyworld:rl:3-4@0")
    assert task.name == "tinyworld" and {r["level"] for r in records} == {3, 4}
    assert default_val_source("tinyworld:rl:3-4") == "tinyworld:rl:3,4:test@0" and default_val_source("x.jsonl") == ""
    for kw, match in [({"num_generations": 1}, "num_generations"), ({"reference": "lora"}, "needs method=lora"),
                      ({"reference": "none", "beta": 0.1}, "needs a reference"), ({"loss_type": "ppo"}, "loss_type"),
                      ({"reward_funcs": {"nope": 1.0}}, "unknown reward 'nope'"),
                      ({"reward_funcs": {"tests.nothing:fn": 1.0}}, "no module"),
                      ({"reward_funcs": {f"{HERE}:digit_reward": 1.0}, "allow_custom_rewards": False},
                       "allow_custom_rewards=true")]:
        with pytest.raises(ConfigError, match=match):
            run(config(tmp_path, base, **kw), train_records=[{"prompt": "1 + 1 = ?", "answer": "2"}] * 4,
                val_records=[])


def test_cli_registers_grpo_and_rloo(monkeypatch):
    from alignlab import cli
    from alignlab.recipes import grpo

    seen = []
    monkeypatch.setattr(grpo, "run", lambda cfg, resume: seen.append((cfg, resume)))
    assert cli.main(["grpo", "model=m", "rollout.num_generations=4"]) in (0, None)
    assert cli.main(["rloo", "--config", "configs/grpo/tinyworld.yaml", "--resume"]) in (0, None)
    (g, _), (r, resume) = seen
    assert type(g) is GRPOConfig and g.algorithm == "grpo" and g.rollout.num_generations == 4
    assert r.algorithm == "rloo" and r.beta == 0.05 and resume and r.rollout.data == "tinyworld:rl:3,4"


# ----------------------------------------------------------------------------------------------------------------
# Rollouts


def test_rollout_logps_match_the_engine_and_the_update_raises_good_completions(base, prompts):
    from alignlab.infer import Engine, SamplingParams
    from alignlab.objectives.rl import group_advantages, grpo_loss
    from alignlab.rl.rollout import completion_logps, generate_rollouts
    from alignlab.text import load_tokenizer

    tok, model = load_tokenizer(base), load_model(base)
    ids = [tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True) for r in prompts[0][:3]]
    G, seeds = 4, list(range(100, 112))
    params = SamplingParams(max_new_tokens=12, temperature=1.0)
    ro = generate_rollouts(model, tok, ids, G, params, seeds, tok.pad_token_id)
    assert ro.input_ids.shape[0] == 12 and ro.prompt_index.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    outs = Engine(model.eval(), tok).generate([i for i in ids for _ in range(G)],
                                              [SamplingParams(max_new_tokens=12, logprobs=True, seed=s) for s in seeds])
    with torch.no_grad():
        logps, entropy = completion_logps(model, ro.input_ids, ro.prompt_lens, ro.completion_ids, ro.completion_mask,
                                          entropy=True)
    for k, o in enumerate(outs):  # same draws (per-request seeds), same log-probs from the training forward
        n = len(o.token_ids)
        assert ro.completion_ids[k, :n].tolist() == o.token_ids and ro.completion_mask[k].sum() == n
        assert bool(ro.truncated[k]) == (o.finish_reason == "length")
        torch.testing.assert_close(logps[k, :n], torch.tensor(o.logprobs), atol=1e-4, rtol=0)
    assert (logps[ro.completion_mask == 0] == 0).all() and (entropy[ro.completion_mask == 1] > 0).all()

    # one SGD step on the GRPO loss raises the log-probability of completions with positive advantages
    rewards = torch.tensor([float(sum(c.isdigit() for c in t)) for t in ro.texts]) + torch.arange(12) % 3
    adv = group_advantages(rewards, G)
    model.train()
    logps, _ = completion_logps(model, ro.input_ids, ro.prompt_lens, ro.completion_ids, ro.completion_mask)
    loss, _ = grpo_loss(logps, None, None, adv, ro.completion_mask)  # dapo
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.05 * p.grad
        after, _ = completion_logps(model, ro.input_ids, ro.prompt_lens, ro.completion_ids, ro.completion_mask)
    gain = ((after - logps.detach()) * ro.completion_mask).sum(-1)
    assert (adv * gain).sum() > 0 and gain[adv > 0].mean() > gain[adv < 0].mean()


def test_held_out_answers_get_their_own_token_budget(tmp_path, base, prompts, monkeypatch):
    """rollout.eval_max_tokens: the held-out answers' budget; the rollouts keep max_completion_length."""
    import alignlab.rl.run as rl_run

    budgets = []
    real = rl_run.generate_replies

    def recording(model, tok, chats, max_new_tokens, *a, **kw):
        budgets.append(max_new_tokens)
        return real(model, tok, chats, max_new_tokens, *a, **kw)

    monkeypatch.setattr(rl_run, "generate_replies", recording)
    run(config(tmp_path, base, max_completion_length=6, eval_max_tokens=20), train_records=prompts[0],
        val_records=prompts[1])
    assert budgets and set(budgets) == {20}
    assert max(r["completions/max_length"] for r in metrics(tmp_path) if "loss" in r) <= 6
    with pytest.raises(ConfigError, match="eval_max_tokens"):
        run(config(tmp_path, base, eval_max_tokens=-1, name="bad"), train_records=prompts[0], val_records=[])
