"""The agent loop: the model replies; if the reply calls tools, they run and their results join the conversation; the
model replies again, until it answers without a call or the turn limit is reached.

    messages = [{"role": "user", "content": "What is 347 * 28?"}]
    result = run_agent(LocalChat(engine), messages, ToolBox(builtins=["calculator"]), max_turns=4)
    result = run_agent(OpenAIChat("http://127.0.0.1:8000/v1", "tiny"), messages, box)   # any OpenAI-compatible server
    result.save("transcripts.jsonl")

A chat backend is any callable (messages, tools) -> the assistant's message {"role": "assistant", "content",
["tool_calls"]} in OpenAI's form. `LocalChat` renders the conversation with the tokenizer's chat template (tools
included), generates with alignlab's engine and reads the calls out of the text (`tools/calls.py`); `OpenAIChat`
posts to /chat/completions, where the server does both. Parallel calls in one reply are all answered before the
model's next turn.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from alignlab.infer import Engine, SamplingParams
from alignlab.tools.calls import api_tool_calls, parse_calls
from alignlab.tools.executor import ToolBox

ChatBackend = Callable[[list[dict], list[dict]], dict]


@dataclass
class AgentResult:
    messages: list[dict]  # the whole conversation, the tool results included
    turns: int  # the model's replies
    finished: bool  # True: the last reply called no tool; False: stopped at max_turns
    calls: int = 0  # tool calls run
    meta: dict = field(default_factory=dict)

    @property
    def answer(self) -> str:
        """The last reply's text."""
        return self.messages[-1].get("content") or "" if self.messages[-1]["role"] == "assistant" else ""

    def save(self, path: str | Path) -> None:
        """Append this transcript to a JSON Lines file."""
        record = {"messages": self.messages, "turns": self.turns, "finished": self.finished, "calls": self.calls,
                  **self.meta}
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def run_agent(chat: ChatBackend, messages: list[dict], toolbox: ToolBox, max_turns: int = 5) -> AgentResult:
    """Converse until a reply calls no tool, or max_turns replies; messages is not modified."""
    if max_turns < 1:
        raise ValueError("max_turns must be at least 1")
    messages, calls = list(messages), 0
    for turn in range(1, max_turns + 1):
        reply = chat(messages, toolbox.tools)
        messages.append(reply)
        if not reply.get("tool_calls"):
            return AgentResult(messages, turn, True, calls)
        messages += toolbox.run_all(reply["tool_calls"])
        calls += len(reply["tool_calls"])
    return AgentResult(messages, max_turns, False, calls)


def assistant_message(content: str, calls: list[dict], turn: int = 0) -> dict:
    """OpenAI's assistant message for parsed calls [{"name", "arguments": dict}]."""
    message = {"role": "assistant", "content": content or None}
    if calls:
        message["tool_calls"] = api_tool_calls(calls, [f"call_{turn}_{i}" for i in range(len(calls))])
    return message


class LocalChat:
    """A chat backend over alignlab's Engine: the tokenizer's chat template (or `chat_template`, a jinja string or a
    name such as "chatml") with the tools, one generation, the calls parsed in `fmt` (the template's format: hermes
    for ChatML/Qwen2.5)."""

    def __init__(self, engine: Engine, params: SamplingParams | None = None, fmt: str = "hermes",
                 chat_template: str | None = None):
        if engine.tokenizer is None:
            raise ValueError("LocalChat needs an engine with a tokenizer (its chat template renders the tools)")
        self.engine, self.fmt, self.chat_template = engine, fmt, chat_template
        self.params = params or SamplingParams(max_new_tokens=256, temperature=0.0)
        self.turn = 0

    def __call__(self, messages: list[dict], tools: list[dict]) -> dict:
        ids = self.engine.tokenizer.apply_chat_template(messages, tools=tools or None, add_generation_prompt=True,
                                                        tokenize=True, chat_template=self.chat_template)
        text = self.engine.generate([ids], self.params)[0].text
        self.turn += 1
        return assistant_message(*parse_calls(text, self.fmt), turn=self.turn)


class OpenAIChat:
    """A chat backend over any OpenAI-compatible server (alignlab serve, vLLM, ...); extra keyword arguments go
    into the request body (temperature, max_tokens, ...)."""

    def __init__(self, base_url: str, model: str, api_key: str = "none", timeout: float = 120, **body):
        import httpx

        self.http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout,
                                 headers={"Authorization": f"Bearer {api_key}"})
        self.model, self.body = model, body

    def __call__(self, messages: list[dict], tools: list[dict]) -> dict:
        body = {"model": self.model, "messages": messages, **self.body}
        if tools:
            body["tools"] = tools
        r = self.http.post("/chat/completions", json=body)
        if r.status_code != 200:
            raise RuntimeError(f"{self.http.base_url}/chat/completions answered {r.status_code}: {r.text[:500]}")
        message = r.json()["choices"][0]["message"]
        out = {"role": "assistant", "content": message.get("content")}
        if message.get("tool_calls"):
            out["tool_calls"] = message["tool_calls"]
        return out
