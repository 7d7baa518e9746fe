"""Tool calls in Hermes' format: the model writes them as tagged JSON, the API returns them as tool_calls.

    model text:  I'll compute it.<tool_call>{"name": "calculator", "arguments": {"expression": "2+3"}}</tool_call>
    API message: {"content": "I'll compute it.", "tool_calls": [{"id": "call_...", "type": "function",
                  "function": {"name": "calculator", "arguments": "{\\"expression\\": \\"2+3\\"}"}}]}

The tools themselves reach the model through the chat template (`tools=` of apply_chat_template), which lists
them in the system turn (Qwen2.5/Hermes: JSON schemas inside <tools></tools>). tool_choice:
    "none"      the tools are not rendered and the text is returned as it is
    "auto"      rendered; every <tool_call>...</tool_call> block is parsed out of the reply
    "required"  as auto, and the reply is started with "<tool_call>\n" (forced tokens, as nanochat's engine does)
                and decoded under a guide (alignlab/tools/guided.py): the call is always JSON of one of the tools
    a function  the reply is started with '<tool_call>\n{"name": "NAME", "arguments": ' and the guide keeps the
                arguments to that function's schema
A block counts only if its JSON has "name" and "arguments" (vLLM's hermes parser); anything else stays text
(`alignlab/tools/calls.py` reads the blocks).
"""

from __future__ import annotations

import uuid

from alignlab.serve.protocol import APIError
from alignlab.tools.calls import HERMES_OPEN, api_tool_calls, parse_calls
from alignlab.tools.guided import REQUIRED_START, call_guide, named_start

OPEN = HERMES_OPEN


def tool_mode(tools: list | None, tool_choice, tokenizer) -> tuple[bool, str, object | None]:
    """(render the tools?, the forced start of the reply, the guide that keeps the rest a valid call or None) for a
    request's tools and tool_choice."""
    if not tools:
        if tool_choice not in (None, "none", "auto"):
            raise APIError(400, "tool_choice needs tools", param="tool_choice")
        return False, "", None
    names = [t.function.name for t in tools]
    if tool_choice is None or tool_choice == "auto":
        return True, "", None
    if tool_choice == "none":
        return False, "", None
    specs = [t.model_dump(exclude_none=True) for t in tools]
    if tool_choice == "required":
        return True, REQUIRED_START, call_guide(tokenizer, specs)
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        if name not in names:
            raise APIError(400, f"tool_choice names {name!r}, which is not one of the tools {names}",
                           param="tool_choice")
        return True, named_start(name), call_guide(tokenizer, specs, name)
    raise APIError(400, f"tool_choice must be none, auto, required or a function, not {tool_choice!r}",
                   param="tool_choice")


def parse_tool_calls(text: str) -> tuple[str | None, list[dict]]:
    """(the text around the calls, or None if empty; the calls as the API returns them), read by
    `alignlab.tools.calls` (Hermes format). With no valid call, (text, []). A block the model did not close (it
    stopped first) is still parsed."""
    content, calls = parse_calls(text, "hermes")
    if not calls:
        return text, []
    return content or None, api_tool_calls(calls, [f"call_{uuid.uuid4().hex[:24]}" for _ in calls])


def held_back(text: str, marker: str = OPEN) -> int:
    """How many trailing characters of `text` could be the start of `marker` (not streamed yet)."""
    return max((n for n in range(1, min(len(marker), len(text) + 1)) if text.endswith(marker[:n])), default=0)
