"""Running the CLI in tests: a command that must succeed, and a user mistake that must be
exactly one ``error:`` line on stderr with exit code 2 (never a traceback)."""

from __future__ import annotations

from typer.testing import CliRunner

from recloop.cli import app

runner = CliRunner()


def cli_ok(args: list[str]) -> str:
    """The output of a command that must succeed."""
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def cli_error(args: list[str]) -> str:
    """The single stderr line of a user mistake (exit code 2, no traceback)."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output + repr(result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]
