"""Loaders: RecBole, GroupLens MovieLens layouts and generic files, on real and tiny data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recloop.data import Dataset, EventKind, IdMap
from recloop.data.loaders import (
    CatalogColumns,
    ColumnMap,
    UserColumns,
    load_dataset,
    load_movielens_raw,
    load_recbole,
    read_catalog,
    read_interactions,
    read_users,
)


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


# --------------------------------------------------------------------------- RecBole, real data
@pytest.fixture(scope="module")
def recbole_100k(ml100k_dir: Path) -> Dataset:
    return load_recbole(ml100k_dir, rating_range=(1, 5))


def test_recbole_counts_and_dtypes(recbole_100k: Dataset) -> None:
    inter = recbole_100k.interactions
    assert recbole_100k.name == "ml-100k"
    assert (len(inter), inter.n_users, inter.n_items) == (100_000, 943, 1682)
    assert inter.user.dtype == np.int32 and inter.item.dtype == np.int32
    assert inter.timestamp.dtype == np.int64 and inter.value.dtype == np.float32
    assert inter.event.dtype == np.int8 and (inter.event == EventKind.RATING).all()
    assert inter.value.min() == 1.0 and inter.value.max() == 5.0
    assert set(np.unique(inter.value).tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    # first row of ml-100k.inter: 196 242 3 881250949; ids numbered by first appearance
    assert inter.users.id_of(0) == "196" and inter.items.id_of(0) == "242"
    assert inter.timestamp[0] == 881250949 and inter.value[0] == 3.0
    ties = 0
    indptr, _ = inter.histories()
    order = np.lexsort((inter.timestamp, inter.user))
    ts = inter.timestamp[order]
    for u in range(inter.n_users):
        seq = ts[indptr[u] : indptr[u + 1]]
        ties += int(len(seq) > 1 and seq[-1] == seq[-2])
    assert ties == 415  # ARCHITECTURE.md: 415 of 943 users tie at their last timestamp


def test_recbole_catalog_and_users(recbole_100k: Dataset) -> None:
    catalog, users = recbole_100k.catalog, recbole_100k.users
    assert catalog is not None and users is not None
    assert catalog.items is recbole_100k.interactions.items
    assert users.users is recbole_100k.interactions.users
    toy = int(catalog.items.index(["1"])[0])
    assert catalog.title[toy] == "Toy Story"
    assert catalog.attribute("year")[toy] == 1995
    assert catalog.attribute("genres")[toy] == ["Animation", "Children's", "Comedy"]
    assert catalog.text[toy] == "Toy Story (1995). Genres: Animation, Children's, Comedy"
    assert catalog.title[int(catalog.items.index(["543"])[0])] == "Misérables, Les"
    assert catalog.attribute("year")[int(catalog.items.index(["267"])[0])] is None
    first = int(users.users.index(["1"])[0])
    assert users.attribute("age")[first] == 24
    assert [users.attribute(k)[first] for k in ("gender", "occupation", "zip_code")] == [
        "M",
        "technician",
        "85711",
    ]
    assert all(isinstance(a, int) for a in users.attribute("age"))


def test_load_dataset_detects_recbole(ml100k_dir: Path) -> None:
    ds = load_dataset(ml100k_dir)
    assert ds.name == "ml-100k" and ds.catalog is not None and len(ds.interactions) == 100_000
    inter = read_interactions(ml100k_dir / "ml-100k.inter")
    assert inter.n_users == 943 and inter.users.id_of(0) == "196"


# --------------------------------------------------------------------------- GroupLens layouts
def _flags(*on: int) -> str:
    return "|".join("1" if i in on else "0" for i in range(19))


def make_ml100k(root: Path) -> Path:
    """A tiny ml-100k folder in the GroupLens layout (u.item is Latin-1)."""
    root.mkdir(parents=True, exist_ok=True)
    write(root / "u.data", "3\t1\t4\t881250949\n1\t2\t5\t881250950\n3\t2\t1\t881250951\n")
    write(
        root / "u.item",
        f"1|Toy Story (1995)|01-Jan-1995||http://x/1|{_flags(3, 4, 5)}\n"
        f"2|Misérables, Les (1995)|01-Jan-1995||http://x/2|{_flags(8, 12)}\n"
        f"3|Some Film|01-Jan-1987||http://x/3|{_flags(0)}\n",
        encoding="latin-1",
    )
    write(root / "u.user", "1|24|M|technician|85711\n3|53|F|other|94043\n7|30|F|writer|T8H1N\n")
    return root


def test_movielens_100k_raw(tmp_path: Path) -> None:
    ds = load_movielens_raw(make_ml100k(tmp_path / "ml-100k"))
    assert ds.name == "ml-100k"
    inter, catalog, users = ds.interactions, ds.catalog, ds.users
    assert catalog is not None and users is not None
    assert inter.users.ids() == ["3", "1", "7"]  # file order, then the user file's extra id
    assert inter.items.ids() == ["1", "2", "3"]
    assert inter.value.tolist() == [4.0, 5.0, 1.0]
    assert catalog.title == ["Toy Story", "Misérables, Les", "Some Film"]
    assert catalog.attribute("year") == [1995, 1995, 1987]  # the last from the release date
    assert catalog.attribute("genres")[0] == ["Animation", "Children's", "Comedy"]
    assert catalog.attribute("genres")[2] == ["unknown"]
    assert catalog.text[1] == "Misérables, Les (1995). Genres: Drama, Musical"
    assert users.attribute("age") == [53, 24, 30]
    assert users.attribute("zip_code") == ["94043", "85711", "T8H1N"]
    assert load_dataset(tmp_path / "ml-100k").catalog is not None


def test_movielens_1m_raw(tmp_path: Path) -> None:
    root = tmp_path / "ml-1m"
    root.mkdir()
    write(root / "ratings.dat", "1::1193::5::978300760\n2::1::3::978300761\n1::1::4::978300762\n")
    write(
        root / "movies.dat",
        "1::Toy Story (1995)::Animation|Children's|Comedy\n"
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
        "260::Star Wars: Episode IV - A New Hope (1977)::Action|Sci-Fi\n"
        "1000::Cité des enfants perdus, La (1995)::Adventure\n",
        encoding="latin-1",
    )
    write(root / "users.dat", "1::F::1::10::48067\n2::M::56::16::70072\n")
    ds = load_dataset(root)
    assert ds.name == "ml-1m"
    catalog, users = ds.catalog, ds.users
    assert catalog is not None and users is not None
    assert ds.interactions.items.ids() == ["1193", "1", "260", "1000"]
    star_wars = catalog.items.index(["260"])[0]
    assert catalog.title[star_wars] == "Star Wars: Episode IV - A New Hope"
    assert catalog.attribute("genres")[star_wars] == ["Action", "Sci-Fi"]
    assert catalog.text[3] == "Cité des enfants perdus, La (1995). Genres: Adventure"
    assert users.attribute("age") == [1, 56]
    assert users.attribute("gender") == ["F", "M"]
    assert users.attribute("occupation") == ["10", "16"]


# --------------------------------------------------------------------------- generic files
ROWS = [
    ("alice", "i1", "2021-03-04", "4.5", "rating"),
    ("bob", "i2", "2021-03-04T10:00:00Z", "1", "click"),
    ("alice", "i3", "2021-03-04T12:00:00+02:00", "2", "dislike"),
    ("carol", "i1", "1614852000", "3", "2"),
]
EXPECTED_TS = [1614816000, 1614852000, 1614852000, 1614852000]


def _frame() -> pl.DataFrame:
    return pl.DataFrame(ROWS, schema=["uid", "iid", "when", "score", "kind"], orient="row")


MAPPING = ColumnMap(user="uid", item="iid", timestamp="when", value="score", event="kind")


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet", ".jsonl", ".ndjson"])
def test_generic_formats_agree(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"events{suffix}"
    frame = _frame()
    if suffix == ".csv":
        frame.write_csv(path)
    elif suffix == ".tsv":
        frame.write_csv(path, separator="\t")
    elif suffix == ".parquet":
        frame.write_parquet(path)
    else:
        frame.write_ndjson(path)
    inter = read_interactions(path, MAPPING)
    assert inter.users.ids() == ["alice", "bob", "carol"]
    assert inter.items.ids() == ["i1", "i2", "i3"]
    assert inter.user.tolist() == [0, 1, 0, 2] and inter.item.tolist() == [0, 1, 2, 0]
    assert inter.timestamp.tolist() == EXPECTED_TS
    assert inter.value.tolist() == [4.5, 1.0, 2.0, 3.0]
    assert inter.event.tolist() == [EventKind.RATING, EventKind.CLICK, EventKind.DISLIKE, 2]
    assert inter.positive().user.tolist() == [0, 1, 2]
    assert load_dataset(path, MAPPING).name == "events"


def test_typed_parquet_columns(tmp_path: Path) -> None:
    path = tmp_path / "typed.parquet"
    pl.DataFrame(
        {
            "user": [10, 20, 10],
            "item": [5.0, 6.0, 5.0],
            "ts": pl.Series(["2020-01-01", "2020-01-02", "2020-01-03"]).str.to_datetime(),
            "rating": pl.Series([1, 2, 3], dtype=pl.Int8),
            "event": [1, 5, 6],
        }
    ).write_parquet(path)
    inter = read_interactions(path, ColumnMap(timestamp="ts", value="rating", event="event"))
    assert inter.users.ids() == ["10", "20"] and inter.items.ids() == ["5", "6"]
    assert inter.timestamp.tolist() == [1577836800, 1577923200, 1578009600]
    assert inter.event.tolist() == [1, 5, 6] and inter.value.tolist() == [1.0, 2.0, 3.0]


def test_defaults_without_time_value_or_event(tmp_path: Path) -> None:
    path = write(tmp_path / "clicks.csv", "user,item\nu1,a\nu2,b\nu1,b\n")
    inter = read_interactions(path)
    assert inter.timestamp.tolist() == [0, 1, 2]
    assert inter.value.tolist() == [1.0, 1.0, 1.0]
    assert (inter.event == EventKind.CLICK).all()
    rated = read_interactions(
        write(tmp_path / "r.csv", "u,i,r\n1,2,5\n"), ColumnMap(user="u", item="i", value="r")
    )
    assert rated.event.tolist() == [EventKind.RATING]


def test_header_names_are_recognised(tmp_path: Path) -> None:
    path = write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n")
    inter = read_interactions(path)
    assert inter.users.ids() == ["1"] and inter.items.ids() == ["31"]
    assert inter.value.tolist() == [2.5] and inter.timestamp.tolist() == [1260759144]


def test_timestamp_forms(tmp_path: Path) -> None:
    values = [
        "0",
        "1.9",
        "1e3",
        "1970-01-02",
        "1970-01-01T00:01:00",
        "1970-01-01 00:02:00.5",
        "1970-01-01T01:00:00+01:00",
        "1970-01-01T00:00:07Z",
        "19700101T000008",  # compact ISO form: Python's fromisoformat
        " 42 ",
        "-5",
    ]
    body = "".join(f"u,i,{v}\n" for v in values)
    inter = read_interactions(
        write(tmp_path / "t.csv", "user,item,timestamp\n" + body),
        ColumnMap(timestamp="timestamp"),
    )
    assert inter.timestamp.tolist() == [0, 1, 1000, 86400, 60, 120, 0, 7, 8, 42, -5]


def test_ids_keep_their_spelling(tmp_path: Path) -> None:
    # "007" and "7" are different ids; huge integers take the hashing path
    body = "007,1\n7,99999999999999\n-3,1\n0,-99999999999\n+7,1\n-0,1\n"
    inter = read_interactions(write(tmp_path / "ids.csv", "user,item\n" + body))
    assert inter.users.ids() == ["007", "7", "-3", "0", "+7", "-0"]
    assert inter.items.ids() == ["1", "99999999999999", "-99999999999"]
    assert inter.item.tolist() == [0, 1, 0, 2, 0, 0]
    plain = read_interactions(write(tmp_path / "n.csv", "user,item\n10,3\n-4,3\n10,0\n"))
    assert plain.users.ids() == ["10", "-4"] and plain.user.tolist() == [0, 1, 0]


def test_bom_crlf_quotes_and_unicode(tmp_path: Path) -> None:
    text = (
        "\ufeffuser,item,rating\r\n"
        '"josé","Toy Story, The",4\r\n'
        '用户1,"say ""hi""",5\r\n'
        "\r\n"
        " josé ,plain,3\r\n"
    )
    inter = read_interactions(write(tmp_path / "u.csv", text), ColumnMap(value="rating"))
    assert inter.users.ids() == ["josé", "用户1"]
    assert inter.items.ids() == ["Toy Story, The", 'say "hi"', "plain"]
    assert inter.user.tolist() == [0, 1, 0] and inter.value.tolist() == [4.0, 5.0, 3.0]


def test_shared_id_maps_and_catalogue(tmp_path: Path) -> None:
    inter_path = write(tmp_path / "e.csv", "user,item\nu1,b\nu2,a\n")
    cat_path = write(
        tmp_path / "items.csv",
        "item,title,description,tags,year,price\n"
        'a,Alpha,"First, best",x|y,2001,1.5\n'
        "c,Gamma,,z,,2\n"
        "b,Beta,Second,,1999,\n",
    )
    ds = load_dataset(
        inter_path,
        catalog=cat_path,
        catalog_columns=CatalogColumns(
            text=("description", "tags"), lists={"tags": "|"}, ints=("year",), floats=("price",)
        ),
    )
    catalog = ds.catalog
    assert catalog is not None and catalog.items is ds.interactions.items
    assert catalog.items.ids() == ["b", "a", "c"]  # interactions first, catalogue-only appended
    assert catalog.title == ["Beta", "Alpha", "Gamma"]
    assert catalog.text == ["Beta. Second", "Alpha. First, best. x, y", "Gamma. z"]
    assert catalog.attribute("year") == [1999, 2001, None]
    assert catalog.attribute("price") == [None, 1.5, 2.0]
    assert set(catalog.attributes) == {"year", "price"}
    assert ds.interactions.n_items == 3

    items = IdMap(["z"])
    partial = read_catalog(cat_path, items=items)
    assert partial.items is items and items.ids() == ["z", "a", "c", "b"]
    assert partial.title[0] == "" and partial.attribute("description")[0] is None
    assert partial.attribute("tags")[1] == "x|y"  # no list separator given: plain text


def test_users_file(tmp_path: Path) -> None:
    inter = read_interactions(write(tmp_path / "e.csv", "user,item\nb,1\n"))
    path = tmp_path / "users.jsonl"
    path.write_text(
        '{"user": "a", "age": 31, "langs": ["en", "fr"]}\n\n{"user": "b", "age": 40, "langs": []}\n'
    )
    users = read_users(path, users=inter.users)
    assert users.users is inter.users and inter.users.ids() == ["b", "a"]
    assert users.attribute("age") == [40, 31] and users.attribute("langs") == [[], ["en", "fr"]]
    csv_users = read_users(
        write(tmp_path / "u.csv", "id,age,sports\nx,20,a;b\ny,,\n"),
        UserColumns(user="id", ints=("age",), lists={"sports": ";"}),
    )
    assert csv_users.attribute("age") == [20, None]
    assert csv_users.attribute("sports") == [["a", "b"], []]


def test_rating_range_accepts_bounds(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "user,item,rating\na,b,1\na,c,5\n")
    inter = read_interactions(path, rating_range=(1, 5))
    assert inter.value.tolist() == [1.0, 5.0]


def test_recbole_tiny_with_extra_fields(tmp_path: Path) -> None:
    root = tmp_path / "shop"
    root.mkdir()
    write(
        root / "shop.inter",
        "user_id:token\titem_id:token\ttimestamp:float\nu1\ta\t1.5\nu2\tb\t2\n",
    )
    write(
        root / "shop.item",
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"
        "\tprice:float\ttags:token_seq\n"
        "b\tBeta Film\t2001\tDrama\t9.5\tx y\n"
        "c\tGamma\tn/a\t\t\t\n",
    )
    write(root / "shop.user", "user_id:token\tage:token\tscore:float\nu1\t30\t0.5\n")
    ds = load_dataset(root)
    assert ds.name == "shop" and ds.interactions.timestamp.tolist() == [1, 2]
    assert (ds.interactions.event == EventKind.CLICK).all()
    catalog, users = ds.catalog, ds.users
    assert catalog is not None and users is not None
    assert catalog.items.ids() == ["a", "b", "c"]
    assert catalog.title == ["", "Beta Film", "Gamma"]
    assert catalog.text[1:] == ["Beta Film (2001). Genres: Drama", "Gamma"]
    assert catalog.attribute("year") == [None, 2001, None]
    assert catalog.attribute("genres") == [None, ["Drama"], []]
    assert catalog.attribute("price") == [None, 9.5, None]
    assert catalog.attribute("tags") == [None, ["x", "y"], []]
    assert users.attribute("age") == [30, None] and users.attribute("score") == [0.5, None]

    write(root / "shop.item", "item_id:token\tcolour:token\tsizes:token_seq\na\tred\tS M\n")
    generic = load_recbole(root).catalog
    assert generic is not None and generic.attribute("sizes") == [["S", "M"], None]
    assert generic.attribute("colour") == ["red", None] and generic.title == ["a", ""]


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_glob_characters_in_file_names(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"events[1]*{suffix}"
    frame = pl.DataFrame({"user": ["a"], "item": ["b"]})
    if suffix == ".csv":
        frame.write_csv(path)
    elif suffix == ".parquet":
        frame.write_parquet(path)
    else:
        frame.write_ndjson(path)
    assert read_interactions(path).users.ids() == ["a"]
