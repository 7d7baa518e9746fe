"""alignlab.eval.tool_use: the reference replies score 100% on every metric, and each kind of mistake costs what it
should (a wrong argument, a call where none is needed, no call, an answer that does not say what the tool said)."""

from __future__ import annotations

import json

import pytest

import alignlab.eval.tool_use as T
from alignlab.data.world import TinyWorld


@pytest.fixture(scope="module")
def world():
    return TinyWorld(seed=0, size="quick")


def scripted(monkeypatch, first: dict[str, str], final: dict[str, str]):
    """_generate replies from the scripts, keyed by the conversation's user message."""
    def fake(engine, tok, conversations, tools, max_new_tokens):
        script = final if len(conversations[0]) > 2 else first
        return [script[c[1]["content"]] for c in conversations]
    monkeypatch.setattr(T, "_generate", fake)
    monkeypatch.setattr(T, "Engine", lambda model, tok: None)


def reference(records):
    first, final = {}, {}
    for r in records:
        m, user = r["messages"], r["messages"][1]["content"]
        if r["call"] is None:
            first[user] = m[2]["content"]
        else:
            call = m[2]["tool_calls"][0]["function"]
            first[user] = (m[2]["content"] or "") + "<tool_call>" + json.dumps(call) + "</tool_call>"
            final[user] = m[4]["content"]
    return first, final


def test_the_reference_scores_100(world, monkeypatch):
    records = world.service_conversations("test")
    scripted(monkeypatch, *reference(records))
    metrics, rows = T.evaluate_tool_use(None, None, world, records)
    assert metrics["prompts"] == len(records) == 200
    assert all(v == 1.0 for k, v in metrics.items() if k != "prompts"), metrics
    assert rows[0]["messages"][-1]["role"] == "assistant"


def test_mistakes_cost_what_they_should(world, monkeypatch):
    records = [next(r for r in world.service_conversations("test") if r["kind"] == k)
               for k in ("weather", "lookup", "direct", "event")]
    first, final = reference(records)
    weather, lookup, direct, event = (r["messages"][1]["content"] for r in records)
    first[weather] = first[weather].replace(records[0]["call"]["arguments"]["city"], "Paris")  # a wrong argument
    final[weather] = "It is sunny."
    first[lookup] = "I do not know."  # no call where one is needed
    first[direct] = first[event]  # a call where none is needed
    final[direct] = "Done."
    final[event] = "Added it."  # the answer leaves out what the tool said
    scripted(monkeypatch, first, final)
    metrics, rows = T.evaluate_tool_use(None, None, world, records)
    assert metrics["call_rate"] == 2 / 3 and metrics["exact_call"] == 1 / 3 and metrics["no_call"] == 0.0
    assert metrics["answer"] == 0.0
    weather_row = rows[0]
    assert weather_row["calls"][0]["arguments"]["city"] == "Paris" and not weather_row["exact_call"]
    assert json.loads(weather_row["messages"][3]["content"])["city"] == "Paris"  # the call really ran
