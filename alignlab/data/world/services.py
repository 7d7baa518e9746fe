"""Tiny Town's services, the tools of TinyWorld's tool-use lessons: a weather service, a calendar and the town
directory (with the calculator, calculator.py), deterministic so that a right call has one right answer; and the
conversations that use them.

    get_weather("Paris", "2026-07-14")  -> {"city": "Paris", "date": "2026-07-14", "condition": "sunny",
                                            "high_c": 27, "low_c": 16}
    cal = Calendar();  cal.add_event("Dentist", "2026-07-14", "09:30", 45);  cal.list_events("2026-07-14")
    Directory(0, ("Ana", "Ben")).lookup("Ana", "phone")  -> "555-5875"

Each checks its input and raises ValueError with a message the model can act on (ToolBox turns it into
"error: ..."). The weather is a hash of (city, date) shaped by the season of the month, not a forecast; the
directory's phone numbers, birthdays and streets are drawn from the world's seed and appear in no pretraining text,
so only a call can answer them. ToolBox takes the functions and bound methods:
ToolBox([get_weather, cal.add_event, cal.list_events, directory.lookup]).

`conversations(world, split, n)` makes tool-use chats over these tools and the calculator: a weather question, an
event to add, a directory question, a level-5 sum -- each a call, its result in a tool turn, and an answer built
from the result -- and small sums no tool is needed for, answered directly. Held out for testing: event titles
(an activity with one of the town's people), (city, day) pairs of the weather and (person, field) pairs of the
directory (the cast and RESIDENTS), each split by its hash (every person keeps a field in training, and directory
questions take the people in turn). The cities come from one list of 24 that both splits use.
A training chat's lookup reads a made-up entry (the call is real, the value is nobody's): the directory is fixed, so
with real entries an answer learnt by heart fits every training chat as well as one read from the tool, and the
model learns the first; the test chats read the real directory.

`diary(world, rng)` writes the services into pretraining text as logs (question, call, result, answer) over training
values only. A city or a title is a different token inside the call's JSON ("Perth" after a quote) than in the
question (" Perth" after a space), and the byte-level BPE spells most of them letter by letter; with the logs in its
pretraining text the base model has seen the one carried across to the other, and 150 steps of tool-use SFT make
most calls exact (without them, a few in four). A person's name is harder: " Eli" in the question and "Eli" in the
call are two tokens, and a name never written in a training call is not copied at all, hence every person keeps a
field in training and is asked about as often as the others.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from datetime import date as Date
from datetime import datetime, timedelta

from alignlab.data.world.arithmetic import TOOL_LEVEL, split_hash

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


# ------------------------------------------------------------------------------------------------
# The town directory

FIELDS = {"phone": "phone number", "birthday": "birthday", "street": "street address"}
STREETS = ("Elm Street", "Mill Lane", "Harbor Road", "Oak Avenue", "Bell Street", "Pond Lane", "Hill Road",
           "Rose Street")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")


RESIDENTS = ("Abe", "Bea", "Cy", "Dan", "Eva", "Finn", "Gia", "Hal", "Ida", "Jo", "Kai", "Lea", "Ned", "Ola", "Pam",
             "Rex", "Sam", "Tia", "Uma", "Vic", "Wes", "Yan", "Zoe", "Noa")  # listed in the directory, never in a story


class Directory:
    """Who lives where in Tiny Town, their phone numbers and birthdays: drawn from the world's seed. The world's
    directory lists its cast and the RESIDENTS, so that the directory questions held out ask for entries no
    training chat showed, of people training chats looked up other fields of (a split by (person, field))."""

    def __init__(self, seed: int, people: tuple[str, ...]):
        rng = random.Random(f"tinyworld:{seed}:directory")
        self.entries = {p: {"phone": f"555-{rng.randint(0, 9999):04d}",
                            "birthday": f"{rng.choice(MONTHS)} {rng.randint(1, 28)}",
                            "street": f"{rng.randint(1, 99)} {rng.choice(STREETS)}"} for p in people}

    def lookup(self, person: str, field: str) -> str:
        """Look up a person's phone number, birthday or street address in the town directory.

        Args:
            person: the person's first name, e.g. Ana
            field: what to look up: phone, birthday or street
        """
        if person not in self.entries:
            raise ValueError(f"no one named {person!r} in the directory (people: {', '.join(self.entries)})")
        if field not in FIELDS:
            raise ValueError(f"field must be one of {', '.join(FIELDS)}, got {field!r}")
        return self.entries[person][field]


# ------------------------------------------------------------------------------------------------
# The tools as the model is shown them (what alignlab.tools.function_schema writes for the functions above)

def _tool(name: str, description: str, properties: dict, required: list[str]) -> dict:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": properties, "required": required}}}


WEATHER_TOOL = _tool("get_weather", "The weather in a city on a day.", {
    "city": {"type": "string", "description": "the city's name, e.g. Paris"},
    "date": {"type": "string", "description": "the day, as YYYY-MM-DD"}}, ["city", "date"])
ADD_EVENT_TOOL = _tool("add_event", "Add an event to the calendar; it may not overlap another event.", {
    "title": {"type": "string", "description": "what the event is"},
    "date": {"type": "string", "description": "the day, as YYYY-MM-DD"},
    "start": {"type": "string", "description": "the start time, as HH:MM (24-hour)"},
    "duration_minutes": {"type": "integer", "description": "how long it lasts, in minutes"}},
    ["title", "date", "start"])
LOOKUP_TOOL = _tool("lookup", "Look up a person's phone number, birthday or street address in the town directory.",
                    {"person": {"type": "string", "description": "the person's first name, e.g. Ana"},
                     "field": {"type": "string", "description": "what to look up: phone, birthday or street"}},
                    ["person", "field"])


# ------------------------------------------------------------------------------------------------
# Conversations

CITIES = ("Paris", "Oslo", "Rome", "Lima", "Cairo", "Tokyo", "Quito", "Dakar", "Perth", "Riga", "Bern", "Doha",
          "Kyiv", "Lagos", "Milan", "Nice", "Porto", "Seoul", "Turin", "Vigo", "Baku", "Cork", "Delft", "Faro")
ACTIVITIES = ("Dentist", "Lunch", "Piano lesson", "Meeting", "Haircut", "Yoga", "Book club", "Gym", "Doctor", "Call",
              "Market trip", "Dinner", "Bike repair", "Swim class", "Chess", "Bank visit", "Movie", "Study group")


def _held_out(seed: int, split: str, rng: random.Random, make) -> str:
    """A value drawn by make(rng) whose split (by its hash) is `split`."""
    while True:
        value = make(rng)
        if _split_of(seed, value) == split:
            return value


KINDS = ("weather", "event", "lookup", "calculator", "direct")  # the last needs no tool
ASK = {
    "weather": ("What is the weather in {city} on {date}?", "How will the weather be in {city} on {date}?",
                "Tell me the weather for {city} on {date}."),
    "event": ("Add {title} to my calendar on {date} at {start} for {minutes} minutes.",
              "Put {title} in my calendar: {date}, {start}, {minutes} minutes."),
    "lookup": ("What is {person}'s {what}?", "Can you find {person}'s {what}?"),
}
SAY = {"phone": "{person}'s phone number is {value}.", "birthday": "{person}'s birthday is {value}.",
       "street": "{person} lives at {value}."}


def _split_of(seed: int, key: str) -> str:
    return "test" if split_hash(seed, key) < 0.25 else "train"


def _directory_split(seed: int, person: str, field: str) -> str:
    """The split of a directory question, by (person, field); a person whose three fields all hash to the test
    split keeps the last of them (by hash) in training, so that every name held out has been written in a call."""
    hashes = {f: split_hash(seed, f"dir:{person}:{f}") for f in FIELDS}
    if all(h < 0.25 for h in hashes.values()) and field == max(hashes, key=hashes.get):
        return "train"
    return _split_of(seed, f"dir:{person}:{field}")


def _random_day(rng: random.Random) -> str:
    return (Date(2026, 1, 1) + timedelta(days=rng.randrange(730))).isoformat()


def _call_turns(name: str, arguments: dict, result) -> list[dict]:
    """The assistant's call and the tool's answer, as ToolBox writes it (a string as it is, else JSON)."""
    call = {"type": "function", "function": {"name": name, "arguments": arguments}}
    content = result if isinstance(result, str) else json.dumps(result)
    return [{"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "name": name, "content": content}]


def _service_chat(world, kind: str, split: str, rng: random.Random, entry: tuple[str, str] = ("", "")) -> dict:
    """One conversation of a kind that calls a service: the question, the call, its result, the answer; "call" is
    the call expected, "facts" what the answer must say. A directory question asks for `entry`, (person, field)."""
    seed = world.seed
    if kind == "weather":
        city, date = _held_out(seed, split, rng, lambda r: f"{r.choice(CITIES)} {_random_day(r)}").split()
        args, result = {"city": city, "date": date}, get_weather(city, date)
        user = rng.choice(ASK[kind]).format(city=city, date=date)
        facts = [result["condition"].capitalize(), f"high {result['high_c']} C", f"low {result['low_c']} C"]
        answer = f"{facts[0]} in {city} on {date}: {facts[1]}, {facts[2]}."
        name = "get_weather"
    elif kind == "event":
        title = _held_out(seed, split, rng, lambda r: f"{r.choice(ACTIVITIES)} with {r.choice(tuple(world.cast))}")
        date, start = _random_day(rng), f"{rng.randint(7, 20):02d}:{rng.choice((0, 15, 30, 45)):02d}"
        minutes = rng.choice((15, 30, 45, 60, 90, 120))
        args = {"title": title, "date": date, "start": start, "duration_minutes": minutes}
        result = Calendar().add_event(**args)
        user = rng.choice(ASK[kind]).format(title=title, date=date, start=start, minutes=minutes)
        answer = f"Added {title} on {date}, {result['start']}-{result['end']}."
        facts = [title, date, f"{result['start']}-{result['end']}"]
        name = "add_event"
    else:
        person, field = entry
        # training chats read a made-up entry: an answer learnt by heart is then never right, only the tool's is
        result = world.directory.lookup(person, field) if split == "test" else _made_up(world, field, rng)
        args = {"person": person, "field": field}
        user = rng.choice(ASK[kind]).format(person=person, what=FIELDS[field])
        answer, facts, name = SAY[field].format(person=person, value=result), [result], "lookup"
    messages = [*world.prompt(user), *_call_turns(name, args, result), {"role": "assistant", "content": answer}]
    return {"messages": messages, "kind": kind, "call": {"name": name, "arguments": args}, "facts": facts}


def _directory_entries(world, split: str, n: int, rng: random.Random) -> list[tuple[str, str]]:
    """n (person, field) pairs of the split for directory questions: the people taken in turn (in a shuffled
    order), each with one of their fields in the split at random, so that every person is asked about as often --
    no name is left with a handful of training chats, and no one held-out entry fills the test questions."""
    fields = {p: [f for f in FIELDS if _directory_split(world.seed, p, f) == split] for p in world.directory.entries}
    people = [p for p in world.directory.entries if fields[p]]
    rng.shuffle(people)
    return [(p, rng.choice(fields[p])) for p in (people[i % len(people)] for i in range(n))]


LOOKUP_SHARE = 2  # training chats hold twice as many directory questions as of each other kind: the hardest to learn


def conversations(world, split: str, n: int) -> list[dict]:
    """n tool-use chats, every one with all four tools listed: {"messages", "tools", "kind", "call" (the expected
    call, None for "direct"), "facts" (what the final answer must contain), "id"}. A fifth of each kind (KINDS) in the
    test split; in training, directory questions make a third (LOOKUP_SHARE) and the other kinds a sixth each."""
    rng = world._rng("services", split)
    per = -(-n // len(KINDS))
    out = []
    for kind in ("weather", "event", "lookup"):
        m = LOOKUP_SHARE if kind == "lookup" and split == "train" else 1
        entries = _directory_entries(world, split, per * m, rng) if kind == "lookup" else [("", "")] * (per * m)
        out += [{**_service_chat(world, kind, split, rng, e), "id": f"{kind}:{split}:{i}"}
                for i, e in enumerate(entries)]
    for p in world.problems(TOOL_LEVEL, split, per, "services-calc"):
        messages = [*world.prompt(world.question(p, rng)), *world._tool_call_turns(p)]
        out.append({"messages": messages, "kind": "calculator", "id": p.id, "facts": [f"Answer: {p.answer}"],
                    "call": {"name": "calculator", "arguments": {"expression": p.expression}}})
    small = [p for level in (1, 2) for p in world.problems(level, split, per, "services-direct")]
    rng.shuffle(small)
    for p in small[:per]:  # no tool needed: a sum small enough to do in the head
        out.append({"messages": [*world.prompt(world.question(p, rng)), {"role": "assistant", "content":
                    world.solution(p)}], "kind": "direct", "call": None, "facts": [f"Answer: {p.answer}"], "id": p.id})
    tools = [WEATHER_TOOL, ADD_EVENT_TOOL, LOOKUP_TOOL]
    for r in out:
        r["tools"] = [*world._tools(), *copy.deepcopy(tools)]  # each record its own copy
    world._rng("services-shuffle", split).shuffle(out)
    return out[:n]



# ------------------------------------------------------------------------------------------------
# Pretraining text: the services in prose

def _made_up(world, field: str, rng: random.Random) -> str:
    """A directory value of `field` that is nobody's real entry."""
    real = {e[field] for e in world.directory.entries.values()}
    while True:
        value = Directory(rng.random(), ("x",)).entries["x"][field]
        if value not in real:
            return value


def diary(world, rng: random.Random) -> str:
    """A pretraining document: a service used by one of the town's people, written as a log -- the question, the
    call (JSON, as a tool call writes it), the result and the sentence made from it -- so that the base model has
    seen values carried from a question into a call and from a result into an answer before any tool-use SFT; or a
    day of the year said and said again. Only training (city, day) pairs and event titles appear, and no directory
    entry (directory logs, tried, cost the base model much of its arithmetic)."""
    seed, person = world.seed, rng.choice(tuple(world.cast))
    kind = rng.choice(("weather", "event", "day"))
    if kind == "weather":
        city, day = _held_out(seed, "train", rng, lambda r: f"{r.choice(CITIES)} {_random_day(r)}").split()
        args, result = {"city": city, "date": day}, get_weather(city, day)
        ask = rng.choice(ASK["weather"]).format(city=city, date=day)
        answer = (f"{result['condition'].capitalize()} in {city} on {day}: high {result['high_c']} C, "
                  f"low {result['low_c']} C.")
        name = "get_weather"
    elif kind == "event":
        title = _held_out(seed, "train", rng, lambda r: f"{r.choice(ACTIVITIES)} with {r.choice(tuple(world.cast))}")
        day, start = _random_day(rng), f"{rng.randint(7, 20):02d}:{rng.choice((0, 15, 30, 45)):02d}"
        minutes = rng.choice((15, 30, 45, 60, 90, 120))
        args = {"title": title, "date": day, "start": start, "duration_minutes": minutes}
        result = Calendar().add_event(**args)
        ask = rng.choice(ASK["event"]).format(title=title, date=day, start=start, minutes=minutes)
        answer, name = f"Added {title} on {day}, {result['start']}-{result['end']}.", "add_event"
    else:
        when = f"{rng.choice(MONTHS)} {rng.randint(1, 28)}"
        return f"{person} asked: When is the fair?\nThe notice said: {when}\nThe fair is on {when}."
    return f"{person} asked: {ask}\ncall {name} {json.dumps(args)}\nresult {json.dumps(result)}\n{answer}"
