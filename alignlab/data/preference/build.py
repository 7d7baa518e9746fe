"""Pair builders: samples and their scores -> preference pairs. Pure functions over strings; generating and
scoring the samples is the caller's job."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any


def _completion(prompt: Any, text: str) -> str | list[dict]:
    """A sample as the prompt's format wants it: a string, or [assistant message] after a message list."""
    return [{"role": "assistant", "content": text}] if isinstance(prompt, list) else text


def _distinct(texts: Sequence[str], scores: Sequence[float], stats: Counter) -> list[tuple[str, float]]:
    """(text, score) of the non-empty samples, each text once (its first score)."""
    seen, out = set(), []
    for text, score in zip(texts, scores, strict=True):
        if not isinstance(text, str) or not text.strip():
            stats["empty sample"] += 1
        elif text in seen:
            stats["duplicate sample"] += 1
        else:
            seen.add(text)
            out.append((text, float(score)))
    return out


def _pair(prompt: Any, chosen: tuple[str, float], rejected: tuple[str, float], **extra) -> dict:
    return {"prompt": prompt, "chosen": _completion(prompt, chosen[0]), "rejected": _completion(prompt, rejected[0]),
            "chosen_score": chosen[1], "rejected_score": rejected[1], **extra}


def pairs_from_scores(prompts: Sequence, samples: Sequence[Sequence[str]], scores: Sequence[Sequence[float]],
                      margin: float = 0.0, pairs_per_prompt: int = 1, stats: Counter | None = None) -> list[dict]:
    """A judge's scores -> pairs: per prompt the best-scored sample is chosen, the worst rejected (then
    the 2nd best and 2nd worst, ... up to pairs_per_prompt), kept when the scores differ by more than 0
    and by at least `margin`. Ties keep the earlier sample. Empty and repeated samples are skipped.
    Pairs are {"prompt", "chosen", "rejected", "chosen_score", "rejected_score"}, conversational when the
    prompt is a message list. `stats` (a Counter), if given, counts prompts, pairs and why none was made."""
    stats = Counter() if stats is None else stats
    if not len(prompts) == len(samples) == len(scores):
        raise ValueError(f"{len(prompts)} prompts, {len(samples)} sample lists, {len(scores)} score lists")
    pairs = []
    for i, (prompt, texts, values) in enumerate(zip(prompts, samples, scores)):
        if len(texts) != len(values):
            raise ValueError(f"prompt {i}: {len(texts)} samples but {len(values)} scores")
        stats["prompts"] += 1
        ranked = sorted(_distinct(texts, values, stats), key=lambda s: -s[1])  # (stable: ties keep their order)
        made = 0
        for k in range(min(pairs_per_prompt, len(ranked) // 2)):
            best, worst = ranked[k], ranked[-1 - k]
            if best[1] - worst[1] <= 0 or best[1] - worst[1] < margin:
                break
            pairs.append(_pair(prompt, best, worst))
            made += 1
        stats["pairs"] += made
        if not made:
            stats["no pair: fewer than 2 distinct samples" if len(ranked) < 2 else "no pair: scores within margin"] += 1
    return pairs


def pairs_from_verifier(prompts: Sequence, samples_per_prompt: Sequence[Sequence[str]],
                        verify: Callable[[str, Any], bool | float], references: Sequence | None = None,
                        min_margin: float = 0.0, pass_score: float = 1.0, pairs_per_prompt: int = 1,
                        stats: Counter | None = None) -> list[dict]:
    """A verifier -> pairs of a passing sample (chosen) and a failing one (rejected).

    verify(sample, reference) -> bool or a score, with reference = references[i] (e.g. the answer:
    alignlab.tasks.tinyworld.verify(output, answer) fits) or, without references, the prompt itself. A
    sample passes when its score >= pass_score (True counts 1). Per prompt, the best passing sample is
    paired with the worst failing one (then the next ones, up to pairs_per_prompt), kept when their
    scores differ by at least min_margin. Prompts whose samples all pass or all fail give no pair
    (counted in `stats`: "no pair: all passed" / "no pair: all failed")."""
    stats = Counter() if stats is None else stats
    if len(prompts) != len(samples_per_prompt) or (references is not None and len(references) != len(prompts)):
        raise ValueError(f"{len(prompts)} prompts, {len(samples_per_prompt)} sample lists"
                         + ("" if references is None else f", {len(references)} references"))
    pairs = []
    for i, (prompt, texts) in enumerate(zip(prompts, samples_per_prompt)):
        stats["prompts"] += 1
        ref = prompt if references is None else references[i]
        scored = _distinct(texts, [float(verify(t, ref)) if isinstance(t, str) and t.strip() else 0.0 for t in texts],
                           stats)
        passed = sorted((s for s in scored if s[1] >= pass_score), key=lambda s: -s[1])
        failed = sorted((s for s in scored if s[1] < pass_score), key=lambda s: s[1])
        made = 0
        for best, worst in list(zip(passed, failed))[:pairs_per_prompt]:
            if best[1] - worst[1] < min_margin:
                break
            pairs.append(_pair(prompt, best, worst))
            made += 1
        stats["pairs"] += made
        if not made:
            stats["no pair: all failed" if not passed else "no pair: all passed" if not failed
                  else "no pair: scores within margin"] += 1
    return pairs


def persona_pairs(prompts: Sequence, chosen_with_persona: Sequence[str | None], rejected_without: Sequence[str | None],
                  persona: str | None = None, stats: Counter | None = None) -> list[dict]:
    """Replies generated with a persona system prompt (chosen) over replies to the same prompt generated
    without it (rejected): the model learns to act the persona without being told. The training prompt
    is the prompt without the persona: give `persona` and a leading system message holding exactly it is
    removed from a message-list prompt. A missing (None) or empty reply, or two equal replies, give no
    pair (counted in `stats`)."""
    stats = Counter() if stats is None else stats
    if not len(prompts) == len(chosen_with_persona) == len(rejected_without):
        raise ValueError(f"{len(prompts)} prompts, {len(chosen_with_persona)} chosen, {len(rejected_without)} rejected")
    pairs = []
    for prompt, chosen, rejected in zip(prompts, chosen_with_persona, rejected_without):
        stats["prompts"] += 1
        if persona is not None and isinstance(prompt, list) and prompt[:1] == [{"role": "system", "content": persona}]:
            prompt = prompt[1:]
        if not all(isinstance(t, str) and t.strip() for t in (chosen, rejected)):
            stats["no pair: empty reply"] += 1
        elif chosen.strip() == rejected.strip():
            stats["no pair: identical replies"] += 1
        else:
            pairs.append({"prompt": prompt, "chosen": _completion(prompt, chosen),
                          "rejected": _completion(prompt, rejected)})
            stats["pairs"] += 1
    return pairs
