"""CLI commands of the generative module: review (filled in by the generative issue)."""

from __future__ import annotations

from typing import Any

import typer


def register(app: typer.Typer, console: Any, user_errors: Any) -> None:
    """Add the review commands to the main CLI."""
