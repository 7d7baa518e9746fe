"""`python -m alignlab.data.world [--seed S] [--size default|quick] [--examples] [--stats]`

Prints one record of every kind (what README.md shows) and/or the dataset sizes and token-length
statistics measured with the world's tokenizer and chat template."""

from __future__ import annotations

import argparse
import json
import re
import time

from alignlab.data.world import MATH_LEVELS, PAIR_KINDS, TinyWorld


def _dump(record: dict) -> str:
    """JSON with one line per message (and per top-level field): real records, readable."""
    lines = []
    for key, value in record.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value) and key != "tools":
            items = ",\n".join(f"    {json.dumps(v, ensure_ascii=False)}" for v in value)
            lines.append(f'  "{key}": [\n{items}\n  ]')
        else:
            lines.append(f'  "{key}": {json.dumps(value, ensure_ascii=False)}')
    return "{\n" + ",\n".join(lines) + "\n}"


def _show(title: str, record: dict) -> None:
    print(f"### {title}\n\n```json\n{_dump(record)}\n```\n")


def _is_facts(doc: str) -> bool:
    return all(re.fullmatch(r"[\d +*/-]+ = \d+", line) for line in doc.split("\n"))


# one document of each kind the generator writes
PRETRAINING_KINDS = {
    "arithmetic facts": _is_facts,
    "a worked solution (question form)": lambda d: d.startswith("Question:"),
    "a worked solution (equation form)": lambda d: "= ?\n" in d and d.count("\n") >= 3,
    "column addition": lambda d: "in columns" in d and "carry 1" in d,
    "a word problem": lambda d: "How many" in d and "\nAnswer:" in d,
    "town sentences": lambda d: " is the " in d and "\n" not in d,
}


def examples(world: TinyWorld) -> None:
    from alignlab.text import render_chat
    from alignlab.text.template import render_template

    docs = world.pretraining_documents()
    print("### pretraining documents\n")
    for title, test in PRETRAINING_KINDS.items():
        print(f"{title}:\n\n```text\n{next(d for d in docs if test(d))}\n```\n")
    sft = world.sft_conversations("train")
    for level in MATH_LEVELS:
        _show(f"SFT, math level {level}", next(r for r in sft if r.get("level") == level))
    for kind in ("refusal", "lookalike", "qa"):
        _show(f"SFT, {kind}", next(r for r in sft if r["kind"] == kind))
    pairs = world.preference_pairs("train")
    for kind in PAIR_KINDS:
        _show(f"preference pair, {kind}", next(p for p in pairs if p["kind"] == kind))
    _show("RL prompt (test split, level 3)", world.rl_prompts("test", 3)[0])
    tools = world.tool_conversations("train")
    call = next(r for r in tools if r["kind"] == "tool_call")
    _show("tool conversation (calls the calculator)", call)
    _show("tool conversation (no call needed)", next(r for r in tools if r["kind"] == "direct"))
    _show("tool prompt (test split)", world.tool_prompts("test")[0])
    safety = world.safety_prompts("test")
    _show("safety prompt, attack (test split)", next(r for r in safety if r["label"] == "attack"))
    _show("safety prompt, look-alike (test split)", next(r for r in safety if r["label"] == "benign"))

    tok = world.tokenizer()
    text = render_template(world.chat_template, call["messages"], tools=call["tools"])
    ids, mask = render_chat(tok, call["messages"], tools=call["tools"])
    print(f"### the tool conversation as the model sees it ({len(ids)} tokens)\n\n```text\n{text}\n```\n")
    pieces = "".join(f"[{tok.decode([i])}]" if m else tok.decode([i]) for i, m in zip(ids, mask))
    print(f"tokens, [assistant tokens] in brackets (mask 1):\n\n```text\n{pieces}\n```\n")


def _stats(lengths: list[int]) -> str:
    xs = sorted(lengths)
    if not xs:
        return "-"
    return f"{sum(xs) / len(xs):.0f} / {xs[len(xs) // 2]} / {xs[int(len(xs) * 0.95)]} / {xs[-1]}"


def stats(world: TinyWorld) -> None:
    from alignlab.text import render_chat

    t0 = time.time()
    tok = world.tokenizer()
    t_tok = time.time() - t0
    text = world.pretraining_text()
    n_pre = len(tok.encode(text, add_special_tokens=False))
    print(f"{world!r}: tokenizer {tok.vocab_size} ids, trained in {t_tok:.1f} s")
    n_docs = len(world.pretraining_documents())
    print(f"pretraining: {n_docs:,} documents, {len(text):,} characters, {n_pre:,} tokens\n")
    print("| records | split | count | tokens mean / p50 / p95 / max |")
    print("|---|---|---|---|")

    def chat_len(messages, tools=None):
        return len(render_chat(tok, messages, tools=tools).ids)

    for split in ("train", "test"):
        sft = world.sft_conversations(split)
        for kind in ("math", "refusal", "lookalike", "qa"):
            rs = [r for r in sft if r["kind"] == kind]
            lens = [chat_len(r["messages"]) for r in rs]
            print(f"| sft_conversations {kind} | {split} | {len(rs)} | {_stats(lens)} |")
        pairs = world.preference_pairs(split)
        for kind in PAIR_KINDS:
            ps = [p for p in pairs if p["kind"] == kind]
            lens = [chat_len(p["prompt"] + p[side]) for p in ps for side in ("chosen", "rejected")]
            print(f"| preference_pairs {kind} (prompt + reply) | {split} | {len(ps)} | {_stats(lens)} |")
        rl = world.rl_prompts(split)
        per_level = {lv: sum(r["level"] == lv for r in rl) for lv in MATH_LEVELS}
        lens = [len(render_chat(tok, r["prompt"], add_generation_prompt=True).ids) for r in rl]
        print(f"| rl_prompts levels 1-4 {per_level} (prompt only) | {split} | {len(rl)} | {_stats(lens)} |")
        tools = world.tool_conversations(split)
        for kind in ("tool_call", "direct"):
            rs = [r for r in tools if r["kind"] == kind]
            lens = [chat_len(r["messages"], r["tools"]) for r in rs]
            print(f"| tool_conversations {kind} | {split} | {len(rs)} | {_stats(lens)} |")
        tp = world.tool_prompts(split)
        lens = [len(render_chat(tok, r["prompt"], tools=r["tools"], add_generation_prompt=True).ids) for r in tp]
        print(f"| tool_prompts (prompt only) | {split} | {len(tp)} | {_stats(lens)} |")
        sp = world.safety_prompts(split)
        for label in ("attack", "benign"):
            rs = [r for r in sp if r["label"] == label]
            lens = [len(render_chat(tok, r["prompt"], add_generation_prompt=True).ids) for r in rs]
            print(f"| safety_prompts {label} (prompt only) | {split} | {len(rs)} | {_stats(lens)} |")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m alignlab.data.world", description=__doc__)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", default="default", choices=("default", "quick"))
    parser.add_argument("--examples", action="store_true", help="one record of every kind (the default)")
    parser.add_argument("--stats", action="store_true", help="dataset sizes and token lengths")
    args = parser.parse_args()
    world = TinyWorld(args.seed, args.size)
    if args.examples or not args.stats:
        examples(world)
    if args.stats:
        stats(world)


if __name__ == "__main__":
    main()
