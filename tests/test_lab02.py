"""Lab 02's grader: the stubs are TODO, the reference solutions pass, and each planted bug fails its exercise."""

from __future__ import annotations

from .lab_check import assert_lab

PLANTED = {
    1: [("token_logps = token_logps * mask  #", "token_logps = token_logps  #"),  # forgetting the -100 mask
        ("logp = F.log_softmax(logits.float(), dim=-1)",  # shifting labels that are already aligned
         "logp = F.log_softmax(logits.float(), dim=-1)[:, :-1]\n    labels = labels[:, 1:]"),
        ("return token_logps.sum(-1), mask.sum(-1)", "return token_logps.sum(-1), mask.sum(-1) - 1")],
    2: [("losses = -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)",  # the sigmoid's sign flipped
         "losses = -(1 - eps) * F.logsigmoid(-z) - eps * F.logsigmoid(z)"),
        ("return losses.mean(), beta * chosen_logratios.detach(), beta * rejected_logratios.detach()\n\n\ndef ipo",
         "return losses.mean(), chosen_logratios.detach(), rejected_logratios.detach()\n\n\ndef ipo"),  # no beta
        ("losses = -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)",  # overflows at large margins
         "losses = -(1 - eps) * torch.log(torch.sigmoid(z)) - eps * torch.log(torch.sigmoid(-z))"),
        ("z = beta * (chosen_logratios - rejected_logratios)", "z = beta * (policy_chosen - policy_rejected)")],
    3: [("h_avg = chosen_logratios / chosen_len.clamp(min=1) - rejected_logratios / rejected_len.clamp(min=1)",
         "h_avg = chosen_logratios - rejected_logratios"),  # IPO without the length averaging
        ("losses = (h_avg - 1 / (2 * beta)) ** 2", "losses = (h_avg - 1 / beta) ** 2"),  # the target 1/beta
        ("rejected_logratios / rejected_len.clamp(min=1)", "rejected_logratios / rejected_len"),  # 0 tokens: inf
        ("losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)",  # the margin inside beta
         "losses = -F.logsigmoid(chosen_rewards - rejected_rewards - beta * gamma)"),
        ("losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)",  # the margin's sign
         "losses = -F.logsigmoid(chosen_rewards - rejected_rewards + gamma)")],
    4: [('score = {"A": 1.0, "tie": 0.5, "B": 0.0}', 'score = {"A": 1.0, "tie": 0.0, "B": 0.0}'),  # ties as losses
        ("return sum(score[o] for o in outcomes) / len(outcomes)",  # ties dropped from the count
         "return sum(o == 'A' for o in outcomes) / max(1, sum(o != 'tie' for o in outcomes))")],
    5: [("diff = diff - margin", "diff = diff + margin"),  # the margin added instead of subtracted
        ("center_coefficient * (chosen_rewards + rejected_rewards) ** 2",
         "center_coefficient * (chosen_rewards - rejected_rewards) ** 2"),  # centring the difference, not the sum
        ("losses = -F.logsigmoid(diff)\n    if center", "losses = -torch.log(torch.sigmoid(diff))\n    if center")],
}


def test_stubs_todo_solutions_pass_planted_bugs_fail(tmp_path):
    assert_lab(2, PLANTED, tmp_path)
