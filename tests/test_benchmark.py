"""The benchmark record format and the generated benchmarks page."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from recloop.benchmark import make_record, read_results, write_results
from recloop.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_record_has_every_field(tmp_path: Path) -> None:
    rec = make_record(
        dataset="ml-100k",
        protocol="ratio",
        seed=0,
        model="Popular",
        metrics={"ndcg@10": 0.1},
        config={"count": "users"},
        train_seconds=0.01,
    )
    path = write_results("demo", [rec], title="Demo", command="python x.py", results_dir=tmp_path)
    payload = json.loads(path.read_text())
    (record,) = payload["records"]
    for key in (
        "dataset", "protocol", "seed", "model", "config", "metrics", "valid_metrics",
        "tuning_trials", "train_seconds", "peak_rss_mb", "machine", "recloop_version",
        "git_commit",
    ):  # fmt: skip
        assert key in record
    assert set(record["machine"]) == {"cpu", "cores", "gpu"}
    assert record["peak_rss_mb"] > 0
    assert read_results(path).records[0].metrics == {"ndcg@10": 0.1}


@pytest.mark.parametrize(
    ("field", "value"), [("dataset", "movielens"), ("protocol", "random"), ("dataset", "ml-10m")]
)
def test_names_are_fixed(field: str, value: str) -> None:
    kwargs = {"dataset": "ml-100k", "protocol": "loo", field: value}
    with pytest.raises(ValidationError):
        make_record(seed=0, model="EASE", metrics={}, **kwargs)  # type: ignore[arg-type]


def test_bad_results_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "x.json"
    bad.write_text('{"records": 3}')
    with pytest.raises(ConfigError, match=r"x\.json: not a valid benchmark results file"):
        read_results(bad)
    with pytest.raises(ConfigError, match="results name"):
        write_results("Bad Name", [], title="t", command="c", results_dir=tmp_path)


def test_benchmarks_page_is_generated_from_results() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "make_docs.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr


def test_the_commit_can_be_named_for_a_tree_run_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    from recloop.benchmark import git_commit

    monkeypatch.setenv("RECLOOP_GIT_COMMIT", "0123abcd\n")
    assert git_commit() == "0123abcd"
    monkeypatch.delenv("RECLOOP_GIT_COMMIT")
    assert git_commit() != "0123abcd"
