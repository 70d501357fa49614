"""Loaders: RecBole atomic files, GroupLens MovieLens layouts, and CSV/TSV/Parquet/JSON lines.

Every loader returns the core types over shared :class:`IdMap` objects: users and items are
numbered in order of first appearance in the interaction file, then ids that only the catalogue
or user file knows are appended. Bad input raises :class:`~recloop.errors.DataError` naming the
file, the 1-based line (a header is line 1) and the field.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from recloop.data import _columns as col
from recloop.data._tables import Table, TextLayout, check_file, read_jsonl, read_parquet, read_text
from recloop.data.types import Catalog, Dataset, EventKind, IdMap, Interactions, Users
from recloop.errors import ConfigError, DataError

PathLike = str | os.PathLike[str]

SUFFIXES = (".csv", ".tsv", ".parquet", ".jsonl", ".ndjson", ".inter")
MOVIELENS_RATING_RANGE = (1.0, 5.0)
# u.item's genre flags, in file order (ml-100k's u.genre).
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip

_ALIASES: dict[str, tuple[str, ...]] = {
    "user": ("user", "userid", "uid", "customerid", "visitorid", "reviewerid"),
    "item": ("item", "itemid", "iid", "movieid", "productid", "articleid", "asin"),
    "timestamp": ("timestamp", "ts", "time", "datetime", "date", "eventtime", "unixreviewtime"),
    "value": ("rating", "value", "score", "weight", "overall"),
    "event": ("event", "eventtype", "eventkind", "action"),
    "title": ("title", "name", "movietitle", "itemname", "productname"),
}


def _find(columns: Sequence[str], role: str) -> str | None:
    """The first column whose name, ignoring case, '_', '-' and spaces, is an alias of ``role``."""
    normal = {c.lower().replace("_", "").replace("-", "").replace(" ", ""): c for c in columns}
    for alias in _ALIASES[role]:
        if alias in normal:
            return normal[alias]
    return None


class ColumnMap(BaseModel):
    """Which columns of an interaction file hold what; only ``user`` and ``item`` are required.

    A field left out is inferred from the header as :meth:`infer` does, so naming one column
    keeps the others recognised; give a field as None to leave that column out. ``event``
    holds names (``click``, ``dislike``) or codes (see :class:`EventKind`); without it every
    row is a rating when ``value`` is mapped and a click otherwise.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    user: str = "user"
    item: str = "item"
    timestamp: str | None = None
    value: str | None = None
    event: str | None = None

    @classmethod
    def infer(cls, columns: Sequence[str]) -> ColumnMap:
        """Recognise common header names (``user_id``, ``userId``, ``movieId``, ``rating``...)."""
        return cls(
            user=_find(columns, "user") or "user",
            item=_find(columns, "item") or "item",
            timestamp=_find(columns, "timestamp"),
            value=_find(columns, "value"),
            event=_find(columns, "event"),
        )

    def resolve(self, columns: Sequence[str]) -> ColumnMap:
        """This map over a header: the fields given as they are, the others inferred."""
        given = {name: getattr(self, name) for name in self.model_fields_set}
        return ColumnMap.infer(columns).model_copy(update=given)


class _FieldTypes(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    lists: dict[str, str] = Field(default_factory=dict, description="column -> list separator")
    ints: tuple[str, ...] = ()
    floats: tuple[str, ...] = ()
    attributes: tuple[str, ...] | None = Field(
        default=None, description="attribute columns; None means every other column"
    )


class CatalogColumns(_FieldTypes):
    """Columns of a catalogue file.

    ``text`` columns are joined after the title with ". " into ``Catalog.text`` (list fields as
    "a, b"); ``lists`` maps a column to its separator; every column other than the id, the title
    and the text columns becomes an attribute unless ``attributes`` names them explicitly.
    """

    item: str = "item"
    title: str | None = "title"
    text: tuple[str, ...] = ()

    @classmethod
    def infer(cls, columns: Sequence[str]) -> CatalogColumns:
        return cls(item=_find(columns, "item") or "item", title=_find(columns, "title"))


class UserColumns(_FieldTypes):
    """Columns of a user file: the id plus attributes (``lists``/``ints``/``floats`` typed)."""

    user: str = "user"

    @classmethod
    def infer(cls, columns: Sequence[str]) -> UserColumns:
        return cls(user=_find(columns, "user") or "user")


# --------------------------------------------------------------------------- opening files
def _existing(path: PathLike) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError("no such file or directory", path=p)
    return p


def _open(
    path: Path,
    separator: str | None,
    wanted: Callable[[Sequence[str]], Sequence[str | None]] | None = None,
) -> tuple[Table, dict[str, str]]:
    """Read any supported file; returns the table and RecBole field types (``{}`` otherwise)."""
    suffix = path.suffix.lower()
    if path.is_file() and suffix in (".parquet", ".pq"):
        return read_parquet(path, wanted), {}
    if path.is_file() and suffix in (".jsonl", ".ndjson"):
        return read_jsonl(path), {}
    if suffix in (".inter", ".item", ".user"):
        return _recbole_table(read_text(path, TextLayout("\t", quote=None)))
    if separator is None:
        separator = {".csv": ",", ".tsv": "\t", ".tab": "\t"}.get(suffix)
    if separator is None:
        check_file(path)
        expected = ", ".join(SUFFIXES)
        raise DataError(
            f"unsupported file type {suffix or '(no suffix)'!r}: expected one of {expected}, "
            "or pass separator= for other delimited text",
            path=path,
        )
    return read_text(path, TextLayout(separator)), {}


def _recbole_table(table: Table) -> tuple[Table, dict[str, str]]:
    """Strip RecBole's ``name:type`` headers, remembering each field's type."""
    types: dict[str, str] = {}
    names = []
    for raw in table.frame.columns:
        name, _, kind = raw.rpartition(":") if ":" in raw else (raw, "", "token")
        if name in types:
            raise DataError(
                f"the header names field {name!r} more than once; RecBole field names must be "
                "unique",
                path=table.path,
                line=1,
                field=name,
            )
        types[name] = kind or "token"
        names.append(name)
    table.frame.columns = names
    table.found = tuple(names)
    return table, types


# --------------------------------------------------------------------------- interactions
def read_interactions(
    path: PathLike,
    columns: ColumnMap | None = None,
    *,
    users: IdMap | None = None,
    items: IdMap | None = None,
    rating_range: tuple[float, float] | None = None,
    separator: str | None = None,
) -> Interactions:
    """Read an interaction file (.csv, .tsv, .parquet, .jsonl/.ndjson, .inter).

    Common header names are recognised for the columns ``columns`` does not name. Timestamps
    may be seconds or ISO-8601 dates (naive means UTC); without a timestamp column rows are
    numbered in file order; without a value column every value is 1.0. New ids are appended
    to ``users`` and ``items`` when given, so several files can share one pair of id maps.
    """
    p = _existing(path)

    def resolved(found: Sequence[str]) -> ColumnMap:
        return ColumnMap.infer(found) if columns is None else columns.resolve(found)

    def wanted(found: Sequence[str]) -> Sequence[str | None]:
        cmap = resolved(found)
        return (cmap.user, cmap.item, cmap.timestamp, cmap.value, cmap.event)

    table, _ = _open(p, separator, wanted)
    cmap = resolved(table.found)
    hint = "; name the columns with a ColumnMap" if columns is None else ""
    table.require(cmap.user, cmap.item, cmap.timestamp, cmap.value, cmap.event, hint=hint)
    if rating_range is not None and cmap.value is None:
        raise ConfigError(f"{p}: rating_range needs a value column (none was mapped or found)")
    return _interactions(table, cmap, users, items, rating_range)


def _interactions(
    table: Table,
    cmap: ColumnMap,
    users: IdMap | None,
    items: IdMap | None,
    rating_range: tuple[float, float] | None,
) -> Interactions:
    n = table.height
    user_codes, user_ids = col.factorize(table, cmap.user, "user")
    item_codes, item_ids = col.factorize(table, cmap.item, "item")
    if cmap.timestamp is not None:
        timestamp = col.timestamps(table, cmap.timestamp)
    else:
        timestamp = np.arange(n, dtype=np.int64)
    if cmap.value is not None:
        value = col.numbers(table, cmap.value, "value", allowed=rating_range).astype(np.float32)
    else:
        value = np.ones(n, dtype=np.float32)
    if cmap.event is not None:
        event = col.events(table, cmap.event)
    else:
        kind = EventKind.RATING if cmap.value is not None else EventKind.CLICK
        event = np.full(n, int(kind), dtype=np.int8)
    # Every column is valid: only now touch the (possibly shared) id maps.
    user, users = _assign(user_codes, user_ids, users)
    item, items = _assign(item_codes, item_ids, items)
    return Interactions(user, item, timestamp, value, event, users, items)


def _assign(codes: np.ndarray, ids: list[str], idmap: IdMap | None) -> tuple[np.ndarray, IdMap]:
    if idmap is None:
        return codes, IdMap(ids)
    return idmap.add(ids)[codes], idmap


# --------------------------------------------------------------------------- catalogue and users
def read_catalog(
    path: PathLike,
    columns: CatalogColumns | None = None,
    *,
    items: IdMap | None = None,
    separator: str | None = None,
) -> Catalog:
    """Read a catalogue file: one row per item with a title, text fields and attributes.

    With ``items`` the catalogue is over that id map (extended with ids it lacks); items
    without a row get an empty title and text and ``None`` attributes.
    """
    p = _existing(path)
    table, types = _open(p, separator)
    spec = columns or CatalogColumns.infer(table.found)
    if types and columns is None:
        spec = _recbole_spec(spec, types, exclude=(spec.item, spec.title))
    table.require(spec.item, spec.title, *spec.text, *_typed(spec), *(spec.attributes or ()))
    ids = _unique_ids(table, spec.item, "item")
    fields = _attribute_columns(table, spec, exclude={spec.item}, types=types)
    title = (_as_text(table, spec.title, fields[spec.title]) if spec.title else ids).fill_null("")
    parts = [title] + [_as_text(table, c, fields[c]) for c in spec.text if c != spec.title]
    text = pl.select(pl.concat_str(parts, separator=". ", ignore_nulls=True)).to_series()
    if spec.attributes is not None:
        names = list(spec.attributes)
    else:
        names = [c for c in fields if c != spec.title and c not in spec.text]
    frame = pl.DataFrame([title.alias("__title"), text.alias("__text")]).with_columns(
        [fields[c].alias(c) for c in names]
    )
    idmap, frame = _assemble(items, ids, frame)
    return Catalog(
        idmap,
        frame["__title"].fill_null("").to_list(),
        frame["__text"].fill_null("").to_list(),
        {c: frame[c].to_list() for c in names},
    )


def read_users(
    path: PathLike,
    columns: UserColumns | None = None,
    *,
    users: IdMap | None = None,
    separator: str | None = None,
) -> Users:
    """Read a user file: one row per user with attributes (age, gender, ...)."""
    p = _existing(path)
    table, types = _open(p, separator)
    spec = columns or UserColumns.infer(table.found)
    if types and columns is None:
        spec = _recbole_spec(spec, types, exclude=(spec.user,))
    elif columns is None and "age" in table.found:
        spec = spec.model_copy(update={"ints": ("age",)})
    table.require(spec.user, *_typed(spec), *(spec.attributes or ()))
    ids = _unique_ids(table, spec.user, "user")
    fields = _attribute_columns(table, spec, exclude={spec.user}, types=types)
    names = list(spec.attributes) if spec.attributes is not None else list(fields)
    frame = pl.DataFrame([fields[c].alias(c) for c in names] or [ids.alias("__id")])
    idmap, frame = _assemble(users, ids, frame)
    return Users(idmap, {c: frame[c].to_list() for c in names})


def _typed(spec: _FieldTypes) -> tuple[str, ...]:
    return (*spec.lists, *spec.ints, *spec.floats)


_Spec = TypeVar("_Spec", bound="_FieldTypes")


def _recbole_spec(spec: _Spec, types: dict[str, str], exclude: tuple[str | None, ...]) -> _Spec:
    """Typed fields from a RecBole header: token_seq/float_seq are lists (float_seq of numbers,
    see :func:`_attribute_columns`), float numbers, age int."""
    lists = {n: " " for n, t in types.items() if t in ("token_seq", "float_seq")}
    floats = tuple(n for n, t in types.items() if t == "float")
    ints = ("age",) if "age" in types else ()
    update = {
        "lists": {n: s for n, s in lists.items() if n not in exclude},
        "floats": tuple(n for n in floats if n not in exclude),
        "ints": ints,
    }
    return spec.model_copy(update=update)


def _unique_ids(table: Table, column: str, role: str) -> pl.Series:
    """A catalogue's or user file's ids as strings; a repeated id is an error."""
    ids = col.id_strings(table, column, role)
    dup = col.first_row(~ids.is_first_distinct())
    if dup is not None:
        value = ids[dup]
        first = col.first_row(ids == value)
        assert first is not None
        line = table.line_of(first)
        where = f"line {line}" if line is not None else f"row {first + 1}"
        raise table.error(
            f"duplicate {role} id {col.show(value)} (first on {where})", row=dup, field=column
        )
    return ids


def _attribute_columns(
    table: Table,
    spec: _FieldTypes,
    exclude: set[str | None],
    types: dict[str, str] | None = None,
) -> dict[str, pl.Series]:
    """Every column except ``exclude`` converted as ``spec`` says (strings by default); list
    fields a RecBole header (``types``) declares ``float_seq`` hold numbers."""
    out: dict[str, pl.Series] = {}
    for name in table.frame.columns:
        if name in exclude:
            continue
        if name in spec.lists and types and types.get(name) == "float_seq":
            series = col.float_lists(table, name, spec.lists[name])
        elif name in spec.lists:
            series = col.lists(table.frame[name], spec.lists[name])
        elif name in spec.ints:
            series = col.integers(table, name)
        elif name in spec.floats:
            series = col.floats(table, name)
        else:
            series = col.strings(table.frame[name])
        out[name] = series
    return out


def _as_text(table: Table, name: str, series: pl.Series) -> pl.Series:
    """A column as text for ``Catalog.text``: lists (nested ones flattened) joined with ", ",
    empty as null; a value that cannot be text (bytes that are not UTF-8) is an error."""
    depth = 0  # 2: a list of lists
    leaf: object = series.dtype
    while isinstance(leaf, pl.List | pl.Array):
        depth, leaf = depth + 1, leaf.inner
    target: pl.DataType = pl.String()
    for _ in range(depth):
        target = pl.List(target)
    try:
        text = series.cast(target)
        if depth == 0:
            return col.strings(text)
        for _ in range(depth - 1):
            text = text.list.eval(pl.element().list.explode(keep_nulls=False, empty_as_null=False))
        joined = text.list.join(", ")
    except pl.exceptions.PolarsError:
        bad = (r for r in range(len(series)) if not _castable(series.slice(r, 1), target))
        row = next(bad, 0)
        raise table.error(
            f"{col.show(series.slice(row, 1).to_list()[0])} cannot be turned into text "
            f"({series.dtype})",
            row=row,
            field=name,
        ) from None
    return joined.set(joined.str.len_bytes() == 0, None)


def _castable(series: pl.Series, dtype: pl.DataType) -> bool:
    try:
        series.cast(dtype)
    except pl.exceptions.PolarsError:
        return False
    return True


def _assemble(
    idmap: IdMap | None, ids: pl.Series, frame: pl.DataFrame
) -> tuple[IdMap, pl.DataFrame]:
    """Order ``frame`` (one row per id) by ``idmap``, appending ids it lacks."""
    names = ids.to_list()
    if idmap is None:
        return IdMap(names), frame
    index = idmap.add(names)
    if len(index) == len(idmap) and (index == np.arange(len(index))).all():
        return idmap, frame
    positions = np.full(len(idmap), -1, dtype=np.int64)
    positions[index] = np.arange(len(index))
    return idmap, col.gather_rows(frame, positions)


# --------------------------------------------------------------------------- MovieLens
_YEAR_SUFFIX = r"\s*\((\d{4})\)\s*$"


def _movielens_catalog(
    items: IdMap, ids: pl.Series, title: pl.Series, year: pl.Series, genres: pl.Series
) -> Catalog:
    """Catalogue with ``year`` and ``genres`` attributes and text "Title (Year). Genres: a, b"."""
    frame = pl.DataFrame(
        [title.alias("title"), year.cast(pl.Int64).alias("year"), genres.alias("genres")]
    )
    frame = frame.with_columns(
        text=pl.concat_str(
            [
                pl.col("title"),
                pl.when(pl.col("year").is_not_null())
                .then(pl.format(" ({})", pl.col("year")))
                .otherwise(pl.lit("")),
                pl.when(pl.col("genres").list.len() > 0)
                .then(pl.lit(". Genres: ") + pl.col("genres").list.join(", "))
                .otherwise(pl.lit("")),
            ]
        )
    )
    idmap, frame = _assemble(items, ids, frame)
    return Catalog(
        idmap,
        frame["title"].fill_null("").to_list(),
        frame["text"].fill_null("").to_list(),
        {"year": frame["year"].to_list(), "genres": frame["genres"].to_list()},
    )


def _split_title(raw: pl.Series) -> tuple[pl.Series, pl.Series]:
    """ "Toy Story (1995)" -> ("Toy Story", 1995); no year suffix gives null."""
    text = col.strings(raw).fill_null("")
    year = text.str.extract(_YEAR_SUFFIX, 1).cast(pl.Int64, strict=False)
    return text.str.replace(_YEAR_SUFFIX, ""), year


def _recbole_items(path: Path, items: IdMap) -> Catalog:
    """A RecBole ``.item`` file; MovieLens columns (movie_title, release_year, class) get the
    MovieLens catalogue shape, anything else is read as typed attributes."""
    table, types = _open(path, None)
    title_col = next((c for c in ("movie_title", "title", "name") if c in types), None)
    year_col = next((c for c in ("release_year", "year") if c in types), None)
    genre_col = next((c for c in ("class", "genre", "genres") if c in types), None)
    if title_col is None or genre_col is None:
        return read_catalog(path, items=items)
    item_col = _find(table.found, "item") or "item_id"
    table.require(item_col)
    ids = _unique_ids(table, item_col, "item")
    title = col.strings(table.frame[title_col]).fill_null("")
    year = (
        col.integers(table, year_col, lenient=True)
        if year_col
        else pl.Series([None] * table.height, dtype=pl.Int64)
    )
    genres = col.lists(table.frame[genre_col], " ")
    catalog = _movielens_catalog(items, ids, title, year, genres)
    exclude = {item_col, title_col, year_col, genre_col}
    extra = [c for c in table.frame.columns if c not in exclude]
    if extra:
        spec = _recbole_spec(CatalogColumns(item=item_col), types, ())
        fields = _attribute_columns(table, spec, exclude=exclude, types=types)
        _, frame = _assemble(items, ids, pl.DataFrame([fields[c].alias(c) for c in extra]))
        catalog.attributes.update({c: frame[c].to_list() for c in extra})
    return catalog


def load_recbole(
    path: PathLike,
    *,
    rating_range: tuple[float, float] | None = None,
    name: str | None = None,
) -> Dataset:
    """Load RecBole atomic files: a folder holding ``<name>.inter`` (plus optional ``.item``
    and ``.user``), or the ``.inter`` file itself. The dataset is named after the file stem."""
    p = _existing(path)
    if p.is_dir():
        found = sorted(p.glob("*.inter"))
        if not found:
            raise DataError("holds no RecBole .inter file", path=p)
        preferred = [f for f in found if f.stem == p.name]
        if len(preferred) != 1 and len(found) > 1:
            listed = ", ".join(f.name for f in found)
            raise DataError(f"holds several .inter files ({listed}); pass one of them", path=p)
        inter = preferred[0] if preferred else found[0]
    else:
        inter = p
    table, types = _open(inter, None)
    cmap = ColumnMap(
        user=_find(table.found, "user") or "user_id",
        item=_find(table.found, "item") or "item_id",
        timestamp="timestamp" if "timestamp" in types else None,
        value="rating" if "rating" in types else None,
    )
    table.require(cmap.user, cmap.item)
    interactions = _interactions(table, cmap, None, None, rating_range)
    item_file, user_file = inter.with_suffix(".item"), inter.with_suffix(".user")
    catalog = _recbole_items(item_file, interactions.items) if item_file.is_file() else None
    users = read_users(user_file, users=interactions.users) if user_file.is_file() else None
    return Dataset(name or inter.stem, interactions, catalog, users)


def _movielens_ratings(
    path: Path, separator: str, rating_range: tuple[float, float] | None
) -> Interactions:
    """The headerless user, item, rating, timestamp file of a GroupLens MovieLens release."""
    names = ("user", "item", "rating", "timestamp")
    ratings = read_text(path, TextLayout(separator, quote=None, header=False, names=names))
    cmap = ColumnMap(user="user", item="item", timestamp="timestamp", value="rating")
    return _interactions(ratings, cmap, None, None, rating_range)


def _ml100k(root: Path, rating_range: tuple[float, float] | None, name: str | None) -> Dataset:
    interactions = _movielens_ratings(root / "u.data", "\t", rating_range)
    catalog = users = None
    if (root / "u.item").is_file():
        fields = ("item", "title", "release_date", "video_release_date", "url", *ML100K_GENRES)
        table = read_text(
            root / "u.item", TextLayout("|", quote=None, header=False, names=fields, latin1=True)
        )
        ids = _unique_ids(table, "item", "item")
        title, year = _split_title(table.frame["title"])
        released = col.strings(table.frame["release_date"]).str.extract(r"(\d{4})\s*$", 1)
        year = year.fill_null(released.cast(pl.Int64, strict=False))
        flags = table.frame.select(
            pl.concat_list(
                [pl.when(pl.col(g).str.strip_chars() == "1").then(pl.lit(g)) for g in ML100K_GENRES]
            ).list.drop_nulls()
        ).to_series()
        catalog = _movielens_catalog(interactions.items, ids, title, year, flags)
    if (root / "u.user").is_file():
        names = ("user", "age", "gender", "occupation", "zip_code")
        table = read_text(root / "u.user", TextLayout("|", quote=None, header=False, names=names))
        users = _movielens_users(table, interactions.users)
    return Dataset(name or "ml-100k", interactions, catalog, users)


def _ml1m(root: Path, rating_range: tuple[float, float] | None, name: str | None) -> Dataset:
    interactions = _movielens_ratings(root / "ratings.dat", "::", rating_range)
    catalog = users = None
    if (root / "movies.dat").is_file():
        table = read_text(
            root / "movies.dat",
            TextLayout(
                "::", quote=None, header=False, names=("item", "title", "genres"), latin1=True
            ),
        )
        ids = _unique_ids(table, "item", "item")
        title, year = _split_title(table.frame["title"])
        genres = col.lists(table.frame["genres"], "|")
        catalog = _movielens_catalog(interactions.items, ids, title, year, genres)
    if (root / "users.dat").is_file():
        names = ("user", "gender", "age", "occupation", "zip_code")
        table = read_text(
            root / "users.dat",
            TextLayout("::", quote=None, header=False, names=names, latin1=True),
        )
        users = _movielens_users(table, interactions.users)
    return Dataset(name or "ml-1m", interactions, catalog, users)


def _movielens_users(table: Table, users: IdMap) -> Users:
    ids = _unique_ids(table, "user", "user")
    frame = pl.DataFrame(
        [
            col.integers(table, "age").alias("age"),
            col.strings(table.frame["gender"]).alias("gender"),
            col.strings(table.frame["occupation"]).alias("occupation"),
            col.strings(table.frame["zip_code"]).alias("zip_code"),
        ]
    )
    idmap, frame = _assemble(users, ids, frame)
    return Users(idmap, {c: frame[c].to_list() for c in frame.columns})


def load_movielens_raw(
    path: PathLike,
    *,
    rating_range: tuple[float, float] | None = MOVIELENS_RATING_RANGE,
    name: str | None = None,
) -> Dataset:
    """Load a GroupLens MovieLens folder as distributed: ml-100k (``u.data``, ``u.item``,
    ``u.user``) or ml-1m (``ratings.dat``, ``movies.dat``, ``users.dat``)."""
    root = _existing(path)
    if (root / "u.data").is_file():
        return _ml100k(root, rating_range, name)
    if (root / "ratings.dat").is_file():
        return _ml1m(root, rating_range, name)
    raise DataError(
        "holds neither u.data (MovieLens-100K) nor ratings.dat (MovieLens-1M)", path=root
    )


# --------------------------------------------------------------------------- entry point
def load_dataset(
    path: PathLike,
    columns: ColumnMap | None = None,
    *,
    catalog: PathLike | None = None,
    catalog_columns: CatalogColumns | None = None,
    users: PathLike | None = None,
    user_columns: UserColumns | None = None,
    rating_range: tuple[float, float] | None = None,
    separator: str | None = None,
    name: str | None = None,
) -> Dataset:
    """Load a dataset, detecting its layout.

    A folder holding ``*.inter`` is RecBole, one holding ``u.data`` or ``ratings.dat`` is a
    GroupLens MovieLens download; a single file is an interaction file read by its suffix
    (.csv, .tsv, .parquet, .jsonl/.ndjson, .inter), optionally with ``catalog`` and ``users``
    files over the same ids.
    """
    p = _existing(path)
    if p.is_dir():
        if any(p.glob("*.inter")):
            return load_recbole(p, rating_range=rating_range, name=name)
        if (p / "u.data").is_file() or (p / "ratings.dat").is_file():
            if rating_range is None:
                return load_movielens_raw(p, name=name)
            return load_movielens_raw(p, rating_range=rating_range, name=name)
        listed = ", ".join(sorted(c.name for c in p.iterdir())[:8]) or "nothing"
        raise DataError(
            "holds no dataset I recognise: expected *.inter (RecBole), u.data (MovieLens-100K) "
            f"or ratings.dat (MovieLens-1M); found {listed}",
            path=p,
        )
    interactions = read_interactions(p, columns, rating_range=rating_range, separator=separator)
    cat = None
    if catalog is not None:
        cat = read_catalog(catalog, catalog_columns, items=interactions.items)
    usr = None
    if users is not None:
        usr = read_users(users, user_columns, users=interactions.users)
    return Dataset(name or p.stem, interactions, cat, usr)
