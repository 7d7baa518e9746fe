"""alignlab.tools.schema: a function's tool schema equals transformers' get_json_schema; arguments are checked with
errors that say what to fix."""

from __future__ import annotations

from typing import Literal, Optional, Union

import pytest

from alignlab.tools import ToolArgumentError, ToolSchemaError, check_arguments, function_schema

from .hf_models import require


def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius", days: Optional[int] = None) -> str:  # noqa: UP045
    """The weather in a city today.

    Args:
        city: the city's name
        unit: the temperature unit,
            celsius unless asked otherwise
        days: how many days ahead

    Returns:
        the forecast, one line a day
    """


def book(room: int, people: list[str], slot: tuple[int, str], flags: dict, ratio: float, quiet: bool,
         code: Union[int, str] = 0, grid: list[list[int]] | None = None):  # noqa: UP007 (both spellings)
    """Book a meeting room.

    A second paragraph of description.

    Args:
        room: the room number
        people: who comes
        slot: (hour, label)
        flags: anything else
        ratio: a number
        quiet: a flag
        code: an id or a name
        grid: seats
    """


def no_args() -> int:
    """Roll a die."""


@pytest.mark.parametrize("fn", [get_weather, book, no_args])
def test_schema_equals_transformers(fn):
    get_json_schema = require("transformers.utils").get_json_schema
    assert function_schema(fn) == get_json_schema(fn)


def test_functions_that_cannot_be_tools():
    def untyped(x):
        """Nothing.

        Args:
            x: a value
        """

    def undocumented(x: int):
        """Nothing."""

    def star(*xs: int):
        """Nothing.

        Args:
            xs: values
        """

    def nodoc(x: int):
        pass

    for fn, words in [(untyped, "'x' has no type hint"), (undocumented, "'x' is not described"),
                      (star, "*xs"), (nodoc, "needs a docstring")]:
        with pytest.raises(ToolSchemaError, match=words.replace("*", r"\*")):
            function_schema(fn)


WEATHER = function_schema(get_weather)
BOOK = function_schema(book)


def test_good_arguments_pass():
    assert check_arguments(WEATHER, '{"city": "Paris"}') == {"city": "Paris"}
    assert check_arguments(WEATHER["function"], {"city": "Oslo", "unit": "fahrenheit", "days": None}) == {
        "city": "Oslo", "unit": "fahrenheit", "days": None}
    args = {"room": 3, "people": ["Ann"], "slot": [9, "am"], "flags": {}, "ratio": 2, "quiet": False, "code": "x",
            "grid": [[1, 2], []]}
    assert check_arguments(BOOK, args) == args  # an integer is a number
    assert check_arguments(function_schema(no_args), "") == {}


@pytest.mark.parametrize("arguments, message", [
    ('{"unit": "celsius"}', "missing argument 'city'"),
    ('{"city": "Paris", "country": "FR"}', "unknown argument 'country' (known: 'city', 'unit', 'days')"),
    ('{"city": "Paris", "unit": "kelvin"}', 'argument \'unit\' must be one of "celsius", "fahrenheit", got "kelvin"'),
    ('{"city": 7}', "argument 'city' must be string, got 7"),
    ('{"city": "Paris", "days": true}', "argument 'days' must be integer, got true"),  # a boolean is no integer
    ('{"city": "Paris", "days": 1.5}', "argument 'days' must be integer, got 1.5"),
    ('{"city": "Paris"', "not valid JSON"),
    ('["Paris"]', "the arguments must be object"),
])
def test_bad_arguments_say_what_to_fix(arguments, message):
    with pytest.raises(ToolArgumentError) as e:
        check_arguments(WEATHER, arguments)
    assert str(e.value).startswith("get_weather: ") and message in str(e.value)


def test_nested_errors_name_the_place():
    args = {"room": "3", "people": ["Ann", 5], "slot": [9], "flags": [], "ratio": "x", "quiet": 1, "code": 1.5,
            "grid": [[1, "a"]]}
    with pytest.raises(ToolArgumentError) as e:
        check_arguments(BOOK, args)
    for part in ["argument 'room' must be integer", "argument 'people[1]' must be string",
                 "argument 'slot' must hold 2 items, got 1", "argument 'flags' must be object",
                 "argument 'ratio' must be number", "argument 'quiet' must be boolean",
                 "argument 'code' must be integer or string, got 1.5", "argument 'grid[0][1]' must be integer"]:
        assert part in str(e.value)
