"""Two small APIs for tool-use practice, deterministic so that a right call has one right answer: a weather service
and a calendar. Both check their input and raise ValueError with a message the model can act on (ToolBox turns it
into "error: ...").

    get_weather("Paris", "2026-07-14")  -> {"city": "Paris", "date": "2026-07-14", "condition": "sunny",
                                            "high_c": 27, "low_c": 16}
    cal = Calendar();  cal.add_event("Dentist", "2026-07-14", "09:30", 45);  cal.list_events("2026-07-14")

The weather is a hash of (city, date) shaped by the season of the month, not a forecast. ToolBox takes the bound
methods: ToolBox([get_weather, cal.add_event, cal.list_events]).
"""

from __future__ import annotations

import hashlib
from datetime import date as Date
from datetime import datetime, timedelta

CONDITIONS = ("sunny", "cloudy", "rainy", "windy", "foggy", "snowy")
SEASON_HIGH_C = (4, 6, 11, 15, 19, 24, 27, 26, 22, 16, 9, 5)  # a temperate town's mean highs by month


def _date(text: str) -> Date:
    try:
        return Date.fromisoformat(text)
    except (TypeError, ValueError):
        raise ValueError(f"date must be YYYY-MM-DD, got {text!r}") from None


def get_weather(city: str, date: str) -> dict:
    """The weather in a city on a day.

    Args:
        city: the city's name, e.g. Paris
        date: the day, as YYYY-MM-DD
    """
    day = _date(date)
    if not city.strip():
        raise ValueError("city must not be empty")
    h = hashlib.sha256(f"{city.strip().lower()}|{day.isoformat()}".encode()).digest()
    high = SEASON_HIGH_C[day.month - 1] + h[0] % 9 - 4
    condition = CONDITIONS[h[1] % len(CONDITIONS)]
    if condition == "snowy" and high > 3:
        condition = "rainy"
    return {"city": city.strip(), "date": day.isoformat(), "condition": condition, "high_c": high,
            "low_c": high - 6 - h[2] % 6}


class Calendar:
    """One person's calendar, in memory: events with a title, a day, a start time and a length."""

    def __init__(self):
        self.events: list[dict] = []

    def add_event(self, title: str, date: str, start: str, duration_minutes: int = 60) -> dict:
        """Add an event to the calendar; it may not overlap another event.

        Args:
            title: what the event is
            date: the day, as YYYY-MM-DD
            start: the start time, as HH:MM (24-hour)
            duration_minutes: how long it lasts, in minutes
        """
        day = _date(date)
        try:
            begin = datetime.combine(day, datetime.strptime(start, "%H:%M").time())
        except ValueError:
            raise ValueError(f"start must be HH:MM (24-hour), got {start!r}") from None
        if not title.strip():
            raise ValueError("title must not be empty")
        if not 0 < duration_minutes <= 24 * 60:
            raise ValueError(f"duration_minutes must be between 1 and 1440, got {duration_minutes}")
        end = begin + timedelta(minutes=duration_minutes)
        for e in self.events:
            if begin < e["_end"] and e["_begin"] < end:
                raise ValueError(f"overlaps {e['title']!r} ({e['date']} {e['start']}-{e['end']})")
        event = {"title": title.strip(), "date": day.isoformat(), "start": begin.strftime("%H:%M"),
                 "end": end.strftime("%H:%M"), "_begin": begin, "_end": end}
        self.events.append(event)
        self.events.sort(key=lambda e: e["_begin"])
        return _public(event)

    def list_events(self, date: str) -> list[dict]:
        """The events on a day, earliest first.

        Args:
            date: the day, as YYYY-MM-DD
        """
        day = _date(date).isoformat()
        return [_public(e) for e in self.events if e["date"] == day]


def _public(event: dict) -> dict:
    return {k: v for k, v in event.items() if not k.startswith("_")}
