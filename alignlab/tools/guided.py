"""Schema-constrained decoding: at every step, only the tokens that keep the reply a valid tool call may be drawn,
so the call is always JSON of its function's schema (what vLLM's guided decoding and OpenAI's `strict` give).

    guide = call_guide(tokenizer, tools)                        # tool_choice "required": any of the tools
    guide = call_guide(tokenizer, tools, name="get_weather")    # a named function: only its arguments are left
    engine.generate([prompt], SamplingParams(max_new_tokens=guide.max_tokens, guide=guide))

The grammar is read character by character by a small pushdown machine: a stack of frames (a literal, a string, a
number, a choice among fixed texts, an object, an array, a call), each of which takes a character, passes it to
the frame below, or refuses it. A token is allowed when the machine takes every character of its text; a walk over
a trie of the vocabulary's texts prunes a refused first character once for every token that starts with it. When
the call is complete only end-of-turn tokens are allowed.

The JSON is written in one spelling, json.dumps's: ", " and ": " between items, strings of printable ASCII
without escapes (at most MAX_STRING characters), numbers of at most MAX_DIGITS digits, arrays of at most MAX_ITEMS
items, keys in any order, no key twice, no key the schema does not name. So every call ends within `max_tokens`
tokens (each token carries at least one character), and the schema subset is check_arguments's: type (lists of
types, nullable), enum, required, properties, items, prefixItems.
"""

from __future__ import annotations

import json
import string
import weakref
from dataclasses import dataclass

import torch

from alignlab.text.template import END_OF_TURN_TOKENS
from alignlab.tools.calls import HERMES_CLOSE, HERMES_OPEN

MAX_STRING, MAX_DIGITS, MAX_ITEMS = 48, 12, 8
MEMO_STATES = 20_000  # allowed tokens remembered per guide, by grammar state
STRING_CHARS = frozenset(string.printable) - set('"\\\t\n\r\x0b\x0c')
REFUSE, PASS = "refuse", "pass"  # a frame's answers besides its replacement frames


# ------------------------------------------------------------------------------------------------
# Frames: each is immutable; step(c) returns the frames that replace it (top last), REFUSE, or PASS (it is
# complete and c belongs to the frame below)


@dataclass(frozen=True)
class Lit:
    """Exactly this text."""
    text: str

    def step(self, c):
        if c != self.text[0]:
            return REFUSE
        return (Lit(self.text[1:]),) if len(self.text) > 1 else ()


@dataclass(frozen=True)
class Choice:
    """One of several texts (enum values, true/false, null); done when one is complete and the next character
    continues none."""
    texts: tuple[str, ...]

    def step(self, c):
        rest = tuple(t[1:] for t in self.texts if t and t[0] == c)
        if rest:
            return () if rest == ("",) else (Choice(rest),)
        return PASS if "" in self.texts else REFUSE


@dataclass(frozen=True)
class Str:
    """A JSON string of printable ASCII, no escapes; n characters so far (-1: the opening quote is next)."""
    n: int = -1

    def step(self, c):
        if self.n < 0:
            return (Str(0),) if c == '"' else REFUSE
        if c == '"':
            return ()
        return (Str(self.n + 1),) if c in STRING_CHARS and self.n < MAX_STRING else REFUSE


@dataclass(frozen=True)
class Num:
    """A JSON number (an integer if integer): -?(0|[1-9][0-9]*)(.[0-9]+)?, at most MAX_DIGITS digits."""
    integer: bool
    part: str = "start"  # start, sign, zero, int, dot, frac
    digits: int = 0

    def step(self, c):
        digit, more = c.isdigit() and c.isascii(), self.digits < MAX_DIGITS
        if self.part in ("start", "sign"):
            if c == "-" and self.part == "start":
                return (Num(self.integer, "sign"),)
            if digit:
                return (Num(self.integer, "zero" if c == "0" else "int", 1),)
            return REFUSE
        if self.part in ("int", "frac") and digit and more:
            return (Num(self.integer, self.part, self.digits + 1),)
        if self.part in ("zero", "int") and c == "." and not self.integer and more:
            return (Num(self.integer, "dot", self.digits),)
        if self.part == "dot":
            return (Num(self.integer, "frac", self.digits + 1),) if digit else REFUSE
        return PASS  # complete (zero, int, frac): the character is the next frame's


def value(schema: dict):
    """The frame of one JSON value of `schema`, before its first character."""
    if "enum" in schema:
        return Choice(tuple(json.dumps(v) for v in schema["enum"]))
    return Value(schema)


def _types(schema: dict) -> list[str]:
    types = schema.get("type", ("string", "number", "boolean", "null"))  # no type: any scalar
    types = [types] if isinstance(types, str) else list(types)
    return types + ["null"] if schema.get("nullable") else types


# frames hold their schema dicts as given and never change them (frozen dataclasses are not hashed here)
@dataclass(frozen=True)
class Value:
    """A value of a schema whose type its first character picks: " string, - or digit number, t/f boolean,
    n null, { object, [ array."""
    schema: dict

    def step(self, c):
        s, types = self.schema, _types(self.schema)
        if c == '"' and "string" in types:
            return Str().step(c)
        if (c == "-" or c.isdigit()) and ({"number", "integer"} & set(types)):
            return Num(integer="number" not in types).step(c)
        if c in "tf" and "boolean" in types:
            return Choice(("true", "false")).step(c)
        if c == "n" and "null" in types:
            return Choice(("null",)).step(c)
        if c == "{" and "object" in types:
            return Obj(s.get("properties", {}), tuple(s.get("required", ()))).step(c)
        if c == "[" and "array" in types:
            return Arr(s.get("items", {}), tuple(s.get("prefixItems", ()))).step(c)
        return REFUSE


@dataclass(frozen=True)
class Obj:
    """{"key": value, ...}: keys of `properties` in any order, each once; closes once every required key is in."""
    properties: dict  # {name: schema}
    required: tuple[str, ...]
    part: str = "open"  # open, key_or_close, key_start, key, after_value
    used: frozenset = frozenset()
    key: str = ""  # the key typed so far

    def _left(self):
        return [k for k in self.properties if k not in self.used]

    def _with(self, **kw):
        return Obj(**{**self.__dict__, **kw})

    def step(self, c):
        closable = set(self.required) <= self.used
        if self.part == "open":
            return (self._with(part="key_or_close"),) if c == "{" else REFUSE
        if self.part in ("key_or_close", "after_value") and c == "}" and closable:
            return ()
        if self.part == "after_value":
            return (self._with(part="key_start"), Lit(" ")) if c == "," and self._left() else REFUSE
        if self.part in ("key_or_close", "key_start"):
            return (self._with(part="key", key=""),) if c == '"' and self._left() else REFUSE
        # typing a key: it must stay the start of a key not used yet
        if c == '"' and self.key in self._left():
            return (self._with(part="after_value", used=self.used | {self.key}, key=""),
                    value(self.properties[self.key]), Lit(": "))
        typed = self.key + c
        return (self._with(key=typed),) if any(k.startswith(typed) for k in self._left()) else REFUSE


@dataclass(frozen=True)
class Arr:
    """[value, ...]: prefixItems in order if given, else up to MAX_ITEMS values of `items`."""
    items: dict  # the schema of every value
    prefix: tuple = ()  # or prefixItems' schemas, one per position
    n: int = -1  # values so far (-1: the opening bracket is next)
    after_value: bool = False

    def _schema(self, i):
        return self.prefix[i] if self.prefix else self.items

    def step(self, c):
        limit = len(self.prefix) if self.prefix else MAX_ITEMS
        if self.n < 0:
            return (Arr(self.items, self.prefix, 0),) if c == "[" else REFUSE
        if c == "]" and (not self.prefix or self.n == limit) and (self.after_value or self.n == 0):
            return ()
        if self.after_value:
            return (Arr(self.items, self.prefix, self.n), Lit(" ")) if c == "," and self.n < limit else REFUSE
        if self.n >= limit:
            return REFUSE
        r = value(self._schema(self.n)).step(c)
        return r if r in (REFUSE, PASS) else (Arr(self.items, self.prefix, self.n + 1, True), *r)


@dataclass(frozen=True)
class Call:
    """The name of one of the tools, then its arguments: "NAME", "arguments": {...}"""
    functions: dict  # {name: parameters schema}
    typed: str | None = None  # the name typed so far (None: the opening quote is next)

    def step(self, c):
        names = list(self.functions)
        if self.typed is None:
            return (Call(self.functions, ""),) if c == '"' else REFUSE
        if c == '"' and self.typed in names:
            return (Lit("}"), value({"type": "object", **self.functions[self.typed]}), Lit(', "arguments": '))
        typed = self.typed + c
        return (Call(self.functions, typed),) if any(n.startswith(typed) for n in names) else REFUSE


def _longest(schema: dict) -> int:
    """An upper bound on the characters of a value of the schema, as the frames write it."""
    if "enum" in schema:
        return max(len(json.dumps(v)) for v in schema["enum"])
    types = _types(schema)
    out = 5  # false / null
    if "string" in types:
        out = max(out, MAX_STRING + 2)
    if {"number", "integer"} & set(types):
        out = max(out, MAX_DIGITS + 2)
    if "object" in types:
        props = schema.get("properties", {})
        out = max(out, 2 + sum(len(json.dumps(k)) + 4 + _longest(v) for k, v in props.items()))
    if "array" in types:
        items = schema.get("prefixItems") or [schema.get("items", {})] * MAX_ITEMS
        out = max(out, 2 + sum(_longest(s) + 2 for s in items))
    return out


# ------------------------------------------------------------------------------------------------
# The machine


def feed(stack: tuple, c: str) -> tuple | None:
    """The stack after character c, or None if the grammar refuses it."""
    while stack:
        r = stack[-1].step(c)
        if r == REFUSE:
            return None
        if r == PASS:
            stack = stack[:-1]
            continue
        return stack[:-1] + tuple(r)
    return None  # complete: nothing more may be written


class _Trie:
    """The vocabulary's token texts as a character trie: children {char: _Trie}, ids ending here."""

    def __init__(self):
        self.children: dict[str, _Trie] = {}
        self.ids: list[int] = []

    def add(self, text: str, token_id: int):
        node = self
        for c in text:
            node = node.children.setdefault(c, _Trie())
        node.ids.append(token_id)


_TRIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> (trie, end ids)


def _vocabulary(tokenizer) -> tuple[_Trie, list[int]]:
    """(trie of every token's text, the end-of-turn ids), once per tokenizer. Tokens whose text alone is not
    whole (a piece of a multi-byte character) or empty (special tokens) are left out of the trie."""
    if tokenizer not in _TRIES:
        trie = _Trie()
        for i in range(tokenizer.vocab_size):
            text = tokenizer.decode([i], skip_special_tokens=True)
            if text and "\ufffd" not in text:
                trie.add(text, i)
        ends = set(tokenizer.eos_token_ids or [])
        to_id = getattr(tokenizer, "token_to_id", None)
        ends |= {to_id(t) for t in END_OF_TURN_TOKENS if to_id is not None and to_id(t) is not None}
        _TRIES[tokenizer] = (trie, sorted(ends))
    return _TRIES[tokenizer]


class GuideState:
    """One request's place in the grammar."""

    def __init__(self, guide: Guide):
        self.guide, self.stack = guide, guide.start_stack

    @property
    def done(self) -> bool:
        return not self.stack

    def allowed(self, vocab_size: int) -> torch.Tensor:
        """bool [vocab_size]: the tokens that keep the reply in the grammar (end-of-turn ones once it is done)."""
        mask = torch.zeros(vocab_size, dtype=torch.bool)
        ids = self.guide.end_ids if self.done else self.guide.allowed_ids(self.stack)
        mask[[i for i in ids if i < vocab_size]] = True
        return mask

    def advance(self, token_id: int) -> None:
        if self.done:
            return
        for c in self.guide.tokenizer.decode([token_id], skip_special_tokens=True):
            self.stack = feed(self.stack, c)
            if self.stack is None:
                raise ValueError(f"token {token_id} left the grammar")  # allowed() never offers such a token


class Guide:
    """A grammar for the engine's `SamplingParams.guide`: start() gives each request its own GuideState."""

    def __init__(self, tokenizer, start_stack: tuple, longest: int):
        self.tokenizer, self.start_stack = tokenizer, start_stack
        self.trie, self.end_ids = _vocabulary(tokenizer)
        self.max_tokens = longest + 1  # every token writes at least one character; then the end of the turn
        self._memo: dict[str, list[int]] = {}

    def start(self) -> GuideState:
        return GuideState(self)

    def allowed_ids(self, stack: tuple) -> list[int]:
        """The ids of the tokens whose every character the machine takes from `stack`: a walk down the trie that
        stops at the first refused character. Remembered per state (rows and steps meet the same states often:
        the n-th character of a string, the same key next)."""
        key = repr(stack)
        if key in self._memo:
            return self._memo[key]
        allowed, todo = [], [(self.trie, stack)]
        while todo:
            node, state = todo.pop()
            for c, child in node.children.items():
                after = feed(state, c)
                if after is not None:
                    allowed += child.ids
                    if child.children:
                        todo.append((child, after))
        if len(self._memo) < MEMO_STATES:
            self._memo[key] = allowed
        return allowed


def call_guide(tokenizer, tools: list[dict], name: str | None = None) -> Guide:
    """The guide of a Hermes tool call after the forced start of the reply (serve/tools.py's tool_mode):
    after "<tool_call>\\n" (tool_choice "required") the call {"name": ..., "arguments": {...}} of any tool; after
    '<tool_call>\\n{"name": "NAME", "arguments": ' (a named function) that function's arguments and "}". Both end
    with "\\n</tool_call>"."""
    functions = {t["function"]["name"]: t["function"].get("parameters") or {} for t in tools}
    close = Lit("\n" + HERMES_CLOSE)
    if name is not None:
        if name not in functions:
            raise ValueError(f"no tool named {name!r} (the tools: {', '.join(functions)})")
        schema = {"type": "object", **functions[name]}
        return Guide(tokenizer, (close, Lit("}"), value(schema)), _longest(schema) + 1 + len(close.text))
    start = '{"name": '
    longest = max(len(json.dumps(n)) + len(', "arguments": ') + _longest({"type": "object", **p}) + 1
                  for n, p in functions.items())
    return Guide(tokenizer, (close, Call(functions), Lit(start)), len(start) + longest + len(close.text))


REQUIRED_START = HERMES_OPEN + "\n"  # the forced start of a reply that must call a tool


def named_start(name: str) -> str:
    """The forced start of a reply that must call this function."""
    return REQUIRED_START + '{"name": ' + json.dumps(name) + ', "arguments": '
