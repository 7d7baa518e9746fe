"""The `prm` reward: min_k sigma(s_k) over a completion's worked steps, checked against the reward model's head read
by hand; a completion without steps; the config errors; the registry builds it with its weight."""

from __future__ import annotations

import pytest
import torch

from alignlab.errors import ConfigError
from alignlab.model.reward import RewardModel, reply_positions, reward_input_ids, save_reward_model
from alignlab.rewards.prm import PRMReward
from alignlab.rewards.registry import build_reward_funcs
from alignlab.rl.collect import RolloutConfig
from alignlab.tasks import task_for

PROMPT = [{"role": "user", "content": "What is 7 * 58?"}]
RIGHT = "<think>7 * 50 = 350\n7 * 8 = 56\n350 + 56 = 406</think>\nAnswer: 406"
SLIP = "<think>7 * 50 = 350\n7 * 8 = 54\n350 + 54 = 404</think>\nAnswer: 404"
NO_STEP = "<think>I know it.</think>\nAnswer: 406"


@pytest.fixture(scope="module")
def prm_dir(tmp_path_factory, base, world):
    """A tiny random PRM: the conftest Llama with a new scalar head, its head scaled up so that steps differ."""
    torch.manual_seed(0)
    model = RewardModel.from_causal_lm(base)
    with torch.no_grad():
        model.score.weight.mul_(50.0)
    return save_reward_model(model, tmp_path_factory.mktemp("prm"), tokenizer=world.tokenizer())


def by_hand(model: RewardModel, tok, prompt, reply: str, ends: list[int]) -> float:
    """min over steps of sigmoid(head at the token that ends the step), one unpadded sequence, no batching."""
    ids = reward_input_ids(tok, prompt, reply)
    with torch.no_grad():
        s = model.token_rewards(torch.tensor([ids]))[0]  # [T]
    return torch.sigmoid(s[reply_positions(tok, ids, reply, ends)]).min().item()


def test_reward_is_the_weakest_steps_probability(prm_dir, world):
    reward = PRMReward(prm_dir, batch_size=2)  # 3 completions: a padded batch and a batch of one
    tok, model = reward.tokenizer, reward.model
    steps = {RIGHT: ["7 * 50 = 350", "7 * 8 = 56", "350 + 56 = 406"],
             SLIP: ["7 * 50 = 350", "7 * 8 = 54", "350 + 54 = 404"]}
    expect = [by_hand(model, tok, PROMPT, text, [text.index(line) + len(line) for line in lines])
              for text, lines in steps.items()]
    got = reward(prompts=[PROMPT] * 3, completions=[RIGHT, SLIP, [{"role": "assistant", "content": RIGHT}]],
                 answer=["406"] * 3)
    assert got[:2] == pytest.approx(expect, abs=1e-5)
    assert got[2] == pytest.approx(got[0], abs=1e-6)  # a conversational completion: scored on its reply
    probs = reward.step_probs([PROMPT], [RIGHT])[0]
    assert len(probs) == 3 and min(probs) == pytest.approx(got[0]) and len(set(probs)) > 1
    assert all(0.0 < p < 1.0 for p in probs)


def test_no_step_no_reward(prm_dir):
    assert PRMReward(prm_dir)([PROMPT, PROMPT], [NO_STEP, ""]) == [0.0, 0.0]
    assert PRMReward(prm_dir, no_step=-1.0)([PROMPT], [NO_STEP]) == [-1.0]


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="rollout.prm_model is not set"):
        RolloutConfig(reward_funcs={"correctness": 1.0, "prm": 1.0}).check()
    with pytest.raises(ConfigError, match="rollout.prm_model is not set"):
        build_reward_funcs({"prm": 1.0}, task_for("tinyworld:rl"), 16)
    with pytest.raises(ConfigError, match="is not a directory"):
        build_reward_funcs({"prm": 1.0}, task_for("tinyworld:rl"), 16, prm_model=str(tmp_path / "missing"))
    RolloutConfig(reward_funcs={"prm": 1.0}, prm_model="somewhere").check()  # set: fine until it is loaded


def test_registry_builds_it_with_its_weight(prm_dir):
    fns, weights, names = build_reward_funcs({"correctness": 1.0, "prm": 0.5}, task_for("tinyworld:rl"), 16,
                                             prm_model=str(prm_dir), device="cpu")
    assert names == ["correctness", "prm"] and weights == [1.0, 0.5]
    assert isinstance(fns[1], PRMReward) and fns[1].device == torch.device("cpu")
    assert not any(p.requires_grad for p in fns[1].model.parameters())
