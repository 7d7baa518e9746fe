"""Lab 02 exercises: sequence log-probs, DPO, IPO, SimPO, the win rate and the reward model's loss.

Fill in each function, then grade your work:

    alignlab lab check 2          # every exercise: PASS, FAIL (with what differs) or TODO
    alignlab lab check 2 2        # exercise 2 only
    alignlab lab solution 2 2     # the reference solution of exercise 2, once you have tried

(`python labs/02_preference_alignment/check.py [N ...]` grades the same way.) The checker runs your functions on
seeded inputs and compares them with alignlab's own code: values, and gradients where they matter. Write each one
from its docstring, not by calling the alignlab function it is checked against: that would pass and teach nothing.

Notation: y_w / y_l the chosen and rejected answers, pi the policy, pi_ref the frozen reference, sigma the logistic
function, and log-probs of a whole answer are sums over its tokens. Take log sigma(z) as F.logsigmoid(z): the
naive log(sigmoid(z)) is -inf once sigmoid(z) rounds to 0, and the checker tries pairs with a large margin.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: F401 (F.logsigmoid, F.log_softmax)

IGNORE_INDEX = -100


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exercise 1. The summed log-probability of each sequence's labelled tokens, and how many there are.

    logits [B, T, V]; labels [B, T] already aligned with them: labels[b, t] is the token that logits[b, t] predicts
    (the collator shifted the inputs left by one, so do not shift again), -100 on prompt and padding positions.

        sum[b]   = sum over t with labels[b, t] != -100 of log softmax(logits[b, t])[labels[b, t]]
        count[b] = the number of such t

    Returns (sum float32 [B], count int64 [B]); a row with no labels gives (0, 0). The checker backpropagates
    through sum, so gradients must reach the logits (and only at labelled positions).
    """
    raise NotImplementedError


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1,
             label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exercise 2. The DPO loss, with conservative DPO's label smoothing.

    From Rafailov et al. 2023 (cDPO: Mitchell 2023). Inputs: summed log-probs [B] of each pair's answers under pi
    (with gradient) and pi_ref. With the log-ratios c_w = pi_chosen - ref_chosen, c_l = pi_rejected - ref_rejected
    and h = c_w - c_l, per pair:

        loss = -(1 - eps) log sigma(beta h) - eps log sigma(-beta h)          eps = label_smoothing

    Returns (the mean loss over the pairs, chosen_rewards [B], rejected_rewards [B]), the implicit rewards being
    beta c_w and beta c_l, detached (they are logged, not trained).
    """
    raise NotImplementedError


def ipo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, chosen_len: torch.Tensor, rejected_len: torch.Tensor,
             beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exercise 3a. IPO's squared loss on length-averaged log-ratios.

    IPO (Azar et al. 2023, Eq. 17) with beta playing tau, as trl and alignlab write it. The log-ratios are averaged
    over each answer's tokens: with c_w, c_l as in exercise 2 and the completion lengths chosen_len, rejected_len
    [B] (integers, taken as at least 1):

        h_avg = c_w / chosen_len - c_l / rejected_len
        loss  = (h_avg - 1 / (2 beta))^2

    Returns (the mean loss, chosen_rewards, rejected_rewards) with the rewards as DPO's: beta c_w and beta c_l,
    summed (not averaged), detached.
    """
    raise NotImplementedError


def simpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, chosen_len: torch.Tensor,
               rejected_len: torch.Tensor, beta: float = 2.0,
               gamma: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exercise 3b. SimPO: no reference model, length-normalised rewards and a target margin gamma.

    SimPO (Meng et al. 2024). policy_chosen, policy_rejected: summed log-probs [B] under pi; lengths as in 3a
    (at least 1). The reward of an answer is beta times its average log-prob, and per pair:

        loss = -log sigma( beta pi_chosen / chosen_len - beta pi_rejected / rejected_len - gamma )

    Returns (the mean loss, chosen_rewards, rejected_rewards), the rewards beta * average log-prob, detached.
    """
    raise NotImplementedError


def win_rate(outcomes: list[str]) -> float:
    """Exercise 4. Model A's win rate over model B from pairwise verdicts, ties counted as half a win.

    outcomes: one verdict per prompt, "A" (A's answer won), "B" or "tie". As AlpacaEval and MT-Bench score it:

        win rate = (wins + ties / 2) / n          n = every verdict, ties included

    Returns a float in [0, 1]; nan for an empty list.
    """
    raise NotImplementedError


def reward_model_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                      margin: torch.Tensor | None = None, center_coefficient: float | None = None) -> torch.Tensor:
    """Exercise 5. The Bradley-Terry loss of a reward model, with an optional margin and centring term.

    Bradley-Terry: P(y_w preferred to y_l) = sigma(r_w - r_l) (InstructGPT, Ouyang et al. 2022). Inputs: the
    scalar rewards [B] the model gives each pair's chosen and rejected answers, with gradient. Per pair:

        loss = -log sigma(r_w - r_l - m)  +  c (r_w + r_l)^2

    m: margin [B] (Llama 2's graded preferences), 0 when None; c: center_coefficient, which pulls the rewards
    towards zero mean (Eisenstein et al. 2023), no term when None. Returns the mean over the pairs.
    """
    raise NotImplementedError
