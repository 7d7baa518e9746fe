"""Reward hacking, measured: how a proxy reward and the gold one part ways as optimisation against the proxy grows.

    curve = best_of_n_curve(proxy, gold, ns=(1, 2, 4, 8, 16, 32))   # proxy[i][j], gold[i][j]: prompt i, sample j
    rows = proxy_gold_from_run("runs/pipeline/grpo/metrics.jsonl")    # an RL run: train reward vs held-out accuracy
    plot_best_of_n(curve, "bon.png");  plot_proxy_gold(rows, "rl.png")

Best-of-n (Gao, Schulman & Hilton 2022, "Scaling Laws for Reward Model Overoptimization", arXiv:2210.10760): draw n
samples, keep the one the proxy (a reward model) scores highest. Its distance from the policy is known in closed
form, KL_bon(n) = log n - (n - 1) / n (Stiennon et al. 2020, arXiv:2009.01325), so one set of N samples a prompt
gives the whole curve: the proxy score of the pick rises with n by construction, and the gold score (the verifier:
is the answer right?) rises with it only as long as the proxy is right about what it rewards. Where gold flattens or
falls while proxy keeps rising, the proxy is being exploited.

Each point is exact, not a resample: among N samples sorted by proxy, a random n-subset's best is the one of rank
i (1 = lowest) with probability C(i - 1, n - 1) / C(N, n), so

    E[score of the best of n] = sum_i C(i - 1, n - 1) / C(N, n) * score_(i)

averaged over prompts (ties in proxy keep the samples' order).
"""

from __future__ import annotations

import json
import math
from pathlib import Path


def kl_best_of_n(n: int) -> float:
    """KL(best-of-n || policy) = log n - (n - 1) / n, in nats."""
    return math.log(n) - (n - 1) / n


def expected_best(proxy: list[float], scores: list[float], n: int) -> float:
    """E[scores of the sample a random n-subset's best proxy picks], exactly (module docstring)."""
    N = len(proxy)
    if not 1 <= n <= N:
        raise ValueError(f"n must be in 1..{N}, got {n}")
    order = sorted(range(N), key=lambda j: (proxy[j], -j))  # ascending; on ties the earlier sample ranks higher
    total = math.comb(N, n)
    return sum(math.comb(i, n - 1) / total * scores[j] for i, j in enumerate(order) if i >= n - 1)


def best_of_n_curve(proxy: list[list[float]], gold: list[list[float]], ns=(1, 2, 4, 8, 16, 32)) -> list[dict]:
    """For each n: KL, the mean proxy score and the mean gold score of the best-of-n pick, over prompts."""
    rows = []
    for n in ns:
        if n > min(len(p) for p in proxy):
            break
        rows.append({"n": n, "kl": kl_best_of_n(n),
                     "proxy": sum(expected_best(p, p, n) for p in proxy) / len(proxy),
                     "gold": sum(expected_best(p, g, n) for p, g in zip(proxy, gold)) / len(proxy)})
    return rows


def proxy_gold_from_run(metrics_jsonl: str | Path, proxy_key: str = "reward",
                        gold_key: str = "val/accuracy") -> list[dict]:
    """An RL run's held-out evaluations (gold: the verifier's accuracy on prompts it never trains on) beside the
    training reward it optimised (proxy), averaged over the steps since the previous evaluation:
    [{"step", "proxy", "gold"}]."""
    rows, window = [], []
    for line in Path(metrics_jsonl).read_text().splitlines():
        m = json.loads(line)
        if proxy_key in m:
            window.append(m[proxy_key])
        if gold_key in m and window:
            rows.append({"step": m["step"], "proxy": sum(window) / len(window), "gold": m[gold_key]})
            window = []
    return rows


def _plot(xs, series: dict[str, list[float]], xlabel: str, title: str, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from alignlab.train.metrics import save_figure

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for (name, ys), axis, color in zip(series.items(), (ax, ax.twinx()), ("#4c78a8", "#e45756")):
        axis.plot(xs, ys, marker="o", color=color, label=name)
        axis.set_ylabel(name, color=color)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return save_figure(fig, path)


def plot_best_of_n(curve: list[dict], path: str | Path) -> Path:
    return _plot([r["kl"] for r in curve], {"proxy (reward model)": [r["proxy"] for r in curve],
                                            "gold (verifier)": [r["gold"] for r in curve]},
                 "KL(best-of-n || policy), nats", "best-of-n: proxy vs gold", path)


def plot_proxy_gold(rows: list[dict], path: str | Path) -> Path:
    return _plot([r["step"] for r in rows], {"proxy (training reward)": [r["proxy"] for r in rows],
                                             "gold (held-out accuracy)": [r["gold"] for r in rows]},
                 "step", "RL: proxy vs gold", path)


def sample_replies(policy: str, records: list[dict], n: int, temperature: float = 1.0, max_tokens: int = 96,
                   seed: int = 0) -> list[str]:
    """n replies a record's prompt from the model directory `policy`, through the engine: reply j of record i is
    drawn with seed + i * n + j, so a rerun draws the same ones. Record-major: replies[i * n + j]."""
    from alignlab.eval.backends import GenRequest, LocalModel

    requests = [GenRequest(r["prompt"], max_tokens, temperature, (), seed + i * n + j)
                for i, r in enumerate(records) for j in range(n)]
    return LocalModel(policy).generate(requests)


def run_best_of_n(policy: str, reward_model: str, source: str, n: int = 32, limit: int = 100,
                  temperature: float = 1.0, max_tokens: int = 96, seed: int = 0, out: str | Path = "runs/bon") -> dict:
    """N samples a prompt of `source` (a tasks source: its rule is the gold score) from `policy`, scored by
    `reward_model` (the proxy, model/reward.py); writes bon.json, samples.jsonl and bon.png under `out`."""
    from alignlab.model.reward import load_reward_model, score
    from alignlab.tasks import load_source
    from alignlab.text import load_tokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    task, records = load_source(source, limit)
    replies = sample_replies(policy, records, n, temperature, max_tokens, seed)
    rm, rm_tok = load_reward_model(reward_model), load_tokenizer(reward_model)
    proxy_flat = score(rm, rm_tok, [r["prompt"] for r in records for _ in range(n)], replies)
    gold_flat = [task.reward(text, records[i // n]) for i, text in enumerate(replies)]
    proxy = [proxy_flat[i * n:(i + 1) * n] for i in range(len(records))]
    gold = [gold_flat[i * n:(i + 1) * n] for i in range(len(records))]
    ns = tuple(k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k <= n)
    curve = best_of_n_curve(proxy, gold, ns)
    result = {"policy": policy, "reward_model": reward_model, "source": source, "prompts": len(records),
              "samples_per_prompt": n, "temperature": temperature, "curve": curve}
    (out / "bon.json").write_text(json.dumps(result, indent=1))
    with open(out / "samples.jsonl", "w") as f:
        for i, text in enumerate(replies):
            f.write(json.dumps({"prompt": i // n, "reply": text, "proxy": proxy_flat[i], "gold": gold_flat[i]}) + "\n")
    plot_best_of_n(curve, out / "bon.png")
    return result
