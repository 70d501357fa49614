"""``recloop simulate`` answers bad options before it simulates anything."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from recloop.cli import app
from recloop.engine import cli as engine_cli

runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_simulation(monkeypatch: pytest.MonkeyPatch) -> None:
    def build_setup(*args: object) -> None:
        raise AssertionError("the simulation started before its options were checked")

    monkeypatch.setattr(engine_cli, "build_setup", build_setup)


def test_out_that_is_a_file_fails_before_the_simulation(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    result = runner.invoke(app, ["simulate", "--out", str(afile)])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == f"error: --out {afile}: exists and is not a folder"
    assert afile.read_text() == "keep me"


def test_negative_seed_is_refused(tmp_path: Path) -> None:
    args = ["simulate", "--population", "movielens", "--seed", "-1", "--out", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "--seed" in result.output
    assert "Traceback" not in result.output
