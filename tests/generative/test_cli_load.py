"""``--load DIR`` of ``recloop explain`` (and chat and onboard, which share it) on folders that
are not saved models: one readable error, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from recloop.errors import RecloopError
from recloop.generative.cli_explain import fit_or_load_model

NOT_SAVED = "not a saved recloop model folder"


@pytest.mark.parametrize(
    "manifest",
    [
        b"[]",
        b'"EASE"',
        b"null",
        b"42",
        b"{}",
        b'{"model": null}',
        b'{"model": ""}',
        b'{"model": {"a": 1}}',
        b'{"model": ["EASE"]}',
        b"{not json",
        b"\xff\xfe\x00",
    ],
)
def test_a_manifest_that_names_no_model_is_not_a_saved_model(
    tmp_path: Path, manifest: bytes
) -> None:
    (tmp_path / "manifest.json").write_bytes(manifest)
    with pytest.raises(RecloopError, match=NOT_SAVED):
        fit_or_load_model("EASE", tmp_path, data=None, console=None)


def test_a_folder_without_a_manifest_is_not_a_saved_model(tmp_path: Path) -> None:
    with pytest.raises(RecloopError, match=NOT_SAVED):
        fit_or_load_model("EASE", tmp_path, data=None, console=None)
    with pytest.raises(RecloopError, match=NOT_SAVED):
        fit_or_load_model("EASE", tmp_path / "missing", data=None, console=None)


@pytest.mark.parametrize(
    "command",
    [
        ["explain", "--user", "u0"],
        ["chat", "--user", "u0", "--message", "a comedy"],
        ["onboard", "--genre", "Pina"],
    ],
    ids=["explain", "chat", "onboard"],
)
def test_the_clis_answer_a_bad_load_folder_with_one_line(
    tmp_path: Path, command: list[str]
) -> None:
    from typer.testing import CliRunner

    from recloop.cli import app

    (tmp_path / "manifest.json").write_text("[]")
    args = [*command, "--dataset", "synthetic", "--load", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert NOT_SAVED in result.output and "Traceback" not in result.output
    assert not isinstance(result.exception, TypeError)
