"""Errors recloop raises for user mistakes: each one is a single readable line.

The CLI turns any :class:`RecloopError` into that line on stderr and exit code 2; a traceback
means a bug in recloop, never a mistake in the user's input.
"""

from __future__ import annotations

from pathlib import Path


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (its type's name when it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__


class RecloopError(Exception):
    """Base class for errors caused by the user's input or environment, not by a bug."""


class DataError(RecloopError, ValueError):
    """Bad input data, located as precisely as we can: file, line (1-based) and field."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = str(path) if path is not None else None
        self.line = line
        self.field = field
        self.reason = message
        super().__init__(self._format())

    def _format(self) -> str:
        where = ""
        if self.path is not None:
            where = self.path
            if self.line is not None:
                where += f":{self.line}"
        parts = [p for p in (where, f"field '{self.field}'" if self.field else "") if p]
        prefix = ": ".join(parts)
        text = " ".join(self.reason.split())  # always one line
        return f"{prefix}: {text}" if prefix else text


class UnknownIdError(RecloopError, KeyError):
    """An external id that an :class:`~recloop.data.IdMap` has never seen."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the plain message
        return str(self.args[0]) if self.args else "unknown id"


class ConfigError(RecloopError, ValueError):
    """An invalid configuration value or combination of options."""


class DatasetNotFoundError(RecloopError, FileNotFoundError):
    """A named dataset could not be found locally nor downloaded."""
