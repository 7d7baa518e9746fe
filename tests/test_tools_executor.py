"""alignlab.tools.executor.ToolBox: calls answered as `role: tool` messages, every failure as text the model reads."""

from __future__ import annotations

import json
from typing import Literal

import pytest

from alignlab.tools import ToolBox, function_schema


def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> dict:
    """The weather in a city today.

    Args:
        city: the city's name
        unit: the temperature unit
    """
    if city == "Atlantis":
        raise LookupError("no such city")
    return {"city": city, "temperature": 21 if unit == "celsius" else 70}


BOX = ToolBox([get_weather], builtins=["calculator"])


def test_tools_list_what_the_model_is_shown():
    names = [t["function"]["name"] for t in BOX.tools]
    assert names == ["calculator", "get_weather"]
    assert BOX.tools[1] == function_schema(get_weather)


def test_calls_are_answered():
    assert BOX.run({"id": "call_1", "name": "calculator", "arguments": {"expression": "347 * 28"}}) == {
        "role": "tool", "name": "calculator", "content": "9716", "tool_call_id": "call_1"}
    api_call = {"id": "call_2", "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "fahrenheit"}'}}
    message = BOX.run(api_call)
    assert message["tool_call_id"] == "call_2" and json.loads(message["content"]) == {"city": "Paris",
                                                                                     "temperature": 70}
    parallel = BOX.run_all([{"name": "calculator", "arguments": {"expression": "1 + 1"}},
                            {"name": "calculator", "arguments": {"expression": "2 * 3"}}])
    assert [m["content"] for m in parallel] == ["2", "6"]


@pytest.mark.parametrize("call, error", [
    ({"name": "search", "arguments": {}}, "error: there is no tool named 'search' (tools: calculator, get_weather)"),
    ({"name": "get_weather", "arguments": {"unit": "kelvin"}}, "error: get_weather: missing argument 'city'"),
    ({"name": "get_weather", "arguments": "{city: Paris}"}, "error: get_weather: the arguments are not valid JSON"),
    ({"name": "get_weather", "arguments": {"city": "Atlantis"}}, "error: get_weather raised LookupError: no such city"),
    ({"name": "calculator", "arguments": {"expression": "__import__('os').system('true')"}}, "error: "),
    ({"name": "calculator", "arguments": {"expression": "1 / 0"}}, "error: division by zero"),
])
def test_failures_come_back_as_text(call, error):
    assert BOX.run(call)["content"].startswith(error)


def test_bad_toolboxes():
    with pytest.raises(ValueError, match="unknown built-in tool 'shell'"):
        ToolBox(builtins=["shell"])
    with pytest.raises(ValueError, match="two tools are named 'get_weather'"):
        ToolBox([get_weather, get_weather])
