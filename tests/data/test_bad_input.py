"""Bad input gives one-line DataErrors naming the file, the line and the field."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recloop.data.loaders import (
    ColumnMap,
    load_dataset,
    load_movielens_raw,
    load_recbole,
    read_catalog,
    read_interactions,
    read_users,
)
from recloop.errors import DataError, RecloopError

FULL = ColumnMap(timestamp="timestamp", value="rating", event="event")


def write(path: Path, data: str | bytes) -> Path:
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def fails(
    fn: object, *args: object, line: int | None = None, field: str | None = None, **kwargs: object
) -> DataError:
    """Call ``fn`` expecting a DataError; check it is one line naming file, line and field."""
    assert callable(fn)
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    err = info.value
    text = str(err)
    assert "\n" not in text
    path = Path(str(args[0]))
    assert err.path is not None and Path(err.path).name == path.name and path.name in text
    if line is not None:
        assert err.line == line and f"{path.name}:{line}:" in text, text
    if field is not None:
        assert err.field == field and f"field '{field}'" in text, text
    return err


def csv(tmp_path: Path, body: str, name: str = "events.csv") -> Path:
    return write(tmp_path / name, "user,item,timestamp,rating,event\n" + body)


GOOD = "u1,i1,10,4,rating\n"


def test_missing_column_lists_found(tmp_path: Path) -> None:
    path = write(tmp_path / "e.csv", "user,item\nu,i\n")
    err = fails(read_interactions, path, ColumnMap(timestamp="ts"), line=1, field="ts")
    assert "missing column 'ts'" in str(err) and "'user', 'item'" in str(err)
    err = fails(read_interactions, write(tmp_path / "x.csv", "who,what\na,b\n"), field="user")
    assert "'who', 'what'" in str(err)


def test_wrong_separator_shows_the_one_column(tmp_path: Path) -> None:
    err = fails(read_interactions, write(tmp_path / "t.csv", "user\titem\nu\ti\n"), line=1)
    assert "'user\\titem'" in str(err)


def test_bad_timestamp(tmp_path: Path) -> None:
    path = csv(tmp_path, GOOD + "u2,i2,yesterday,3,rating\n")
    err = fails(read_interactions, path, FULL, line=3, field="timestamp")
    assert "'yesterday' is neither a number (seconds) nor an ISO-8601 date" in str(err)
    fails(read_interactions, csv(tmp_path, GOOD + "u2,i2,2020-13-45,3,rating\n"), FULL, line=3)
    fails(read_interactions, csv(tmp_path, GOOD + "u2,i2,inf,3,rating\n"), FULL, line=3)
    err = fails(read_interactions, csv(tmp_path, GOOD + "u2,i2,1e41,3,rating\n"), FULL, line=3)
    assert "out of range" in str(err)


def test_empty_file(tmp_path: Path) -> None:
    err = fails(read_interactions, write(tmp_path / "empty.csv", b""), line=1)
    assert "empty (0 bytes)" in str(err)
    for name in ("empty.parquet", "empty.jsonl"):
        assert "empty" in str(fails(read_interactions, write(tmp_path / name, b"")))


def test_header_without_rows(tmp_path: Path) -> None:
    err = fails(read_interactions, csv(tmp_path, ""), FULL, line=2)
    assert "no data rows" in str(err)
    fails(read_interactions, csv(tmp_path, "\n\n"), FULL, line=2)
    fails(read_catalog, write(tmp_path / "items.tsv", "item\ttitle\n"), line=2)


def test_duplicate_catalogue_ids(tmp_path: Path) -> None:
    path = write(tmp_path / "items.csv", "item,title\na,A\nb,B\na,Again\n")
    err = fails(read_catalog, path, line=4, field="item")
    assert "duplicate item id 'a' (first on line 2)" in str(err)
    users = write(tmp_path / "users.csv", "user,age\n1,3\n01,4\n 1 ,5\n")
    fails(read_users, users, line=4, field="user")
    pq = tmp_path / "items.parquet"
    pl.DataFrame({"item": [1, 2, 1], "title": ["a", "b", "c"]}).write_parquet(pq)
    assert "(first on row 1) (row 3)" in str(fails(read_catalog, pq, field="item"))


def test_rating_out_of_range(tmp_path: Path) -> None:
    path = csv(tmp_path, GOOD + GOOD + "u3,i3,12,6,rating\n")
    err = fails(read_interactions, path, FULL, rating_range=(1, 5), line=4, field="rating")
    assert "6" in str(err) and "1..5" in str(err)
    fails(read_interactions, csv(tmp_path, "u,i,1,four,rating\n"), FULL, line=2, field="rating")
    fails(read_interactions, csv(tmp_path, "u,i,1,nan,rating\n"), FULL, line=2, field="rating")
    fails(read_interactions, csv(tmp_path, "u,i,1,1e41,rating\n"), FULL, line=2, field="rating")


def test_empty_user_id(tmp_path: Path) -> None:
    err = fails(
        read_interactions, csv(tmp_path, GOOD + ",i2,11,3,rating\n"), FULL, line=3, field="user"
    )
    assert "empty user id" in str(err)
    fails(
        read_interactions, csv(tmp_path, GOOD + '"  ",i2,11,3,click\n'), FULL, line=3, field="user"
    )
    fails(read_interactions, csv(tmp_path, GOOD + "u2,,11,3,click\n"), FULL, line=3, field="item")


def test_row_with_too_many_fields(tmp_path: Path) -> None:
    path = csv(tmp_path, GOOD + GOOD + "u,i,1,2,click,extra\n" + GOOD)
    err = fails(read_interactions, path, FULL, line=4)
    assert "6 fields" in str(err) and "header has 5" in str(err)
    raw = tmp_path / "ml-100k"
    raw.mkdir()
    write(raw / "u.data", "1\t2\t3\t4\n1\t2\t3\t4\t5\n")
    with pytest.raises(DataError, match=r"u\.data:2: has 5 fields"):
        load_movielens_raw(raw)


def test_malformed_quoting(tmp_path: Path) -> None:
    fails(read_interactions, csv(tmp_path, GOOD + 'u,"i,1,2,click\n'), FULL, line=3)
    err = fails(read_interactions, csv(tmp_path, GOOD + 'u,i"x,1,2,click\n'), FULL, line=3)
    assert "quote" in str(err)


def test_binary_garbage(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    err = fails(read_interactions, write(tmp_path / "noise.csv", rng.bytes(4096)))
    assert "not a text file" in str(err) or "not UTF-8" in str(err)
    png = write(tmp_path / "image.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + rng.bytes(64))
    assert "PNG image" in str(fails(read_interactions, png))
    assert "PNG image" in str(
        fails(read_interactions, write(tmp_path / "i.jsonl", png.read_bytes()))
    )
    err = fails(read_interactions, write(tmp_path / "p.parquet", png.read_bytes()))
    assert "not a Parquet file" in str(err)
    utf16 = write(tmp_path / "wide.csv", "user,item\nu,i\n".encode("utf-16"))
    assert "UTF-16" in str(fails(read_interactions, utf16))
    assert "is a directory" in str(fails(read_interactions, tmp_path))


def test_invalid_utf8_far_into_the_file(tmp_path: Path) -> None:
    body = "".join(f"u{i},i{i},{i},3,click\n" for i in range(3000))
    path = csv(tmp_path, body + "caf\xe9,x,1,3,click\n")
    path.write_bytes(path.read_bytes().replace(b"caf\xc3\xa9", b"caf\xe9"))
    err = fails(read_interactions, path, FULL, line=3002)
    assert "not UTF-8" in str(err) and "0xe9" in str(err)


def test_truncated_parquet(tmp_path: Path) -> None:
    whole = tmp_path / "whole.parquet"
    n = 5000
    pl.DataFrame(
        {"user": np.arange(n) % 97, "item": np.arange(n) % 31, "rating": np.ones(n)}
    ).write_parquet(whole)
    data = whole.read_bytes()
    for cut in (len(data) // 2, len(data) - 5, 100):
        err = fails(read_interactions, write(tmp_path / "cut.parquet", data[:cut]))
        assert "truncated" in str(err)
    corrupt = data[:8] + bytes(len(data) - 16) + data[-8:]  # right markers, zeroed body
    err = fails(read_interactions, write(tmp_path / "zeroed.parquet", corrupt))
    assert "truncated or corrupt" in str(err)


def test_non_existent_path(tmp_path: Path) -> None:
    for fn in (read_interactions, read_catalog, read_users, load_dataset, load_recbole):
        err = fails(fn, tmp_path / "nope.csv")
        assert "no such file or directory" in str(err)


def test_unknown_event_kind(tmp_path: Path) -> None:
    path = csv(tmp_path, GOOD + "u,i,2,3,CLICK\nu,i,3,3,bought\n")
    err = fails(read_interactions, path, FULL, line=4, field="event")
    assert "unknown event kind 'bought'" in str(err) and "purchase" in str(err)
    fails(read_interactions, csv(tmp_path, GOOD + "u,i,2,3,9\n"), FULL, line=3, field="event")


def test_lines_count_blank_lines_and_quoted_newlines(tmp_path: Path) -> None:
    body = 'u1,"multi\nline item",1,3,click\n\n' + "u2,i2,oops,3,click\n"
    fails(read_interactions, csv(tmp_path, body), FULL, line=5, field="timestamp")


def test_jsonl_errors(tmp_path: Path) -> None:
    good = '{"user": "a", "item": "b"}\n'
    err = fails(read_interactions, write(tmp_path / "e.jsonl", good + "\n" + "{user: 1}\n"), line=3)
    assert "invalid JSON" in str(err)
    fails(read_interactions, write(tmp_path / "l.jsonl", good + "[1, 2]\n"), line=2)
    path = write(tmp_path / "x.jsonl", good + "\n" + '{"user": "", "item": "c"}\n')
    fails(read_interactions, path, line=3, field="user")


def test_parquet_rows_are_named(tmp_path: Path) -> None:
    path = tmp_path / "e.parquet"
    pl.DataFrame(
        {"user": ["a", "b"], "item": ["x", "y"], "ts": ["2020-01-01", "soon"]}
    ).write_parquet(path)
    err = fails(read_interactions, path, ColumnMap(timestamp="ts"), field="ts")
    assert "(row 2)" in str(err)


def test_unsupported_suffix_and_unknown_folder(tmp_path: Path) -> None:
    err = fails(read_interactions, write(tmp_path / "e.xlsx", "user,item\n"))
    assert "unsupported file type '.xlsx'" in str(err)
    folder = tmp_path / "stuff"
    folder.mkdir()
    write(folder / "notes.txt", "hi")
    err = fails(load_dataset, folder)
    assert "u.data" in str(err) and "notes.txt" in str(err)


def test_raw_layout_with_too_few_fields(tmp_path: Path) -> None:
    root = tmp_path / "ml-100k"
    root.mkdir()
    write(root / "u.data", "1\t2\t3\n")
    with pytest.raises(DataError, match=r"u\.data:1: expected 4 tab-separated fields"):
        load_movielens_raw(root)


def test_errors_are_recloop_errors(tmp_path: Path) -> None:
    with pytest.raises(RecloopError):
        load_dataset(tmp_path / "missing")
