"""The errors alignlab raises for input a user can fix; the CLI prints them as one line and exits with 2.

Everything else (a bug) raises with its traceback; `alignlab --debug ...` shows the traceback for these too.
Each subclasses the built-in exception a caller already catches, so `except ValueError` keeps working.

    UserError                 the root: any of the below
      ConfigError             a config file, key, value or combination of options that cannot be used
      DataError               a data file, record, field or source spec (alignlab/data/errors.py has its kinds)
      CheckpointError         a model directory or checkpoint that cannot be loaded
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by the user's input, reported as one line without a traceback."""


class ConfigError(UserError, ValueError):
    """A config file, override or combination of options that does not fit; the message names the key."""


class CheckpointError(UserError, ValueError):
    """A model directory or checkpoint that cannot be loaded; the message names the file and what is wrong."""
