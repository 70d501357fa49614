"""``recloop train`` and ``evaluate`` on a user's files, damaged or shared run folders and
filters that leave nothing: results or one-line errors, never lost models or NaN records."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from cli_support import cli_error, cli_ok
from recloop.cli import write_records


@pytest.fixture
def events(tmp_path: Path) -> Path:
    """60 users × 15 rated items of 80, with timestamps: a user's own interaction file."""
    rng = random.Random(0)
    lines, t = ["user_id,item_id,rating,timestamp"], 1000
    for user in range(60):
        for item in rng.sample(range(80), 15):
            t += 1
            lines.append(f"{user},{item},{rng.randint(1, 5)},{t}")
    path = tmp_path / "events.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _config(tmp_path: Path, name: str, data: str, model: str, out: Path | None) -> Path:
    path = tmp_path / name
    run = f'[run]\nseeds = [0]\nout = "{out}"\n' if out is not None else "[run]\nseeds = [0]\n"
    path.write_text(f'[data]\n{data}\n[model]\nname = "{model}"\n{run}')
    return path


def test_train_and_evaluate_a_users_own_files(tmp_path: Path, events: Path) -> None:
    out = tmp_path / "run"
    config = _config(tmp_path, "f.toml", f'dataset = "files"\npath = "{events}"', "EASE", out)
    cli_ok(["train", "-c", str(config)])
    cli_ok(["evaluate", "-c", str(config)])
    assert (out / "report.html").is_file() and (out / "results.json").is_file()
    (record,) = json.loads((out / "records.json").read_text())["records"]
    assert record["dataset"] == "files:events" and record["model"] == "EASE"
    assert 0.0 <= record["metrics"]["ndcg@10"] <= 1.0


def test_evaluate_without_fit_json_says_to_train_again(tmp_path: Path, events: Path) -> None:
    out = tmp_path / "run"
    config = _config(tmp_path, "f.toml", f'dataset = "files"\npath = "{events}"', "Popular", out)
    cli_ok(["train", "-c", str(config)])
    fit = out / "seed-0" / "fit.json"
    fit.unlink()
    line = cli_error(["evaluate", "-c", str(config)])
    assert f"{fit}: missing; run `recloop train -c {config}` again" in line
    fit.write_text("{not json")
    assert f"{fit}: damaged" in cli_error(["evaluate", "-c", str(config)])
    fit.write_text("{}")
    assert "'train_seconds'" in cli_error(["evaluate", "-c", str(config)])


def test_train_will_not_replace_another_models_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two configs without run.out share runs/default: the second may not overwrite the first's
    model; retraining the same model there still works."""
    monkeypatch.chdir(tmp_path)
    ease = _config(tmp_path, "a.toml", 'dataset = "synthetic"', "EASE", None)
    knn = _config(tmp_path, "b.toml", 'dataset = "synthetic"', "ItemKNN", None)
    cli_ok(["train", "-c", str(ease)])
    manifest = tmp_path / "runs/default/seed-0/model/manifest.json"
    before = manifest.read_text()
    line = cli_error(["train", "-c", str(knn)])
    assert "runs/default/seed-0/model holds a saved EASE model" in line
    assert f"{knn} trains ItemKNN" in line and "set run.out" in line
    assert manifest.read_text() == before
    cli_ok(["train", "-c", str(ease)])  # the same model may be retrained in place


def test_filters_that_leave_nothing_are_an_error_naming_them(tmp_path: Path) -> None:
    data = 'dataset = "synthetic"\n[data.filters]\nuser_core = 100000'
    config = _config(tmp_path, "empty.toml", data, "ItemKNN", tmp_path / "empty")
    line = cli_error(["train", "-c", str(config)])
    assert line.startswith(f"error: {config}: data.filters (user_core=100000) leave no")
    assert not (tmp_path / "empty").exists()


def test_a_split_with_an_empty_test_part_is_ancli_error(tmp_path: Path, events: Path) -> None:
    """A temporal cut after the last event leaves no test interactions."""
    data = f'dataset = "files"\npath = "{events}"\nprotocol = "temporal"\n'
    data += "[data.split]\nvalid_start = 1500\ntest_start = 999999"
    config = _config(tmp_path, "t.toml", data, "Popular", tmp_path / "t")
    line = cli_error(["train", "-c", str(config)])
    assert "temporal split (seed 0)" in line and "no positive test interactions" in line


def test_records_write_nan_as_null(tmp_path: Path) -> None:
    from recloop.benchmark import make_record

    record = make_record(
        dataset="synthetic-x", protocol="ratio", seed=0, model="Popular",
        metrics={"ndcg@10": float("nan"), "recall@10": 0.5},
    )  # fmt: skip
    path = tmp_path / "records.json"
    write_records(path, [record])

    def no_constants(token: str) -> float:
        raise AssertionError(f"bare {token} in records.json")

    (saved,) = json.loads(path.read_text(), parse_constant=no_constants)["records"]
    assert saved["metrics"] == {"ndcg@10": None, "recall@10": 0.5}
    assert math.isnan(record.metrics["ndcg@10"])  # the record itself is untouched


def test_dataset_and_protocol_options_need_all(tmp_path: Path) -> None:
    config = _config(tmp_path, "g.toml", 'dataset = "synthetic"', "Popular", tmp_path / "g")
    for command in ("train", "evaluate"):
        line = cli_error([command, "-c", str(config), "--dataset", "ml-1m", "--protocol", "loo"])
        assert "--dataset and --protocol only apply with --all" in line
    line = cli_error(["train", "-c", str(config), "--protocol", "loo"])
    assert "--protocol only apply with --all" in line
