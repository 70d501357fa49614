"""``recloop tune`` and ``quickstart`` check their options before any data loads or any trial
runs: a metric, a space or a model name that cannot work is one ``error:`` line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli_support import cli_error
from recloop import cli, experiment
from recloop.cli import app
from recloop.data import make_split
from recloop.data.types import Dataset, Interactions
from recloop.errors import ConfigError
from recloop.tuning import SearchSpace, check_metric, load_space, tune

runner = CliRunner()
SPACE = 'model = "ItemKNN"\n[params.k]\ntype = "int"\nlow = 5\nhigh = 50\n'
LOG_SPACE = 'model = "EASE"\n[params.l2]\ntype = "float"\nlow = -10.0\nhigh = 10.0\nlog = true\n'


@pytest.fixture
def no_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading data fails the test: the options must be refused before it."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("data was loaded before the options were checked")

    monkeypatch.setattr(experiment, "load_data", refuse)
    monkeypatch.setattr(cli, "movielens_or_synthetic", refuse)


def _space(tmp_path: Path, text: str = SPACE) -> Path:
    path = tmp_path / "space.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("param", "expected"),
    [
        ('type = "float"\nlow = -10.0\nhigh = 10.0\nlog = true', "needs low > 0, not -10"),
        ('type = "float"\nlow = 0.0\nhigh = 10.0\nlog = true', "needs low > 0, not 0"),
        ('type = "float"\nlow = 1.0\nhigh = 10.0\nlog = true\nstep = 1.0', "takes no 'step'"),
        ('type = "int"\nlow = 1\nhigh = 10\nlog = true\nstep = 2', "takes no 'step'"),
        ('type = "int"\nlow = 1\nhigh = 10\nstep = 0', "'step' must be more than 0"),
    ],
)
def test_space_bounds_optuna_would_refuse(tmp_path: Path, param: str, expected: str) -> None:
    path = _space(tmp_path, f'model = "EASE"\n[params.l2]\n{param}\n')
    with pytest.raises(ConfigError, match=r"space\.toml: field 'params\.l2'") as info:
        load_space(path)
    assert expected in str(info.value)


def test_space_log_int_with_step_one_is_fine(tmp_path: Path) -> None:
    text = SPACE + "log = true\nstep = 1\n"
    assert load_space(_space(tmp_path, text)).params["k"].log


def test_space_with_an_unknown_model(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"space\.toml: field 'model': unknown model 'Nope'"):
        load_space(_space(tmp_path, SPACE.replace("ItemKNN", "Nope")))


def test_check_metric_lists_the_known_ones() -> None:
    check_metric("ndcg@10")
    check_metric("recall@20")
    with pytest.raises(ConfigError, match=r"unknown tuning metric 'ndgc@10' \(known: .*ndcg@10"):
        check_metric("ndgc@10")
    with pytest.raises(ConfigError, match="ndcg@5"):
        check_metric("ndcg@5")


def test_tune_checks_the_metric_and_timeout_before_any_trial() -> None:
    rng = np.random.default_rng(0)
    data = Interactions.from_arrays(rng.integers(0, 30, 600), rng.integers(0, 40, 600))
    split = make_split(data, "ratio", seed=0)
    space = SearchSpace.model_validate(
        {"model": "Popular", "params": {"count": {"type": "categorical", "choices": ["users"]}}}
    )
    trials: list[object] = []
    with pytest.raises(ConfigError, match="ndgc@10"):
        tune(
            space,
            split,
            Dataset("tiny", data),
            n_trials=2,
            metric="ndgc@10",
            on_trial=trials.append,
        )
    with pytest.raises(ConfigError, match="timeout must be more than 0"):
        tune(space, split, Dataset("tiny", data), n_trials=2, timeout=0, on_trial=trials.append)
    assert trials == []


@pytest.mark.usefixtures("no_data")
def test_cli_tune_refuses_bad_options_up_front(tmp_path: Path) -> None:
    space = str(_space(tmp_path))
    line = cli_error(["tune", "-s", space, "--metric", "ndgc@10"])
    assert "unknown tuning metric 'ndgc@10'" in line
    assert "--timeout must be more than 0 seconds" in cli_error(
        ["tune", "-s", space, "--timeout", "0"]
    )
    log_space = _space(tmp_path, LOG_SPACE)
    assert "needs low > 0" in cli_error(["tune", "-s", str(log_space)])
    folder = tmp_path / "adir.toml"
    folder.mkdir()
    line = cli_error(["tune", "-s", _space(tmp_path).as_posix(), "--out", str(folder)])
    assert f"--out {folder}: is a folder, not a file" in line
    assert not (tmp_path / "adir.trials.json").exists()  # nothing written before the error
    result = runner.invoke(app, ["tune", "-s", space, "--sampler-seed", "-1"])
    assert result.exit_code == 2 and "--sampler-seed" in result.output


@pytest.mark.usefixtures("no_data")
def test_quickstart_checks_every_model_name_before_training(tmp_path: Path) -> None:
    args = ["quickstart", "-m", "Popular", "-m", "ItemKNN", "-m", "Nope", "--out", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: unknown model 'Nope'")
    assert "using its defaults" not in result.output and "Traceback" not in result.output
    negative = runner.invoke(app, ["quickstart", "--seed", "-1", "--out", str(tmp_path)])
    assert negative.exit_code == 2 and "--seed" in negative.output
