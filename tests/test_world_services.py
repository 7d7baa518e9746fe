"""alignlab.data.world.services: the weather, calendar and directory tools are deterministic, check their input, and
work through ToolBox; the tool-use conversations hold out what they say they do, and every call in them is what
ToolBox answers."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from alignlab.data.world import TinyWorld
from alignlab.data.world.arithmetic import split_hash
from alignlab.data.world.services import (
    ADD_EVENT_TOOL,
    CITIES,
    FIELDS,
    KINDS,
    LOOKUP_TOOL,
    RESIDENTS,
    WEATHER_TOOL,
    Calendar,
    Directory,
    _directory_split,
    get_weather,
)
from alignlab.text import render_chat
from alignlab.tools import ToolBox, function_schema


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


def test_directory_and_the_schemas_the_model_sees():
    d = Directory(0, ("Ana", "Ben"))
    assert d.lookup("Ana", "phone") == Directory(0, ("Ana", "Ben")).lookup("Ana", "phone") != \
        Directory(1, ("Ana", "Ben")).lookup("Ana", "phone")
    with pytest.raises(ValueError, match="no one named 'Zed'"):
        d.lookup("Zed", "phone")
    with pytest.raises(ValueError, match="field must be one of phone, birthday, street"):
        d.lookup("Ana", "email")
    for tool, fn in ((WEATHER_TOOL, get_weather), (ADD_EVENT_TOOL, Calendar().add_event), (LOOKUP_TOOL, d.lookup)):
        written = function_schema(fn)["function"]
        assert tool["function"] == {k: written[k] for k in ("name", "description", "parameters")}


@pytest.fixture(scope="module")
def world():
    return TinyWorld(seed=0, size="quick")


def test_conversations_hold_out_titles_entries_and_dates(world):
    train, test = world.service_conversations("train"), world.service_conversations("test")
    assert {r["kind"] for r in train} == {r["kind"] for r in test} == set(KINDS)
    assert train == world.service_conversations("train")  # deterministic

    def values(records, kind, key):
        return {r["call"]["arguments"][key] for r in records if r["kind"] == kind}
    assert not values(train, "event", "title") & values(test, "event", "title")
    assert values(test, "weather", "city") <= set(CITIES)  # one list of cities for both splits
    pairs = {(r["call"]["arguments"]["city"], r["call"]["arguments"]["date"]) for r in train if r["kind"] == "weather"}
    assert not pairs & {(r["call"]["arguments"]["city"], r["call"]["arguments"]["date"]) for r in test
                        if r["kind"] == "weather"}
    entries = {(r["call"]["arguments"]["person"], r["call"]["arguments"]["field"]) for r in train
               if r["kind"] == "lookup"}
    assert not entries & {(r["call"]["arguments"]["person"], r["call"]["arguments"]["field"]) for r in test
                          if r["kind"] == "lookup"}


def test_the_directory_lists_the_cast_and_the_residents_and_tests_people_seen_in_training(world):
    assert list(world.directory.entries) == [*world.cast, *RESIDENTS]
    train, test = world.service_conversations("train"), world.service_conversations("test")
    people = {r["call"]["arguments"]["person"] for r in train if r["kind"] == "lookup"}
    asked = {r["call"]["arguments"]["person"] for r in test if r["kind"] == "lookup"}
    assert asked & set(RESIDENTS) and asked & set(world.cast)
    assert len(asked & people) >= len(asked) / 2  # most were looked up in training, for another field


def test_directory_questions_take_the_people_in_turn():
    world = TinyWorld(seed=0)  # default size
    for split, fewest in (("train", 10), ("test", 1)):
        records = [r for r in world.service_conversations(split) if r["kind"] == "lookup"]
        people = Counter(r["call"]["arguments"]["person"] for r in records)
        assert max(people.values()) - min(people.values()) <= (8 if split == "train" else 1), people
        assert min(people.values()) >= fewest
        for r in records:
            assert _directory_split(0, r["call"]["arguments"]["person"], r["call"]["arguments"]["field"]) == split


def test_every_person_keeps_a_directory_field_in_training():
    """A name never written in a call's JSON ("Zoe" after a quote is another token than " Zoe") cannot be copied
    there; seed 0's hash split once held out all three of Zoe's fields."""
    for seed in range(20):
        for person in [*RESIDENTS, "Ana", "Zoe"]:
            splits = {f: _directory_split(seed, person, f) for f in FIELDS}
            assert "train" in splits.values(), (seed, person)
            unforced = {f: "test" if split_hash(seed, f"dir:{person}:{f}") < 0.25 else "train" for f in FIELDS}
            assert sum(a != b for a, b in zip(splits.values(), unforced.values())) <= 1  # only the forced field moves
    assert "train" in {_directory_split(0, "Zoe", f) for f in FIELDS}
    assert all(split_hash(0, f"dir:Zoe:{f}") < 0.25 for f in FIELDS)  # the case this guards against


def test_service_logs_in_pretraining_hold_nothing_held_out():
    world = TinyWorld(seed=0)  # default size: enough logs to see every kind
    docs = [d for d in world.pretraining_documents() if "\ncall " in d or "When is the fair?" in d]
    assert len(docs) > 300
    calls = [json.loads(line.split(" ", 2)[2]) for d in docs for line in d.split("\n") if line.startswith("call ")]
    assert {"city", "title"} <= {k for c in calls for k in c}
    test = world.service_conversations("test")
    held_titles = {r["call"]["arguments"]["title"] for r in test if r["kind"] == "event"}
    held_days = {(r["call"]["arguments"]["city"], r["call"]["arguments"]["date"]) for r in test
                 if r["kind"] == "weather"}
    assert not held_titles & {c["title"] for c in calls if "title" in c}
    assert not held_days & {(c["city"], c["date"]) for c in calls if "city" in c}
    text = world.pretraining_text()
    for person, entry in world.directory.entries.items():  # only a call reads the directory
        for value in (entry["phone"], entry["street"]):
            assert not re.search(rf"(?<!\d){re.escape(value)}", text), (person, value)


def test_every_call_is_answered_as_toolbox_answers_it(world):
    """...but a training chat's lookup, which reads a made-up entry (no answer can be learnt by heart)."""
    tok = world.tokenizer()
    made_up = 0
    for r in world.service_conversations("train")[:60] + world.service_conversations("test")[:60]:
        m = r["messages"]
        if r["call"] is None:
            assert len(m) == 3 and "tool_calls" not in m[2]
            continue
        (call,) = m[2]["tool_calls"]
        assert call["function"] == r["call"]
        box = ToolBox([get_weather, Calendar().add_event, world.directory.lookup], builtins=["calculator"])
        real = box.run(r["call"])["content"]
        if r["kind"] == "lookup" and r["id"].startswith("lookup:train"):
            field = r["call"]["arguments"]["field"]
            assert m[3]["content"] not in {e[field] for e in world.directory.entries.values()}
            made_up += 1
        else:
            assert real == m[3]["content"]
        assert all(f in m[4]["content"] for f in r["facts"])  # the answer says what the tool returned
        ids, mask = render_chat(tok, m, tools=r["tools"])
        assert "get_weather(city, date)" in tok.decode(ids)
        trained = tok.decode([i for i, k in zip(ids, mask) if k])  # the loss: the call and the answer, not the result
        assert call["function"]["name"] in trained and m[4]["content"] in trained
        before, _ = render_chat(tok, m[:3], tools=r["tools"])
        upto, _ = render_chat(tok, m[:4], tools=r["tools"])
        assert ids[:len(upto)] == upto and not any(mask[len(before):len(upto)])  # the tool's turn is not trained
    assert made_up
