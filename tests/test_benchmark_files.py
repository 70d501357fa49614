"""Records of a user's own data (``files:<name>``) and NaN-free results JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from recloop.benchmark import json_text, make_record, write_results


def _record(dataset: str, ndcg: float = 0.1):  # type: ignore[no-untyped-def]
    return make_record(
        dataset=dataset, protocol="ratio", seed=0, model="EASE", metrics={"ndcg@10": ndcg}
    )


def test_records_of_a_users_files_are_named_files_colon_name() -> None:
    assert _record("files:events").dataset == "files:events"
    for bad in ("files:", "files:two words", "events"):
        with pytest.raises(ValidationError, match="files:<name>"):
            _record(bad)


def test_published_results_hold_benchmark_datasets_only(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="benchmark results hold"):
        write_results("mine", [_record("files:events")], title="t", command="c",
                      results_dir=tmp_path)  # fmt: skip
    assert not (tmp_path / "mine.json").exists()


def test_json_text_writes_nan_and_infinity_as_null(tmp_path: Path) -> None:
    text = json_text({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -float("inf")}})
    assert json.loads(text) == {"a": None, "b": [1.0, None], "c": {"d": None}}
    path = write_results("nan", [_record("ml-100k", float("nan"))], title="t", command="c",
                         results_dir=tmp_path)  # fmt: skip
    assert "NaN" not in path.read_text()
    assert json.loads(path.read_text())["records"][0]["metrics"] == {"ndcg@10": None}


def test_a_null_metric_reads_back_as_nan(tmp_path: Path) -> None:
    import math

    from recloop.benchmark import read_results

    path = write_results("nan", [_record("ml-100k", float("nan"))], title="t", command="c",
                         results_dir=tmp_path)  # fmt: skip
    (record,) = read_results(path).records
    assert math.isnan(record.metrics["ndcg@10"])
