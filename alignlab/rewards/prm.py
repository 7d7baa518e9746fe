r"""A process reward model as an RL reward: each completion scored by its weakest worked step.

    r(x, y) = min_{k=1..K} sigma(s_k(x, y))      K >= 1 worked steps in y
            = no_step  (0.0)                     K = 0: no work to check

s_k is the PRM's logit at the token that ends step k (`model/reward.score_positions`, as `alignlab prm train`
trained it: recipes/prm.py), and sigma(s_k) its probability that every step up to k is right (PRM800K's first-error
labels). The minimum is one of the two solution scores of Lightman et al. 2023, "Let's Verify Step by Step"
(arXiv:2305.20050; the other is the product, eval/rerank.py's prm_prod); Math-Shepherd (Wang et al. 2023,
arXiv:2312.08935) scores a solution by its weakest step too. A completion without a step gets 0, as in
eval/rerank.py: it shows nothing a PRM can vouch for. The steps are TinyWorld's "a op b = c" lines
(`tasks/tinyworld.worked_steps`), the only steps recipes/prm.py labels.

    reward = PRMReward("runs/prm/seed0/prm/model", device=policy_device)
    reward(prompts, completions)             # [0.83, 0.0, 0.41, ...]: one per completion, in trl's convention
    reward.step_probs(prompts, completions)  # [[0.97, 0.83], [], ...]: sigma(s_k) of each step

In a config: rollout.reward_funcs {"correctness": 1, "prm": 1} with rollout.prm_model=<dir> (rewards/registry.py).
The model is loaded once, in float32, on the policy's device, and run in eval mode without gradients, in batches,
with autocast switched off: the rollout may run under the policy's bf16 autocast, and the PRM's scores should not
depend on where it is called from.

Reward hacking. A learnt reward is a model, and the policy is optimised against it: it can learn to write steps the
PRM likes rather than right ones (Gao et al. 2022, arXiv:2210.10760, for preference reward models). TinyWorld's PRM
distrusts carries and trusts products (labs/03_reasoning_rl/README.md, "Process vs outcome reward models"), so a
policy can raise r by leaving out the hard steps or writing fewer of them (a minimum over fewer steps is higher).
Lab 03 measured it (labs/03_reasoning_rl/prm_reward.py, seed 0, the pipeline's GRPO settings): paid format 1 +
correctness 1 + prm 1, the policy cut its replies from 2.2 worked steps to 1.1, its PRM reward on held-out replies
rose from 0.32 to 0.68, and held-out accuracy fell from 41.2% to 3.5% (format + correctness alone: 40.8%). Watch
rewards/prm/mean against accuracy: the first rising while the second does not is over-optimisation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from alignlab.errors import ConfigError
from alignlab.model.reward import load_reward_model, score_positions
from alignlab.rewards.builtin import Completion, completion_text
from alignlab.tasks.tinyworld import step_ends as tinyworld_step_ends
from alignlab.text import load_tokenizer


def check_prm_model(reward_funcs: dict[str, float], prm_model: str) -> None:
    """ConfigError when the `prm` reward is asked for without the directory of its model."""
    if "prm" in reward_funcs and not prm_model:
        raise ConfigError("reward_funcs names prm, the process reward model's reward, but rollout.prm_model is not "
                          "set: give the directory `alignlab prm train kind=prm` wrote (<out_dir>/model)")


class PRMReward:
    """min_k sigma(s_k) over a completion's worked steps, `no_step` without one (module docstring).

    Args:
        model_dir: a PRM directory (recipes/prm.py's <out_dir>/model; `load_reward_model` reads it) holding its
            tokenizer.
        device: where the PRM runs, the policy's device (None: cpu).
        step_ends: text -> the character offsets that end its steps (default: TinyWorld's worked steps).
        batch_size: completions per forward pass.
        no_step: the reward of a completion without a step.

    Raises:
        ConfigError: model_dir is not a directory.
    """

    def __init__(self, model_dir: str | Path, device: str | torch.device | None = None,
                 step_ends: Callable[[str], list[int]] = tinyworld_step_ends, batch_size: int = 64,
                 no_step: float = 0.0):
        if not Path(model_dir).is_dir():
            raise ConfigError(f"rollout.prm_model={str(model_dir)!r} is not a directory: give the process reward "
                              "model's directory (alignlab prm train's <out_dir>/model)")
        self.model_dir, self.device = str(model_dir), torch.device(device or "cpu")
        self.model = load_reward_model(model_dir, device=self.device, dtype=torch.float32).eval()
        self.model.requires_grad_(False)
        self.tokenizer = load_tokenizer(model_dir)
        self.step_ends, self.batch_size, self.no_step = step_ends, batch_size, no_step
        self.__name__ = "prm_reward"

    def step_probs(self, prompts: Sequence, completions: Sequence[Completion]) -> list[list[float] | None]:
        """sigma(s_k) at each worked step of each completion; [] for a completion without one, None for one the
        PRM cannot read (its text does not come back from the tokenizer as it was: that completion alone is
        unscored, the RewardRunner counts it)."""
        texts = [completion_text(c) for c in completions]
        ends = [self.step_ends(t) for t in texts]
        with torch.autocast(self.device.type, enabled=False):  # score_positions runs without gradients
            try:
                logits = score_positions(self.model, self.tokenizer, list(prompts), texts, ends, self.batch_size)
            except ValueError:  # one completion at a time, to find the ones that fail
                logits = [self._one(p, t, e) for p, t, e in zip(prompts, texts, ends)]
        return [None if row is None else torch.sigmoid(torch.tensor(row, dtype=torch.float64)).tolist()
                for row in logits]

    def _one(self, prompt, text: str, ends: list[int]) -> list[float] | None:
        try:
            return score_positions(self.model, self.tokenizer, [prompt], [text], [ends], 1)[0]
        except ValueError:
            return None

    def __call__(self, prompts: Sequence | None = None, completions: Sequence[Completion] = (),
                 **kwargs) -> list[float | None]:
        if prompts is None or len(prompts) != len(completions):
            raise ValueError("prm_reward reads each completion after its prompt: pass one prompt per completion")
        return [None if p is None else min(p) if p else self.no_step for p in self.step_probs(prompts, completions)]

    def __repr__(self) -> str:
        return f"PRMReward({self.model_dir!r}, device={str(self.device)!r}, no_step={self.no_step})"
