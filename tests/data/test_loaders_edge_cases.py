"""Input that used to escape as a raw Polars error or load wrongly: a JSON-lines byte-order mark,
repeated RecBole fields, nested lists as text, huge unsigned timestamps, NaN ids and RecBole
``float_seq`` fields."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from recloop.data.loaders import (
    CatalogColumns,
    load_dataset,
    load_recbole,
    read_catalog,
    read_interactions,
    read_users,
)
from recloop.errors import DataError

BOM = b"\xef\xbb\xbf"


def write(path: Path, data: str | bytes) -> Path:
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def jsonl(path: Path, *rows: dict[str, object]) -> Path:
    return write(path, "".join(json.dumps(row) + "\n" for row in rows))


def fails(fn: object, *args: object, **kwargs: object) -> DataError:
    assert callable(fn)
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    return info.value


# -------------------------------------------------------------------- JSON lines with a BOM
def test_jsonl_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    path = write(
        tmp_path / "e.jsonl", BOM + b'{"user": "a", "item": "x"}\n{"user": "b", "item": "y"}\n'
    )
    events = read_interactions(path)
    assert events.users.ids() == ["a", "b"] and events.items.ids() == ["x", "y"]
    catalog = read_catalog(write(tmp_path / "c.jsonl", BOM + b'{"item": "x", "title": "X"}\n'))
    assert catalog.title == ["X"]


def test_jsonl_with_a_byte_order_mark_still_locates_bad_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path / "e.jsonl", BOM + b'{"user": "a", "item": "x"}\n{"user": "", "item": "y"}\n'
    )
    err = fails(read_interactions, path)
    assert (err.line, err.field) == (2, "user") and "empty user id" in str(err)
    path = write(tmp_path / "blank.jsonl", BOM + b'\n{"user": "a", "item": "x"}\n{"user": 1,\n')
    err = fails(read_interactions, path)
    assert err.line == 3 and "invalid JSON" in str(err)
    path = write(tmp_path / "bad.jsonl", BOM + b'{"user": "a", "item": "x"\n')
    assert fails(read_interactions, path).line == 1


# ----------------------------------------------------------------------------- RecBole header
def test_recbole_header_naming_a_field_twice(tmp_path: Path) -> None:
    folder = tmp_path / "rb"
    folder.mkdir()
    inter = write(folder / "rb.inter", "user_id:token\titem_id:token\tuser_id:float\n1\t10\t4\n")
    err = fails(load_recbole, folder)
    assert (err.path, err.line, err.field) == (str(inter), 1, "user_id")
    assert "more than once" in str(err)
    write(inter, "user_id:token\titem_id:token\tuser_id:token\n1\t10\t4\n")  # the very same name
    assert fails(load_recbole, folder).field == "user_id"


def test_recbole_header_naming_a_field_twice_on_the_command_line(tmp_path: Path) -> None:
    folder = tmp_path / "rb"
    folder.mkdir()
    write(folder / "rb.inter", "user_id:token\titem_id:token\tuser_id:float\n1\t10\t4\n")
    cli = Path(sys.executable).with_name("recloop")
    done = subprocess.run([cli, "data", "info", str(folder)], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "rb.inter:1: field 'user_id': the header names field 'user_id' more than once; "
            "RecBole field names must be unique"
        )
    )


# ----------------------------------------------------------------------------- nested lists as text
def test_nested_lists_are_flattened_into_text_and_title(tmp_path: Path) -> None:
    path = jsonl(
        tmp_path / "items.jsonl",
        {"item": "x", "title": "X", "tags": [["a", "b"], ["c"]], "deep": [[[1]], [[2, 3]]]},
        {"item": "y", "title": "Y", "tags": None, "deep": [[], [None]]},
        {"item": "z", "title": "Z", "tags": [[], ["d"], None], "deep": None},
    )
    catalog = read_catalog(path, CatalogColumns(item="item", title="title", text=("tags", "deep")))
    assert catalog.text == ["X. a, b, c. 1, 2, 3", "Y", "Z. d"]
    assert catalog.attributes == {}
    titled = read_catalog(path, CatalogColumns(item="item", title="tags"))
    assert titled.title == ["a, b, c", "", "d"]
    flat = jsonl(tmp_path / "flat.jsonl", {"item": "x", "title": ["Red", "Blue"]})
    assert read_catalog(flat).title == ["Red, Blue"]


def test_values_that_cannot_be_text_name_the_field_and_row(tmp_path: Path) -> None:
    path = tmp_path / "items.parquet"
    pl.DataFrame(
        {"item": ["x", "y"], "title": ["X", "Y"], "raw": [[b"ok"], [b"\xff"]]}
    ).write_parquet(path)
    err = fails(read_catalog, path, CatalogColumns(item="item", title="title", text=("raw",)))
    assert err.field == "raw" and "(row 2)" in str(err) and "cannot be turned into text" in str(err)


# -------------------------------------------------------------------- unsigned 64-bit numbers
def test_uint64_timestamp_beyond_int64_is_out_of_range(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    stamps = pl.Series([1, 2, 2**64 - 1], dtype=pl.UInt64)
    pl.DataFrame(
        {"user": ["a", "b", "c"], "item": ["x", "y", "z"], "timestamp": stamps}
    ).write_parquet(path)
    err = fails(read_interactions, path)
    assert err.field == "timestamp" and err.line is None
    assert "'18446744073709551615' is out of range for a timestamp" in str(
        err
    ) and "(row 3)" in str(err)
    small = tmp_path / "ok.parquet"
    ok = pl.Series([1, 2**63 - 1], dtype=pl.UInt64)
    pl.DataFrame({"user": ["a", "b"], "item": ["x", "y"], "timestamp": ok}).write_parquet(small)
    assert read_interactions(small).timestamp.tolist() == [1, 2**63 - 1]


def test_uint64_integer_attribute_beyond_int64(tmp_path: Path) -> None:
    path = tmp_path / "u.parquet"
    ages = pl.Series([30, 2**64 - 1], dtype=pl.UInt64)
    pl.DataFrame({"user": ["a", "b"], "age": ages}).write_parquet(path)
    err = fails(read_users, path)
    assert err.field == "age" and "(row 2)" in str(err) and "too large" in str(err)


# ----------------------------------------------------------------------------- float ids
def test_nan_id_is_an_empty_id(tmp_path: Path) -> None:
    path = tmp_path / "b.parquet"
    pl.DataFrame({"user": [1.0, float("nan")], "item": ["x", "z"]}).write_parquet(path)
    err = fails(read_interactions, path)
    assert err.field == "user" and "empty user id" in str(err) and "(row 2)" in str(err)


def test_float_ids_keep_their_spelling_across_files(tmp_path: Path) -> None:
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pl.DataFrame({"user": [1.0, 2.0], "item": ["x", "y"]}).write_parquet(a)
    pl.DataFrame({"user": [1.0, 2.5, -0.0], "item": ["x", "z", "x"]}).write_parquet(b)
    first = read_interactions(a)
    second = read_interactions(b, users=first.users, items=first.items)
    assert first.users.ids() == ["1", "2", "2.5", "0"]
    assert second.user.tolist() == [0, 2, 3]  # user 1.0 is the same user in both files


# ----------------------------------------------------------------------------- RecBole float_seq
def test_recbole_float_seq_fields_hold_numbers(tmp_path: Path) -> None:
    folder = tmp_path / "rb"
    folder.mkdir()
    write(folder / "rb.inter", "user_id:token\titem_id:token\n1\t10\n2\t11\n")
    write(
        folder / "rb.item",
        "item_id:token\tprice:float\temb:float_seq\ttags:token_seq\n"
        "10\t9.5\t0.1 0.2\ta b\n11\t\t\t\n",
    )
    write(folder / "rb.user", "user_id:token\tw:float_seq\n1\t1 -2e3\n2\t3\n")
    data = load_dataset(folder)
    assert data.catalog is not None and data.users is not None
    assert data.catalog.attributes["emb"] == [[0.1, 0.2], []]
    assert data.catalog.attributes["tags"] == [["a", "b"], []]
    assert data.catalog.attributes["price"] == [9.5, None]
    assert data.users.attributes["w"] == [[1.0, -2000.0], [3.0]]


def test_recbole_float_seq_in_a_movielens_item_file(tmp_path: Path) -> None:
    folder = tmp_path / "ml"
    folder.mkdir()
    write(folder / "ml.inter", "user_id:token\titem_id:token\n1\t10\n")
    write(
        folder / "ml.item",
        "item_id:token\tmovie_title:token_seq\tclass:token_seq\temb:float_seq\n"
        "10\tHeat\tAction\t1 2.5\n",
    )
    data = load_dataset(folder)
    assert data.catalog is not None and data.catalog.attributes["emb"] == [[1.0, 2.5]]


def test_recbole_float_seq_that_is_not_numbers(tmp_path: Path) -> None:
    folder = tmp_path / "rb"
    folder.mkdir()
    write(folder / "rb.inter", "user_id:token\titem_id:token\n1\t10\n")
    write(folder / "rb.item", "item_id:token\temb:float_seq\n10\t0.1 x\n")
    err = fails(load_dataset, folder)
    assert (err.line, err.field) == (2, "emb") and "not a list of numbers" in str(err)
