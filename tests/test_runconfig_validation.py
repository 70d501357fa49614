"""Run configs are checked when read: every mistake is a ConfigError naming the file and the
field, never a NumPy, scikit-learn or ``**params`` traceback later on."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from recloop.cli import app
from recloop.errors import ConfigError
from recloop.runconfig import load_run_config, read_toml

runner = CliRunner()


def _config(tmp_path: Path, data: str = "", run: str = "") -> Path:
    path = tmp_path / "run.toml"
    path.write_text(
        f'[data]\ndataset = "synthetic"\n{data}\n[model]\nname = "ItemKNN"\n[run]\n{run}\n'
    )
    return path


def _fails(path: Path, *expected: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_run_config(path)
    text = str(info.value)
    assert text.startswith(f"{path}: "), text
    assert all(e in text for e in expected), text
    return text


def test_non_utf8_and_folders_are_config_errors(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(b'[model]\nname = "\xc9"\n')
    with pytest.raises(ConfigError, match=r"latin1.toml:2: not UTF-8 text \(byte 0xc9\)"):
        read_toml(latin1)
    with pytest.raises(ConfigError, match="is a folder, not a TOML file"):
        read_toml(tmp_path)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(bytes(range(128, 256)))
    with pytest.raises(ConfigError, match=r"binary\.toml"):
        read_toml(binary)


@pytest.mark.parametrize(
    "args",
    [
        ["train", "-c"],
        ["evaluate", "-c"],
        ["tune", "-s"],
        ["semantic-ids", "build", "-c"],
        ["model", "train", "EASE", "-c"],
    ],
)
def test_every_command_that_reads_toml_says_which_file(tmp_path: Path, args: list[str]) -> None:
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(b'[model]\nname = "\xc9"\n')
    for path, expected in ((latin1, "not UTF-8 text"), (tmp_path, "is a folder")):
        result = runner.invoke(app, [*args, str(path)])
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith(f"error: {path}") and expected in result.stderr
        assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("run", "field"),
    [
        ("seeds = [-1]", "run.seeds.0"),
        ("seeds = []", "run.seeds"),
        ("seeds = [true]", "run.seeds.0"),
        ("seeds = [1.5]", "run.seeds.0"),
        ("seeds = [0, 1, 0]", "run.seeds"),
        ("ks = [0]", "run.ks.0"),
        ("ks = []", "run.ks"),
        ("ks = [10, 10]", "run.ks"),
    ],
)
def test_run_settings_are_checked(tmp_path: Path, run: str, field: str) -> None:
    _fails(_config(tmp_path, run=run), f"field '{field}'")


def test_good_run_settings_still_load(tmp_path: Path) -> None:
    run = load_run_config(_config(tmp_path, run="seeds = [0, 2]\nks = [5, 10]")).run
    assert run.seeds == [0, 2] and run.ks == [5, 10]
    assert load_run_config(_config(tmp_path)).run.seeds == [0]


def test_split_parameters_must_belong_to_the_protocol(tmp_path: Path) -> None:
    text = _fails(
        _config(tmp_path, data="[data.split]\ntest = 0.2"), "'data.split.test'", "valid_share"
    )
    assert "test_share" in text
    loo = 'protocol = "loo"\n[data.split]\nvalid_share = 0.2'
    _fails(_config(tmp_path, data=loo), "'data.split.valid_share'", "loo")
    ok = load_run_config(_config(tmp_path, data="[data.split]\ntest_share = 0.2"))
    assert ok.data.split == {"test_share": 0.2}


def test_path_only_with_files(tmp_path: Path) -> None:
    _fails(_config(tmp_path, data='path = "x.csv"'), "'data.path'", "dataset = 'files'")
    files = tmp_path / "files.toml"
    files.write_text('[data]\ndataset = "files"\n[model]\nname = "EASE"\n')
    _fails(files, "'data.path'")


def test_train_refuses_a_negative_seed_in_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "-c", str(_config(tmp_path, run="seeds = [-1]"))])
    assert result.exit_code == 2 and "run.seeds.0" in result.stderr
    assert "Traceback" not in result.output
