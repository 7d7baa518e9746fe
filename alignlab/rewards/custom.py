"""Reward functions a config names as `module:function`: code that the run imports and calls, so only on request.

    import_reward("my_rewards:brevity", allow_code=True)      the function, checked to be callable

The module is looked up as Python imports it (sys.path), then in the current directory, where a run's own reward
file usually sits (`alignlab` started as a console script does not have it on sys.path). The function may be
nested ("my_rewards:Rewards.brevity") and must follow trl's convention, fn(prompts, completions, **columns) ->
list[float | None]. A config is data until it names code: allow_code=False (allow_custom_rewards=false, the
default) refuses, so that running someone else's config never runs their code by surprise.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable

from alignlab.errors import ConfigError


def import_reward(spec: str, allow_code: bool) -> Callable:
    """The callable that `spec` ("module:function") names. ConfigError when allow_code is False, when the spec is
    malformed, when the module cannot be imported (the error it raised is named), or when the name is missing or
    not callable."""
    module_name, colon, attr = spec.partition(":")
    if not colon or not module_name.strip() or not attr.strip():
        raise ConfigError(f"reward {spec!r}: a custom reward is written module:function (e.g. my_rewards:brevity)")
    if not allow_code:
        raise ConfigError(f"reward {spec!r} imports and runs code named in the config; set "
                          "allow_custom_rewards=true to allow it (only for configs you trust)")
    module = _import(module_name.strip(), spec)
    found = module
    for part in attr.strip().split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise ConfigError(f"reward {spec!r}: {module.__file__ or module_name} has no {attr!r}") from None
    if not callable(found) or isinstance(found, type):
        raise ConfigError(f"reward {spec!r} is a {type(found).__name__}, not a function: name a function "
                          "fn(prompts, completions, **columns) -> list[float | None]")
    return found


def _import(name: str, spec: str):
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.append(cwd)  # after everything else: a local file never shadows an installed module
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name == name or name.startswith(f"{e.name}."):  # the module or its package, not one it imports
            raise ConfigError(f"reward {spec!r}: no module {name!r} on the Python path or in {cwd}") from None
        raise ConfigError(f"reward {spec!r}: importing {name!r} failed ({type(e).__name__}: {e})") from e
    except Exception as e:  # a syntax error or an exception raised at import: the user's file, their fix
        raise ConfigError(f"reward {spec!r}: importing {name!r} failed ({type(e).__name__}: {e})") from e
    finally:
        if added:
            sys.path.remove(cwd)
