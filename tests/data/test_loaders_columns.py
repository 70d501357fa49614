"""Naming some columns leaves the others inferred from the header, in the loader and in
``recloop data info``: a rating column is never silently dropped for clicks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recloop.cli import app
from recloop.data import EventKind
from recloop.data.loaders import ColumnMap, read_interactions

HEADER = "user_id,item_id,rating,timestamp\n"
ROWS = "u1,a,4,1000\nu2,b,2,1001\nu1,b,5,1002\n"


@pytest.fixture
def small(tmp_path: Path) -> Path:
    path = tmp_path / "small.csv"
    path.write_text(HEADER + ROWS)
    return path


def test_naming_user_and_item_keeps_rating_and_time(small: Path) -> None:
    inter = read_interactions(small, ColumnMap(user="user_id", item="item_id"))
    assert inter.value.tolist() == [4.0, 2.0, 5.0]
    assert (inter.event == EventKind.RATING).all()
    assert inter.timestamp.tolist() == [1000, 1001, 1002]


def test_naming_only_the_time_column_infers_user_and_item(small: Path) -> None:
    inter = read_interactions(small, ColumnMap(timestamp="timestamp"))
    assert inter.users.ids() == ["u1", "u2"] and inter.items.ids() == ["a", "b"]
    assert inter.value.tolist() == [4.0, 2.0, 5.0]


def test_a_field_given_as_none_is_left_out(small: Path) -> None:
    clicks = read_interactions(small, ColumnMap(value=None))
    assert (clicks.event == EventKind.CLICK).all() and clicks.value.tolist() == [1.0] * 3
    numbered = read_interactions(small, ColumnMap(timestamp=None))
    assert numbered.timestamp.tolist() == [0, 1, 2]


def test_resolve_keeps_given_fields_and_infers_the_rest() -> None:
    header = ["who", "movieId", "rating", "ts"]
    cmap = ColumnMap(user="who").resolve(header)
    assert cmap == ColumnMap(user="who", item="movieId", timestamp="ts", value="rating")


def test_data_info_infers_the_columns_not_named(small: Path) -> None:
    runner = CliRunner()
    args = ["data", "info", "--json", str(small)]
    named = runner.invoke(app, [*args, "--user-col", "user_id", "--item-col", "item_id"])
    assert named.exit_code == 0, named.output
    summary = json.loads(named.stdout)
    assert summary["events"] == {"rating": 3}
    assert summary["first timestamp"] == 1000 and summary["value range"] == [2.0, 5.0]
    timed = runner.invoke(app, [*args, "--time-col", "timestamp"])
    assert timed.exit_code == 0, timed.output
    assert json.loads(timed.stdout)["users"] == 2
