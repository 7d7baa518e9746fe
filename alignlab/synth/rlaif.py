"""RLAIF: preference pairs labelled by a judge instead of people (Bai et al. 2022, Constitutional AI's RL phase;
Lee et al. 2023, arXiv:2309.00267).

    replies = rejection.sample(policy, records, n=2, temperature=1.0)    # two of the policy's own replies each
    pairs, counts = ai_feedback_pairs(records, replies, judge)            # trl preference records
    agreement = judge_agreement(records, replies, judge, rule_judge)      # how often two judges pick the same

Each pair is judged in both orders (alignlab.eval.judge.judge_pairs): a verdict that flips with the order, or a
tie, labels nothing and is counted, not guessed. The pairs then go to `alignlab dpo` like any preference data.
"""

from __future__ import annotations

from alignlab.eval.judge import Judge, judge_pairs
from alignlab.tasks import prompt_messages


def _items(records: list[dict], replies: list[list[str]]) -> list[tuple]:
    """(prompt, a, b, record) for the first two distinct replies of each record (None where all are equal)."""
    items = []
    for r, texts in zip(records, replies):
        other = next((t for t in texts[1:] if t != texts[0]), None)
        items.append(None if other is None else (r["prompt"], texts[0], other, r))
    return items


def ai_feedback_pairs(records: list[dict], replies: list[list[str]], judge: Judge,
                      swap: bool = True) -> tuple[list[dict], dict]:
    """trl preference pairs {"prompt", "chosen", "rejected"} from the judge's consistent verdicts."""
    items = _items(records, replies)
    judged = [it for it in items if it is not None]
    results = judge_pairs(judge, judged, swap=swap)
    pairs, ties, inconsistent = [], 0, 0
    for (prompt, a, b, r), res in zip(judged, results):
        if not res.agreed:
            inconsistent += 1
            continue
        if res.outcome == "tie":
            ties += 1
            continue
        chosen, rejected = (a, b) if res.outcome == "A" else (b, a)
        pairs.append({"prompt": prompt_messages(prompt), "chosen": [{"role": "assistant", "content": chosen}],
                      "rejected": [{"role": "assistant", "content": rejected}],
                      **{k: r[k] for k in ("id", "label", "level", "answer") if k in r}})
    counts = {"prompts": len(records), "identical_replies": len(items) - len(judged), "judged": len(judged),
              "inconsistent": inconsistent, "ties": ties, "pairs": len(pairs)}
    return pairs, counts


def judge_agreement(records: list[dict], replies: list[list[str]], judge: Judge, other: Judge) -> dict:
    """How often two judges give the same outcome (A, B or tie, both orders) on the same pairs, and on the pairs
    where `other` picks a winner, how often `judge` picks the same one."""
    judged = [it for it in _items(records, replies) if it is not None]
    mine, theirs = judge_pairs(judge, judged), judge_pairs(other, judged)
    same = sum(m.outcome == t.outcome for m, t in zip(mine, theirs))
    decided = [(m, t) for m, t in zip(mine, theirs) if t.outcome != "tie"]
    return {"pairs": len(judged), "same_outcome": same / max(len(judged), 1),
            "other_decided": len(decided),
            "same_winner_where_other_decided": sum(m.outcome == t.outcome for m, t in decided) / max(len(decided), 1)}
