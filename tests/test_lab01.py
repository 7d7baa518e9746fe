"""Lab 01's grader: the stubs are TODO, the reference solutions pass, and each planted bug fails its exercise."""

from __future__ import annotations

from .lab_check import assert_lab

PLANTED = {
    1: [("labels.append(ids[t + 1] if trained[t + 1] else IGNORE_INDEX)",  # the mask not shifted with the ids
         "labels.append(ids[t + 1] if trained[t] else IGNORE_INDEX)"),
        ("labels.append(ids[t + 1] if trained[t + 1] else IGNORE_INDEX)",  # labels not masked: trains the prompt
         "labels.append(ids[t + 1])"),
        ("labels.append(ids[t + 1] if", "labels.append(ids[t] if")],  # no shift: predicts the token it reads
    2: [("return alpha / math.sqrt(r) if rslora else alpha / r",  # scaling by alpha instead of alpha / r
         "return alpha / math.sqrt(r) if rslora else alpha"),
        ("alpha / math.sqrt(r) if rslora", "alpha / r if rslora"),  # rsLoRA without the square root
        ("(x @ A.T) @ B.T)", "(x @ A.T) @ B.T).detach()"),  # no gradient reaches A and B
        ("W + _lora_scale(alpha, r, rslora) * (B @ A)",  # merge with the product transposed
         "W + _lora_scale(alpha, r, rslora) * (A.T @ B.T)"),
        ("W + _lora_scale(alpha, r, rslora) * (B @ A)", "W + B @ A")],  # merged without the scale
    3: [("total += r * in_features + out_features * r", "total += r * in_features * out_features"),  # a full matrix
        ("total += out_features  #", "total += in_features  #")],  # DoRA's magnitude per input column
    4: [("scale = chunk.abs().max()", "scale = w.abs().max()"),  # absmax of the whole tensor, not per block
        ("scale = chunk.abs().max()", "scale = chunk.max()"),  # max instead of the absolute max
        ("codes.append((x[:, None] > mids[None, :]).sum(dim=1))",  # nearest by distance: ties go astray
         "codes.append((x[:, None] - levels[None, :]).abs().argmin(dim=1))"),
        ("x = chunk / scale if scale > 0 else torch.zeros_like(chunk)", "x = chunk / scale"),  # 0 / 0 in a zero block
        ("block_of = torch.arange(codes.numel()) // block", "block_of = torch.arange(codes.numel()) % absmax.numel()")],
    5: [("return 1.0 - total / tokens", "return total / tokens"),  # the mean cosine, not 1 minus it
        ("(a * b).sum(dim=-1) / (a.norm(dim=-1) * b.norm(dim=-1))",  # cosine over the tokens, not the features
         "(a * b).sum(dim=-2) / (a.norm(dim=-2) * b.norm(dim=-2))"),
        ("        tokens += cos.numel()", "        tokens += 1"),  # the mean over batches, not tokens
        ("    order = sorted(keep)", "    order = list(keep)"),  # the blocks renumbered in the order given
        ("                continue  # a removed block", "                pass  # a removed block")],
}


def test_stubs_todo_solutions_pass_planted_bugs_fail(tmp_path):
    assert_lab(1, PLANTED, tmp_path)
