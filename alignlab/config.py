"""Configs: dataclasses filled from a YAML file plus `key=value` overrides from the command line.

    alignlab pretrain --config configs/pretrain/shakespeare_char.yaml train.lr=3e-3 model.n_layers=6

Nested dataclasses map to nested YAML mappings; a dotted key reaches inside them. Values are parsed as
YAML (so `3e-3`, `true`, `[1, 2]` and `null` mean what they look like). Every key is checked: an unknown
key or a value of the wrong type is an error naming the file and the key, never silently ignored.
The resolved config (file + overrides + defaults) is saved next to the run's outputs.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from alignlab.errors import ConfigError


class Loader(yaml.SafeLoader):
    """YAML 1.1 reads `3e-3` (no dot) as a string; people writing learning rates mean a float."""


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d[\d_]*\.?[\d_]*(e[-+]?\d+)?|\.\d+(e[-+]?\d+)?|\.inf|\.nan)$", re.IGNORECASE),
    list("-+0123456789."))


def yaml_load(text: str):
    return yaml.load(text, Loader=Loader)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """["train.lr=3e-3", "model.dim=128"] -> {"train": {"lr": 0.003}, "model": {"dim": 128}}."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value")
        try:
            value = yaml_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p} is not a section")
        node[leaf] = value
    return out


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML ({getattr(e, 'problem', None) or e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of keys to values")
    return data


def _check_value(value: Any, hint: Any, key: str, origin: str) -> Any:
    """Validate (and gently coerce: int -> float) a leaf value against its type annotation."""
    args = typing.get_args(hint)
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    if is_union:
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is not type(None):
                try:
                    return _check_value(value, a, key, origin)
                except ConfigError:
                    continue
        raise ConfigError(f"{origin}: {key} = {value!r} does not fit {hint}")
    base = typing.get_origin(hint) or hint
    if base is Any:
        return value
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{origin}: {key} expects a number, got {value!r}")
    if isinstance(base, type) and not isinstance(value, base):
        raise ConfigError(f"{origin}: {key} expects {base.__name__}, got {value!r}")
    return value


def build(cls, data: dict, origin: str = "config", prefix: str = ""):
    """Instantiate dataclass `cls` from a nested dict, checking every key and type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: {prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            nested = [f"{name}.{key}" for name, h in hints.items()
                      if dataclasses.is_dataclass(h) and key in {f.name for f in dataclasses.fields(h)}]
            close = nested or difflib.get_close_matches(key, fields, n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else f"; known keys: {', '.join(fields)}"
            raise ConfigError(f"{origin}: unknown key {prefix}{key}{hint}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(value, hint):  # a default filled in above
            kwargs[key] = value
        elif dataclasses.is_dataclass(hint):
            if isinstance(value, dict) and fields[key].default_factory is not dataclasses.MISSING:
                # the recipe's own defaults for the block's missing keys (GRPO's train.lr=1e-6), not the block
                # class's; a key that is given replaces its default whole (reward_funcs={correctness: 1})
                default = fields[key].default_factory()
                value = {**{f.name: getattr(default, f.name) for f in dataclasses.fields(default)
                            if f.name not in value}, **value}
            kwargs[key] = build(hint, value, origin, f"{prefix}{key}.")
        else:
            kwargs[key] = _check_value(value, hint, f"{prefix}{key}", origin)
    try:
        return cls(**kwargs)
    except ValueError as e:  # a dataclass's own validation (__post_init__)
        raise ConfigError(f"{origin}: {e}") from None


def load_config(cls, path: str | Path | None = None, overrides: list[str] | None = None,
                defaults: dict | None = None):
    """The dataclass `cls` from `defaults` (changed defaults, e.g. RLOO's), a YAML file (optional) on top, and
    command-line overrides on top of both."""
    data = merge(dict(defaults or {}), read_yaml(path) if path else {})
    origin = str(path) if path else "config"
    if overrides:
        data = merge(data, parse_overrides(overrides))
        origin += " + overrides" if path else ""
    return build(cls, data, origin)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path
