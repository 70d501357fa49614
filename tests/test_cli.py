"""The command line: one-line errors with exit code 2, quickstart, train/evaluate/tune."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from recloop.cli import app

runner = CliRunner()


def _ok(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output + str(result.exception)
    return result.output


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "empty"),
        (b"user_id,item_id,timestamp\n", "no data rows"),
        (b"user_id,item_id,timestamp\n1,2,yesterday\n", ":2"),
        (b"user_id,item_id\n1,2\n3,4,5\n", ":3"),
    ],
)
def test_data_info_bad_file_is_one_line_and_exit_2(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    path = tmp_path / "events.csv"
    path.write_bytes(content)
    result = runner.invoke(app, ["data", "info", str(path)])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "events.csv" in lines[0] and expected in lines[0]
    assert "Traceback" not in result.output


def test_data_info_missing_path(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "info", str(tmp_path / "nope.csv")])
    assert result.exit_code == 2
    assert "nope.csv" in result.stderr


def test_data_info_on_movielens(ml100k_dir: Path) -> None:
    out = _ok(["data", "info", "--json", str(ml100k_dir)])
    summary = json.loads(out)
    assert summary["interactions"] == 100_000
    assert summary["users"] == 943 and summary["items"] == 1682


def test_quickstart_on_movielens(ml100k_dir: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("RECLOOP_DATA", str(ml100k_dir.parent))
    out = _ok(["quickstart", "--out", str(tmp_path), "-m", "Popular"])
    assert "Leaderboard" in out and "Popular" in out
    assert (tmp_path / "report.html").is_file()
    payload = json.loads((tmp_path / "records.json").read_text())
    (record,) = payload["records"]
    assert record["protocol"] == "ratio" and record["model"] == "Popular"
    assert 0.05 < record["metrics"]["ndcg@10"] < 0.2


def test_quickstart_without_data_is_an_error_on_ci(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("RECLOOP_DATA", str(tmp_path / "none"))
    monkeypatch.setenv("RECLOOP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RECLOOP_MOVIELENS_URL", "http://127.0.0.1:9/")  # nothing listens here
    result = runner.invoke(app, ["quickstart", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "CI=true" in result.stderr


def test_quickstart_falls_back_to_synthetic_with_a_notice(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CI", "false")
    monkeypatch.setenv("RECLOOP_DATA", str(tmp_path / "none"))
    monkeypatch.setenv("RECLOOP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RECLOOP_MOVIELENS_URL", "http://127.0.0.1:9/")
    out = _ok(["quickstart", "--out", str(tmp_path / "out"), "-m", "Popular"])
    assert "notice" in out and "synthetic" in out
    payload = json.loads((tmp_path / "out" / "records.json").read_text())
    assert payload["records"][0]["dataset"].startswith("synthetic-")


def test_train_evaluate_round_trip(ml100k_dir: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("RECLOOP_DATA", str(ml100k_dir.parent))
    config = tmp_path / "run.toml"
    config.write_text(
        '[data]\ndataset = "ml-100k"\nprotocol = "loo"\n'
        '[model]\nname = "Popular"\n[model.config]\ncount = "interactions"\n'
        f'[run]\nseeds = [0]\nout = "{tmp_path / "run"}"\n'
    )
    _ok(["train", "-c", str(config)])
    assert (tmp_path / "run" / "seed-0" / "model" / "weights.safetensors").is_file()
    _ok(["evaluate", "-c", str(config)])
    assert (tmp_path / "run" / "report.html").is_file()
    payload = json.loads((tmp_path / "run" / "records.json").read_text())
    (record,) = payload["records"]
    assert record["protocol"] == "loo" and record["config"] == {"count": "interactions"}


def test_bad_run_config_names_the_field(tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text('[model]\nname = "Popular"\n[model.config]\ncount = "sometimes"\n')
    result = runner.invoke(app, ["train", "-c", str(config)])
    assert result.exit_code == 2
    assert "count" in result.stderr
    config.write_text('[data]\nprotocol = "shuffle"\n[model]\nname = "Popular"\n')
    result = runner.invoke(app, ["train", "-c", str(config)])
    assert result.exit_code == 2 and "run.toml" in result.stderr and "protocol" in result.stderr
    config.write_text("[model\n")
    result = runner.invoke(app, ["train", "-c", str(config)])
    assert result.exit_code == 2 and "invalid TOML" in result.stderr


def test_tune_writes_best_config_and_trials(ml100k_dir: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("RECLOOP_DATA", str(ml100k_dir.parent))
    space = tmp_path / "space.toml"
    space.write_text(
        'model = "Popular"\n[params.count]\ntype = "categorical"\n'
        'choices = ["users", "interactions"]\n'
    )
    target = tmp_path / "best.toml"
    _ok(["tune", "-s", str(space), "--trials", "3", "--out", str(target)])
    from recloop.runconfig import load_run_config

    best = load_run_config(target)
    assert best.model.name == "Popular" and best.tuning is not None
    assert best.tuning.trials == 3 and best.tuning.metric == "ndcg@10"
    trials = json.loads(target.with_suffix(".trials.json").read_text())
    assert len(trials["trials"]) == 3 and trials["split"] == "validation"


def test_data_info_with_a_column_mapping(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("who,what,when\na,x,2020-01-01\nb,y,2020-01-02T10:00:00Z\n")
    args = ["data", "info", "--json", str(path), "--user-col", "who", "--item-col", "what"]
    summary = json.loads(_ok([*args, "--time-col", "when"]))
    assert summary["interactions"] == 2 and summary["first timestamp"] == 1577836800
    result = runner.invoke(app, ["data", "info", str(path), "--user-col", "nobody"])
    assert result.exit_code == 2 and "'nobody'" in result.stderr and "log.csv:1" in result.stderr


def _few_models(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Make `--all` mean Popular and a tiny SASRec, so the test runs in seconds."""
    from recloop.models import registry
    from recloop.models.popular import Popular
    from recloop.models.sasrec import SASRec

    monkeypatch.setattr(registry, "MODELS", {"Popular": Popular, "SASRec": SASRec})


TINY_SASREC = '[model]\nname = "SASRec"\n[model.config]\nmax_epochs = 1\nhidden = 8\nmax_len = 10\n'


def test_train_and_evaluate_all(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _few_models(monkeypatch)
    monkeypatch.chdir(tmp_path)
    configs = tmp_path / "configs" / "synthetic" / "loo"
    configs.mkdir(parents=True)
    (configs / "SASRec.toml").write_text(
        '[data]\ndataset = "synthetic"\nprotocol = "loo"\n'
        + TINY_SASREC
        + '[run]\nseeds = [0]\nout = "runs/synthetic/loo/SASRec"\n'
    )
    out = _ok(["train", "--all", "--dataset", "synthetic", "--protocol", "loo"])
    assert "Popular: no tuned config" in out  # defaults, said out loud
    assert (tmp_path / "runs/synthetic/loo/SASRec/seed-0/model/manifest.json").is_file()
    assert (tmp_path / "runs/synthetic/loo/Popular/seed-2/model/manifest.json").is_file()
    _ok(["evaluate", "--all", "--dataset", "synthetic", "--protocol", "loo"])
    payload = json.loads((tmp_path / "runs/synthetic/loo/records.json").read_text())
    models = {(r["model"], r["seed"]) for r in payload["records"]}
    assert models == {("SASRec", 0), ("Popular", 0), ("Popular", 1), ("Popular", 2)}
    assert (tmp_path / "runs/synthetic/loo/report.html").is_file()


def test_train_needs_config_or_all() -> None:
    for args in (["train"], ["train", "--all", "-c", "x.toml"], ["evaluate"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "--all" in result.stderr


def test_quickstart_all_runs_every_registered_model(  # type: ignore[no-untyped-def]
    ml100k_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    _few_models(monkeypatch)
    monkeypatch.setenv("RECLOOP_DATA", str(ml100k_dir.parent))
    monkeypatch.chdir(tmp_path)
    configs = tmp_path / "configs" / "ml-100k" / "ratio"
    configs.mkdir(parents=True)
    (configs / "SASRec.toml").write_text(TINY_SASREC)
    _ok(["quickstart", "--all", "--out", str(tmp_path / "out")])
    payload = json.loads((tmp_path / "out" / "records.json").read_text())
    assert {r["model"] for r in payload["records"]} == {"Popular", "SASRec"}


def test_every_command_summary_is_one_line() -> None:
    """The command lists show each command's first docstring paragraph; a hard line break in
    it shows up as a broken line there."""
    import typer

    def walk(command: Any, path: str) -> list[tuple[str, str]]:
        found = [(path, command.help or "")]
        for name, sub in getattr(command, "commands", {}).items():
            found += walk(sub, f"{path} {name}")
        return found

    commands = walk(typer.main.get_command(app), "recloop")
    assert len(commands) > 30  # every sub-application is registered
    broken = [path for path, text in commands if "\n" in text.strip().split("\n\n")[0]]
    assert broken == []


def test_no_help_text_is_swallowed_as_markup() -> None:
    """Rich reads ``[word]`` in help text as markup and drops it; brackets must be escaped."""
    import re

    import typer

    def texts(command: Any, path: str) -> list[tuple[str, str]]:
        found = [(path, command.help or "")]
        found += [(f"{path} {p.name}", getattr(p, "help", None) or "") for p in command.params]
        for name, sub in getattr(command, "commands", {}).items():
            found += texts(sub, f"{path} {name}")
        return found

    unescaped = re.compile(r"(?<!\\)\[[a-zA-Z/][^\]]*\]")
    helps = texts(typer.main.get_command(app), "recloop")
    assert [(path, text) for path, text in helps if unescaped.search(text)] == []
