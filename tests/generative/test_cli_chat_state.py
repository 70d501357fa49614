"""``recloop chat --state``: a state file in a new folder, a folder in the way, and a state
resumed over another dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from generative.test_retrieval import HashEncoder
from generative.test_routes_conversation import movie_dataset
from recloop.cli import app
from recloop.generative import cli_chat

runner = CliRunner()


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every dataset name asked for; each loads the tiny catalogue."""
    data = movie_dataset()
    asked: list[str] = []

    def load(name: str, console: Any) -> Any:
        asked.append(name)
        return data

    monkeypatch.setattr(cli_chat, "load_data", load)
    monkeypatch.setattr(cli_chat, "text_encoder", lambda: HashEncoder(dim=128, name="hash-128"))
    return asked


def chat(*args: str, code: int = 0) -> Any:
    result = runner.invoke(app, ["chat", *args, "--json"])
    assert result.exit_code == code, result.output + repr(result.exception)
    return result


def test_state_in_a_folder_that_does_not_exist_yet(tmp_path: Path, loads: list[str]) -> None:
    path = tmp_path / "nodir" / "talk.json"
    chat("--state", str(path), "--message", "a 90s comedy")
    saved = json.loads(path.read_text())
    assert len(saved["turns"]) == 1 and saved["dataset"] == "ml-100k"


def test_state_that_cannot_be_written_fails_before_any_work(
    tmp_path: Path, loads: list[str]
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    for path, expected in (
        (tmp_path, "is a folder, not a file"),
        (afile / "talk.json", "is not a folder"),
    ):
        result = chat("--state", str(path), "--message", "a comedy", code=2)
        assert result.stderr.startswith(f"error: --state {path}") and expected in result.stderr
    assert loads == []  # nothing was loaded, let alone trained
    assert afile.read_text() == "keep me"


def test_a_state_resumes_only_over_its_own_dataset(tmp_path: Path, loads: list[str]) -> None:
    path = tmp_path / "talk.json"
    chat("--state", str(path), "--message", "a 90s comedy")
    before = path.read_text()
    other = chat("--state", str(path), "--dataset", "ml-1m", "--message", "older", code=2)
    assert "is a conversation over ml-100k; pass --dataset ml-100k to resume it" in other.stderr
    assert path.read_text() == before and loads == ["ml-100k"]
    chat("--state", str(path), "--message", "something older")  # the same dataset resumes
    assert len(json.loads(path.read_text())["turns"]) == 2


def test_a_state_written_before_the_dataset_was_recorded_still_resumes(
    tmp_path: Path, loads: list[str]
) -> None:
    path = tmp_path / "talk.json"
    chat("--state", str(path), "--message", "a 90s comedy")
    saved = json.loads(path.read_text())
    del saved["dataset"]
    path.write_text(json.dumps(saved))
    chat("--state", str(path), "--dataset", "ml-1m", "--message", "something older")
    assert json.loads(path.read_text())["dataset"] == "ml-1m"
