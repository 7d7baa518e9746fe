"""Running a model's tool calls: each call checked against its tool's schema, run, and answered with a `role: tool`
message, errors included, so the model reads what went wrong and may try again.

    box = ToolBox([get_weather], builtins=["calculator"])
    box.tools                                   # the OpenAI `tools` list for the request / the chat template
    box.run({"id": "call_1", "name": "calculator", "arguments": {"expression": "347 * 28"}})
        -> {"role": "tool", "tool_call_id": "call_1", "name": "calculator", "content": "9716"}

A call's arguments may be a dict or the JSON string the API carries. What goes back as content: the function's
result (a string as it is, anything else as JSON), or "error: ..." for an unknown tool, arguments that do not fit
the schema (`check_arguments`' message), or an exception raised by the function. Functions given to a ToolBox are
the application's own code and run in this process; the built-in calculator parses its input with `ast` and never
evaluates it (`alignlab/data/world/calculator.py`); the built-in python tool runs the model's code in a sandboxed child
process (`alignlab/tools/sandbox.py`: time, memory, file and output limits, no network, writes only in a temporary
directory).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from alignlab.data.world.calculator import CALCULATOR_TOOL, calculator_output
from alignlab.tools.sandbox import python
from alignlab.tools.schema import ToolArgumentError, check_arguments, function_schema

BUILTINS: dict[str, tuple[dict, Callable[..., str]]] = {
    "calculator": (CALCULATOR_TOOL, lambda expression: calculator_output({"expression": expression})),
    "python": (function_schema(python), python),  # runs in tools/sandbox.py's child process, with its limits
}


class ToolBox:
    """Named tools, each an OpenAI tool entry and the Python function that runs it."""

    def __init__(self, functions: list[Callable] = (), builtins: list[str] = ()):
        self._tools: dict[str, tuple[dict, Callable]] = {}
        for name in builtins:
            if name not in BUILTINS:
                raise ValueError(f"unknown built-in tool {name!r} (built in: {', '.join(BUILTINS)})")
            self._add(*BUILTINS[name])
        for fn in functions:
            self._add(function_schema(fn), fn)

    def _add(self, schema: dict, fn: Callable) -> None:
        name = schema["function"]["name"]
        if name in self._tools:
            raise ValueError(f"two tools are named {name!r}")
        self._tools[name] = (schema, fn)

    @property
    def tools(self) -> list[dict]:
        """The OpenAI `tools` list: what the model is shown."""
        return [schema for schema, _ in self._tools.values()]

    def run(self, call: dict) -> dict:
        """The `role: tool` message answering one call {"name", "arguments"[, "id"]} (or the API's
        {"id", "function": {"name", "arguments"}})."""
        function = call.get("function", call)
        name, arguments = function.get("name"), function.get("arguments", {})
        message = {"role": "tool", "name": name, "content": self._content(name, arguments)}
        if call.get("id") is not None:
            message["tool_call_id"] = call["id"]
        return message

    def run_all(self, calls: list[dict]) -> list[dict]:
        """One message per call, in the calls' order (parallel calls are answered together)."""
        return [self.run(c) for c in calls]

    def _content(self, name, arguments) -> str:
        if name not in self._tools:
            return f"error: there is no tool named {name!r} (tools: {', '.join(self._tools) or 'none'})"
        schema, fn = self._tools[name]
        try:
            arguments = check_arguments(schema, arguments)
        except ToolArgumentError as e:
            return f"error: {e}"
        try:
            result = fn(**arguments)
        except Exception as e:  # noqa: BLE001 -- the model reads the failure and may try again
            return f"error: {name} raised {type(e).__name__}: {e}"
        return result if isinstance(result, str) else json.dumps(result)
