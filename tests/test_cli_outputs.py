"""Output paths the CLI cannot write: one ``error:`` line and exit code 2, checked before the
work where that is cheap, never a traceback after it."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cli_support import cli_error
from recloop import cli
from recloop.cli import check_writable, user_errors
from recloop.errors import RecloopError

runner = CliRunner()


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (FileExistsError(17, "File exists", "out/afile"), "error: out/afile: File exists"),
        (IsADirectoryError(21, "Is a directory", "adir.toml"), "error: adir.toml: Is a directory"),
        (NotADirectoryError(20, "Not a directory", "f/x"), "error: f/x: Not a directory"),
        (PermissionError(13, "Permission denied", "ro/x"), "error: ro/x: Permission denied"),
        (OSError("disk on fire"), "error: disk on fire"),
    ],
)
def test_user_errors_turns_os_errors_into_one_line(error: OSError, expected: str) -> None:
    one = typer.Typer()

    @one.command()
    @user_errors
    def fail() -> None:
        raise error

    result = runner.invoke(one, [])
    assert result.exit_code == 2 and result.stderr.strip() == expected


def test_check_writable_names_what_is_in_the_way(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    with pytest.raises(RecloopError, match=r"--out .*afile: exists and is not a folder"):
        check_writable(afile, "--out", folder=True)
    with pytest.raises(RecloopError, match="afile is not a folder"):
        check_writable(afile / "sub" / "x.json", "--state", folder=False)
    with pytest.raises(RecloopError, match="is a folder, not a file"):
        check_writable(tmp_path, "--out", folder=False)
    check_writable(tmp_path / "new" / "deeper", "--out", folder=True)  # parents get created
    check_writable(tmp_path / "new" / "state.json", "--state", folder=False)
    assert not (tmp_path / "new").exists()  # checking creates nothing
    assert afile.read_text() == "keep me"


def test_quickstart_out_is_checked_before_any_data_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_data(seed: int = 0) -> None:
        raise AssertionError("data was loaded before --out was checked")

    monkeypatch.setattr(cli, "movielens_or_synthetic", no_data)
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    line = cli_error(["quickstart", "-m", "Popular", "--out", str(afile)])
    assert f"--out {afile}: exists and is not a folder" in line
    assert afile.read_text() == "keep me"


def test_run_out_that_is_a_file_fails_before_training(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    config = tmp_path / "run.toml"
    config.write_text(
        f'[data]\ndataset = "synthetic"\n[model]\nname = "Popular"\n[run]\nout = "{afile}"\n'
    )
    line = cli_error(["train", "-c", str(config)])
    assert f"{config}: run.out {afile}: exists and is not a folder" in line
    assert afile.read_text() == "keep me"
