"""Rejection sampling (RFT, best-of-n): draw n replies per prompt, score them, keep the good ones as training data.

    replies = sample(model, records, n=8, temperature=1.0)          # [prompt][n] texts
    scores = verifier_scores(task, records, replies)                # a task's checker: 1.0 right, 0.0 wrong
    sft = sft_records(records, replies, scores, keep="all")         # every verified reply -> trl chats
    pairs = preference_records(records, replies, scores)            # best vs worst -> trl preference pairs
    curve = best_of_n_curve(scores, correct)                        # what choosing the best of n buys, n = 1..N
    data, counts, curve = verified_sft_data(model, task, records, n=8, per_prompt=2)   # all of it, RFT's data

Rejection-sampling fine-tuning (Yuan et al. 2023, arXiv:2308.01825, "Scaling Relationship on Learning Mathematical
Reasoning with LLMs") trains on the model's own replies that a verifier accepts: the model already *can* solve
some problems some of the time, and SFT on those samples makes it do so more often (expert iteration; STaR,
Zelikman et al. 2022). With a reward model instead of a verifier it is best-of-n distillation.

The best-of-n curve is exact, not resampled: with N scored replies sorted by score, the i-th lowest
(1-based) is the best of a random n-subset with probability C(i-1, n-1) / C(N, n), so

    E[accuracy of the best of n]  = sum_i correct_(i) C(i-1, n-1) / C(N, n)
    E[score of the best of n]     = sum_i score_(i)   C(i-1, n-1) / C(N, n)

With the verifier as the scorer the first is pass@n (Chen et al. 2021's unbiased estimator); with a reward model
the two part where the reward model is wrong (Gao et al. 2022, reward-model overoptimization).
"""

from __future__ import annotations

from math import comb

from alignlab.eval.backends import GenRequest
from alignlab.tasks import prompt_messages

KEEP = ("best", "all")


def sample(model, records: list[dict], n: int, temperature: float = 1.0, max_tokens: int = 256, seed: int = 0,
           batch: int = 64, progress: bool = True) -> list[list[str]]:
    """n replies to each record's prompt (seeded per reply, so a rerun draws the same ones)."""
    from tqdm import tqdm

    requests = [GenRequest(r["prompt"], max_tokens=max_tokens, temperature=temperature,
                           seed=seed * 1_000_003 + i * n + j) for i, r in enumerate(records) for j in range(n)]
    texts: list[str] = []
    with tqdm(total=len(requests), desc=f"sampling {n} per prompt", unit="reply", disable=not progress) as bar:
        for i in range(0, len(requests), batch):
            texts += model.generate(requests[i:i + batch])
            bar.update(min(batch, len(requests) - i))
    return [texts[i * n:(i + 1) * n] for i in range(len(records))]


def verifier_scores(task, records: list[dict], replies: list[list[str]]) -> list[list[float]]:
    """The task's own reward of every reply (1.0 right, 0.0 wrong for a verifiable task)."""
    return [[task.reward(t, r) for t in texts] for r, texts in zip(records, replies)]


def reward_model_scores(reward_model, tokenizer, records: list[dict], replies: list[list[str]],
                        batch_size: int = 16) -> list[list[float]]:
    """A trained reward model's score of every reply (alignlab.model.reward)."""
    from alignlab.model.reward import score

    prompts = [r["prompt"] for r, texts in zip(records, replies) for _ in texts]
    flat = score(reward_model, tokenizer, prompts, [t for texts in replies for t in texts], batch_size=batch_size)
    out, i = [], 0
    for texts in replies:
        out.append([float(s) for s in flat[i:i + len(texts)]])
        i += len(texts)
    return out


def sft_records(records: list[dict], replies: list[list[str]], scores: list[list[float]], keep: str = "all",
                threshold: float = 1.0, per_prompt: int | None = None) -> tuple[list[dict], dict]:
    """trl chat records from the replies scoring >= threshold: all of them (distinct texts, up to `per_prompt`)
    or the best one per prompt. Returns the records and counts (prompts with none kept are reported)."""
    if keep not in KEEP:
        raise ValueError(f"keep must be one of {KEEP}, got {keep!r}")
    out, empty, duplicates = [], 0, 0
    for r, texts, s in zip(records, replies, scores):
        order = sorted(range(len(texts)), key=lambda j: -s[j])
        good = [j for j in order if s[j] >= threshold]
        seen, chosen = set(), []
        for j in good:
            if texts[j] in seen:
                duplicates += 1
                continue
            seen.add(texts[j])
            chosen.append(j)
        chosen = chosen[:1] if keep == "best" else chosen[:per_prompt]
        if not chosen:
            empty += 1
        for j in chosen:
            out.append({"messages": prompt_messages(r["prompt"]) + [{"role": "assistant", "content": texts[j]}],
                        **{k: r[k] for k in ("id", "level", "answer") if k in r}, "score": s[j]})
    counts = {"prompts": len(records), "replies": sum(map(len, replies)), "kept": len(out),
              "prompts_with_none": empty, "duplicates_skipped": duplicates, "keep": keep, "threshold": threshold}
    return out, counts


def preference_records(records: list[dict], replies: list[list[str]],
                       scores: list[list[float]]) -> tuple[list[dict], dict]:
    """One trl preference pair per prompt whose best reply outscores its worst: chosen = best, rejected = worst."""
    out, ties = [], 0
    for r, texts, s in zip(records, replies, scores):
        best, worst = max(range(len(texts)), key=lambda j: s[j]), min(range(len(texts)), key=lambda j: s[j])
        if s[best] <= s[worst]:
            ties += 1
            continue
        out.append({"prompt": prompt_messages(r["prompt"]), "chosen": [{"role": "assistant", "content": texts[best]}],
                    "rejected": [{"role": "assistant", "content": texts[worst]}],
                    **{k: r[k] for k in ("id", "level", "answer") if k in r},
                    "score_chosen": s[best], "score_rejected": s[worst]})
    return out, {"prompts": len(records), "pairs": len(out), "all_tied": ties}


def best_of_n_curve(scores: list[list[float]], correct: list[list[bool]],
                    ns: list[int] | None = None) -> dict:
    """Expected accuracy and score of the best-scoring reply among n, for each n (exact, see the module)."""
    N = min(len(s) for s in scores)
    ns = ns or [n for n in (1, 2, 4, 8, 16, 32, 64, 128) if n <= N]
    accuracy, score = [], []
    for n in ns:
        acc = sc = 0.0
        for s, c in zip(scores, correct):
            order = sorted(range(N), key=lambda j: (s[j], c[j]))  # a tie counts the right reply as the higher
            for i, j in enumerate(order, 1):
                w = comb(i - 1, n - 1) / comb(N, n)
                acc += w * c[j]
                sc += w * s[j]
        accuracy.append(acc / len(scores))
        score.append(sc / len(scores))
    return {"n": ns, "accuracy": accuracy, "score": score, "samples_per_prompt": N, "prompts": len(scores)}


def verified_sft_data(model, task, records: list[dict], n: int, per_prompt: int | None = None,
                      temperature: float = 1.0, max_tokens: int = 256, seed: int = 0) -> tuple[list[dict], dict, dict]:
    """Rejection-sampling fine-tuning's data: n samples per prompt scored by the task's verifier, up to `per_prompt`
    distinct right ones per prompt as trl chats, their counts, and the best-of-n curve of the samples."""
    replies = sample(model, records, n, temperature, max_tokens, seed)
    scores = verifier_scores(task, records, replies)
    curve = best_of_n_curve(scores, [[s > 0 for s in row] for row in scores])
    data, counts = sft_records(records, replies, scores, keep="all", per_prompt=per_prompt)
    return data, counts, curve


def plot_best_of_n(curve: dict, out_png, title: str = "best of n") -> None:
    """Accuracy and mean score of the chosen reply against n (log axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from alignlab.train.metrics import save_figure

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(curve["n"], curve["accuracy"], "o-", label="accuracy of the chosen reply")
    ax.plot(curve["n"], curve["score"], "s--", label="its score (the scorer's view)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(curve["n"], [str(n) for n in curve["n"]])
    ax.set_xlabel("n replies drawn per prompt")
    ax.set_ylim(0, max(1.0, max(curve["score"])))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, out_png)
