"""TinyWorld's tool-use evaluation: does the model call the right tool with the right arguments when one is needed,
call nothing when none is, and answer from what the tool returned?

    metrics, rows = evaluate_tool_use(model, tokenizer, world, world.service_conversations("test"))

Each held-out record's prompt (system + user, every tool listed) is answered greedily. If the reply calls tools,
the calls run (ToolBox over the town's services: the weather, a fresh calendar, the directory, the calculator), their
results join the conversation, and the model answers again. Metrics, each a fraction of its prompts:
    call_rate     a call where a tool is needed
    exact_call    where one is needed: exactly one call, the expected function with exactly the expected arguments
    no_call       where none is needed (irrelevance): no call
    answer        where a tool is needed: the final reply, after the calls ran, holds every fact the reference
                  answer does (the temperatures read from the tool, the event's times, the directory entry,
                  "Answer: N")
    answer_<kind> the same per kind (weather, event, lookup, calculator), and for "direct" (no tool needed) the
                  reply's "Answer: N" with no call: the arithmetic the tool-use training kept
"""

from __future__ import annotations

from alignlab.data.world.services import KINDS
from alignlab.envs.tool_task import town_toolbox
from alignlab.infer import Engine, SamplingParams
from alignlab.tools.agent import assistant_message
from alignlab.tools.calls import parse_calls


def _generate(engine: Engine, tok, conversations: list[list[dict]], tools: list[list[dict]], max_new_tokens: int):
    prompts = [tok.apply_chat_template(m, tools=t, add_generation_prompt=True) for m, t in zip(conversations, tools)]
    ids = [tok.encode(p, add_special_tokens=False) for p in prompts]
    outs = engine.generate(ids, SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0))
    return [o.text for o in outs]


def evaluate_tool_use(model, tok, world, records: list[dict], max_new_tokens: int = 96) -> tuple[dict, list[dict]]:
    """(metrics, one row per record: the conversation as it went, its call, verdicts); see the module docstring."""
    engine = Engine(model, tok)
    first = _generate(engine, tok, [r["messages"][:2] for r in records], [r["tools"] for r in records],
                      max_new_tokens)
    rows, follow = [], []
    for r, text in zip(records, first):
        content, calls = parse_calls(text, "hermes")
        messages = list(r["messages"][:2])
        row = {"id": r["id"], "kind": r["kind"], "expected": r["call"], "calls": calls, "reply": text}
        if calls:
            box = town_toolbox(world)
            reply = assistant_message(content, calls)
            messages += [reply, *box.run_all(reply["tool_calls"])]
            follow.append((messages, r["tools"]))
        else:
            messages.append({"role": "assistant", "content": text})
        row["messages"] = messages
        rows.append(row)
    if follow:
        final = _generate(engine, tok, [m for m, _ in follow], [t for _, t in follow], max_new_tokens)
        for (messages, _), text in zip(follow, final):
            messages.append({"role": "assistant", "content": text})
    for r, row in zip(records, rows):
        final = row["messages"][-1]["content"] if row["messages"][-1]["role"] == "assistant" else ""
        row["exact_call"] = r["call"] is not None and row["calls"] == [r["call"]]
        row["answer"] = all(f in final for f in r["facts"]) and (r["call"] is not None or not row["calls"])
    needed = [row for row in rows if row["expected"] is not None]
    direct = [row for row in rows if row["expected"] is None]
    metrics = {"call_rate": _mean(bool(row["calls"]) for row in needed),
               "exact_call": _mean(row["exact_call"] for row in needed),
               "no_call": _mean(not row["calls"] for row in direct),
               "answer": _mean(row["answer"] for row in needed)}
    for kind in KINDS:
        metrics[f"answer_{kind}"] = _mean(row["answer"] for row in rows if row["kind"] == kind)
    metrics["prompts"] = len(rows)
    return metrics, rows


def _mean(xs) -> float:
    xs = [float(x) for x in xs]
    return sum(xs) / len(xs) if xs else 0.0
