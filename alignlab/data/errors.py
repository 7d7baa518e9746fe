"""The errors the data layer raises: each one a single line that names the file, URL or field.

Each is an alignlab.errors.UserError (the CLI prints it as one line and exits with 2) and subclasses the
built-in exception a caller already catches, so `except ValueError` / `except FileNotFoundError` keep working.
"""

from __future__ import annotations

from alignlab.errors import UserError


class DataError(UserError, ValueError):
    """Data that cannot be used as given: a bad source spec, non-UTF-8 text, an empty corpus,
    a split too short for a window, a character the tokenizer cannot encode."""


class ChecksumError(DataError):
    """A download whose sha256 is not the one expected (nothing is kept in the cache)."""


class DataNotFoundError(UserError, FileNotFoundError):
    """A data file, glob or directory that does not exist."""


class DownloadError(UserError, OSError):
    """A URL that could not be fetched (network, HTTP status, ...)."""


class MissingDependencyError(DataError, ImportError):
    """An optional package (e.g. `datasets`) is needed but not installed; says what to install."""
