"""alignlab.tools.apis: the weather and calendar tools are deterministic, check their input, and work through
ToolBox as bound methods."""

from __future__ import annotations

import json

import pytest

from alignlab.tools import ToolBox
from alignlab.tools.apis import Calendar, get_weather


def test_weather_is_deterministic_and_seasonal():
    a = get_weather("Paris", "2026-07-14")
    assert a == get_weather(" paris ", "2026-07-14") | {"city": "Paris"}
    assert set(a) == {"city", "date", "condition", "high_c", "low_c"} and a["low_c"] < a["high_c"]
    july = [get_weather(c, "2026-07-14")["high_c"] for c in ("Paris", "Oslo", "Lima", "Rome")]
    january = [get_weather(c, "2026-01-14")["high_c"] for c in ("Paris", "Oslo", "Lima", "Rome")]
    assert min(july) > max(january)
    with pytest.raises(ValueError, match="date must be YYYY-MM-DD"):
        get_weather("Paris", "14/07/2026")


def test_calendar_through_a_toolbox():
    cal = Calendar()
    box = ToolBox([get_weather, cal.add_event, cal.list_events])
    assert [t["function"]["name"] for t in box.tools] == ["get_weather", "add_event", "list_events"]
    add = box.run({"name": "add_event", "arguments": {"title": "Dentist", "date": "2026-07-14", "start": "09:30",
                                                      "duration_minutes": 45}})
    assert json.loads(add["content"]) == {"title": "Dentist", "date": "2026-07-14", "start": "09:30", "end": "10:15"}
    clash = box.run({"name": "add_event", "arguments": {"title": "Gym", "date": "2026-07-14", "start": "10:00"}})
    assert clash["content"] == "error: add_event raised ValueError: overlaps 'Dentist' (2026-07-14 09:30-10:15)"
    box.run({"name": "add_event", "arguments": {"title": "Lunch", "date": "2026-07-14", "start": "12:00"}})
    box.run({"name": "add_event", "arguments": {"title": "Early", "date": "2026-07-14", "start": "07:00"}})
    listed = json.loads(box.run({"name": "list_events", "arguments": {"date": "2026-07-14"}})["content"])
    assert [e["title"] for e in listed] == ["Early", "Dentist", "Lunch"]
    assert box.run({"name": "add_event", "arguments": {"title": "X", "date": "2026-07-15", "start": "25:00"}})[
        "content"].endswith("start must be HH:MM (24-hour), got '25:00'")
