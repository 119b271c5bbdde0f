"""User-facing errors.

Everything a user can cause (bad config, bad data, missing package) raises a
`UserError`; the CLI prints its one-line message and exits with code 2. Any
other exception is a bug in transferkit and keeps its traceback.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2


class UserError(Exception):
    """An error the user can fix; the message says what and where."""


class ConfigError(UserError):
    """A config key is unknown, has the wrong type, or an invalid value."""


class DataError(UserError):
    """A data row cannot be used. Names the file, line and field."""

    def __init__(self, source: str, message: str, line: int | None = None, field: str | None = None):
        where = source if line is None else f"{source}:{line}"
        if field is not None:
            where += f": field '{field}'"
        super().__init__(f"{where}: {message}")
        self.source, self.line, self.field = source, line, field


class ModelError(UserError):
    """A model name cannot be resolved or its package is missing."""
