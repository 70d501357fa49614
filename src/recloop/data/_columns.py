"""Vectorised conversion of raw columns into core arrays, with errors located to a line.

Each function takes a :class:`Table` and a column name; the happy path stays in Polars and
NumPy, and the first bad cell (if any) becomes a :class:`DataError` naming its line and field.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

from recloop.data._tables import Table
from recloop.data.types import EventKind, IdMap

# ISO-8601 layouts tried in Polars before falling back to datetime.fromisoformat per distinct value.
_ISO_FORMATS = (
    "%Y-%m-%d",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M:%S%.f%#z",
    "%Y-%m-%d %H:%M:%S%.f%#z",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d %H:%M",
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_MAX_SECONDS = 2.0**62  # larger floats do not fit int64 seconds (and are no timestamps)


def first_row(mask: pl.Series) -> int | None:
    """Index of the first true value of a boolean series, or ``None``."""
    hits = mask.fill_null(False).arg_true()
    return int(hits[0]) if len(hits) else None


def show(value: Any, limit: int = 40) -> str:
    """A cell value quoted for an error message, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _raise_if_null(table: Table, column: str, what: str) -> None:
    series = table.frame[column]
    if series.null_count():
        row = first_row(series.is_null())
        assert row is not None
        raise table.error(f"empty {what}", row=row, field=column)


def _is_nested(dtype: pl.DataType) -> bool:
    return isinstance(dtype, pl.List | pl.Array | pl.Struct | pl.Object)


# --------------------------------------------------------------------------- ids
def factorize(table: Table, column: str, role: str) -> tuple[np.ndarray, list[str]]:
    """Dense codes in order of first appearance, and the distinct ids as strings."""
    series = table.frame[column]
    if _is_nested(series.dtype):
        raise table.error(f"holds {series.dtype} values, not {role} ids", row=0, field=column)
    _raise_if_null(table, column, f"{role} id")
    ints: pl.Series | None = None
    if series.dtype.is_integer():
        ints = series.cast(pl.Int64, strict=False)  # only UInt64 beyond 2**63 fails: as text
        if ints.null_count():
            ints, series = None, series.cast(pl.String)
    elif series.dtype == pl.String:
        cast = series.cast(pl.Int64, strict=False)
        if cast.null_count() == 0 and _canonical_ints(series):
            ints = cast
        else:
            series = series.str.strip_chars()
    elif series.dtype.is_float():
        nan = first_row(series.is_nan())
        if nan is not None:  # NaN is how numeric columns spell a missing value
            raise table.error(f"empty {role} id (NaN)", row=nan, field=column)
        whole = (series.abs() < _MAX_SECONDS) & (series == series.floor())
        if whole.all():
            ints = series.cast(pl.Int64)
        else:  # whole numbers keep their integer spelling ("1", not "1.0") beside the others
            value = pl.col("v")
            spelled = pl.when(whole).then(value.cast(pl.Int64, strict=False).cast(pl.String))
            text = series.to_frame("v").select(spelled.otherwise(value.cast(pl.String)))
            series = text.to_series()
    else:
        series = series.cast(pl.String)
    if ints is not None:
        return _factorize_ints(ints)
    empty = first_row(series.str.len_bytes() == 0)
    if empty is not None:
        raise table.error(f"empty {role} id", row=empty, field=column)
    return _factorize_strings(series)


def _canonical_ints(digits: pl.Series) -> bool:
    """Whether strings that parse as int64 are spelled as ``str(int)`` would spell them.

    Parsing accepts "+5", "05" and "-0", which must stay distinct ids; this check is a few
    prefix tests, much cheaper than a regular expression over every row.
    """
    text = pl.col("s")
    odd = (
        (text.str.starts_with("0") & (text.str.len_bytes() > 1))
        | text.str.starts_with("+")
        | text.str.starts_with("-0")
    )
    return not digits.rename("s").to_frame().select(odd.any()).item()


def _factorize_ints(ints: pl.Series) -> tuple[np.ndarray, list[str]]:
    values = ints.to_numpy()
    uniq = ints.unique(maintain_order=True)
    uniq_np = uniq.to_numpy()
    lo, hi = int(uniq_np.min()), int(uniq_np.max())
    span = hi - lo + 1
    if span <= max(4 * len(values), 1 << 16):  # a dense lookup table beats hashing
        lookup = np.full(span, -1, dtype=np.int32)
        lookup[uniq_np - lo] = np.arange(len(uniq_np), dtype=np.int32)
        codes = lookup[values - lo]
    else:
        codes = _codes_by_join(ints, uniq)
    return codes, uniq.cast(pl.String).to_list()


def _factorize_strings(series: pl.Series) -> tuple[np.ndarray, list[str]]:
    uniq = series.unique(maintain_order=True)
    return _codes_by_join(series, uniq), uniq.to_list()


def _codes_by_join(series: pl.Series, uniq: pl.Series) -> np.ndarray:
    lookup = pl.DataFrame(
        {"key": uniq, "code": pl.int_range(len(uniq), dtype=pl.Int32, eager=True)}
    )
    joined = (
        series.rename("key").to_frame().join(lookup, on="key", how="left", maintain_order="left")
    )
    return joined["code"].to_numpy().astype(np.int32, copy=False)


def encode_ids(
    table: Table, column: str, role: str, idmap: IdMap | None
) -> tuple[np.ndarray, IdMap]:
    """Dense indices of a column's ids; new ids are appended to ``idmap`` (or a new one)."""
    codes, names = factorize(table, column, role)
    if idmap is None:
        return codes, IdMap(names)
    mapped = idmap.add(names)
    return mapped[codes], idmap


def id_strings(table: Table, column: str, role: str) -> pl.Series:
    """A column's ids as stripped strings (errors on empty ids)."""
    codes, names = factorize(table, column, role)
    return pl.Series(column, names, dtype=pl.String).gather(codes)


# --------------------------------------------------------------------------- timestamps
def timestamps(table: Table, column: str) -> np.ndarray:
    """``int64`` seconds from numbers or ISO-8601 dates/datetimes (naive means UTC)."""
    series = table.frame[column]
    _raise_if_null(table, column, "timestamp")
    dtype = series.dtype
    if dtype.is_integer():
        seconds = series.cast(pl.Int64, strict=False)  # only UInt64 beyond 2**63 - 1 fails
        bad = first_row(seconds.is_null())
        if bad is not None:
            raise table.error(_time_problem(str(series[bad])), row=bad, field=column)
        return seconds.to_numpy()
    if dtype.is_float():
        bad = first_row(~(series.is_finite() & (series.abs() < _MAX_SECONDS)))
        if bad is not None:
            raise table.error(_time_problem(str(series[bad])), row=bad, field=column)
        return series.floor().cast(pl.Int64).to_numpy()
    if isinstance(dtype, pl.Datetime):
        return series.dt.epoch("s").to_numpy()
    if dtype == pl.Date:
        return series.cast(pl.Datetime("ms")).dt.epoch("s").to_numpy()
    if dtype != pl.String:
        raise table.error(f"holds {dtype} values, not timestamps", row=0, field=column)
    seconds = series.cast(pl.Int64, strict=False)
    unparsed = seconds.is_null()
    if not unparsed.any():
        return seconds.to_numpy()
    rows = unparsed.arg_true()
    parsed = _parse_times(series.gather(rows).str.strip_chars())
    missing = first_row(parsed.is_null())
    if missing is not None:
        row = int(rows[missing])
        raise table.error(_time_problem(series[row]), row=row, field=column)
    return seconds.scatter(rows, parsed).to_numpy()


def _time_problem(value: str) -> str:
    """Why a timestamp cell could not be read."""
    try:
        number = float(value)
    except ValueError:
        return f"{show(value)} is neither a number (seconds) nor an ISO-8601 date"
    if not np.isfinite(number):
        return f"{show(value)} is not a finite number"
    return f"{show(value)} is out of range for a timestamp in seconds"


def _parse_times(text: pl.Series) -> pl.Series:
    """Seconds for numbers with a fraction or exponent, and ISO-8601 dates; null when neither."""
    number = pl.col("t").cast(pl.Float64, strict=False)
    candidates = [
        pl.when(number.is_finite() & (number.abs() < _MAX_SECONDS)).then(
            number.floor().cast(pl.Int64)
        ),
        *(
            pl.col("t")
            .str.to_datetime(fmt, strict=False, time_unit="us", time_zone="UTC")
            .dt.epoch("s")
            for fmt in _ISO_FORMATS
        ),
    ]
    out = text.to_frame("t").select(pl.coalesce(candidates)).to_series()
    leftover = out.is_null()
    if leftover.any():  # rarer ISO forms (week dates, compact forms): once per distinct value
        rows = leftover.arg_true()
        values = text.gather(rows)
        lookup = {v: _fromisoformat(v) for v in values.unique().to_list()}
        out = out.scatter(rows, values.replace_strict(lookup, return_dtype=pl.Int64))
    return out


def _fromisoformat(value: str | None) -> int | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(seconds=1)


# --------------------------------------------------------------------------- values and events
def numbers(
    table: Table, column: str, what: str, *, allowed: tuple[float, float] | None = None
) -> np.ndarray:
    """``float64`` values of a numeric column; ``allowed`` is an inclusive range check."""
    series = table.frame[column]
    _raise_if_null(table, column, what)
    if series.dtype.is_numeric() or series.dtype == pl.Boolean:
        floats = series.cast(pl.Float64)
    elif series.dtype == pl.String:
        floats = series.cast(pl.Float64, strict=False)
        if floats.null_count():
            floats = series.str.strip_chars().cast(pl.Float64, strict=False)
        bad = first_row(floats.is_null())
        if bad is not None:
            raise table.error(f"{show(series[bad])} is not a number", row=bad, field=column)
    else:
        raise table.error(f"holds {series.dtype} values, not numbers", row=0, field=column)
    bad = first_row(~floats.is_finite())
    if bad is not None:
        raise table.error(f"{show(series[bad])} is not a finite number", row=bad, field=column)
    bad = first_row(floats.abs() > _FLOAT32_MAX)
    if bad is not None:
        raise table.error(f"{show(series[bad])} is too large (float32)", row=bad, field=column)
    if allowed is not None:
        lo, hi = allowed
        bad = first_row((floats < lo) | (floats > hi))
        if bad is not None:
            raise table.error(
                f"{what} {show(series[bad])} is outside the allowed range {lo:g}..{hi:g}",
                row=bad,
                field=column,
            )
    return floats.to_numpy()


def events(table: Table, column: str) -> np.ndarray:
    """``int8`` :class:`EventKind` codes from names (``"click"``) or codes (``1``)."""
    series = table.frame[column]
    _raise_if_null(table, column, "event kind")
    if _is_nested(series.dtype):
        raise table.error(f"holds {series.dtype} values, not event kinds", row=0, field=column)
    keys = series.cast(pl.String).str.strip_chars()
    mapping: dict[str, int] = {}
    for key in keys.unique().to_list():
        try:
            mapping[key] = int(EventKind.parse(key))
        except ValueError as exc:
            row = first_row(keys == key)
            raise table.error(str(exc), row=row, field=column) from None
    return keys.replace_strict(mapping, return_dtype=pl.Int8).to_numpy()


# --------------------------------------------------------------------------- attributes
def strings(series: pl.Series) -> pl.Series:
    """Stripped strings with empty cells as null; other types are left as they are."""
    if series.dtype != pl.String:
        return series
    stripped = series.str.strip_chars()
    return stripped.set(stripped.str.len_bytes() == 0, None)


def integers(table: Table, column: str, *, lenient: bool = False) -> pl.Series:
    """Whole numbers (null where empty); a bad cell is an error unless ``lenient`` (then null)."""
    series = strings(table.frame[column])
    if series.dtype.is_integer():
        converted = series.cast(pl.Int64, strict=False)  # only UInt64 beyond 2**63 - 1 fails
        bad = first_row(converted.is_null() & series.is_not_null())
        if bad is not None and not lenient:
            raise table.error(f"{show(series[bad])} is too large (int64)", row=bad, field=column)
        return converted
    if series.dtype.is_float():
        whole = series.is_null() | (series == series.floor())
        if lenient or whole.all():
            return series.set(~whole, None).cast(pl.Int64)
        bad = first_row(~whole)
        assert bad is not None
        raise table.error(f"{show(series[bad])} is not a whole number", row=bad, field=column)
    converted = series.cast(pl.String).cast(pl.Int64, strict=False)
    if not lenient:
        bad = first_row(converted.is_null() & series.is_not_null())
        if bad is not None:
            raise table.error(f"{show(series[bad])} is not a whole number", row=bad, field=column)
    return converted


def floats(table: Table, column: str) -> pl.Series:
    """Numbers (null where empty); a cell that is not a number is an error."""
    series = strings(table.frame[column])
    if series.dtype.is_numeric():
        return series.cast(pl.Float64)
    converted = series.cast(pl.String).cast(pl.Float64, strict=False)
    bad = first_row(converted.is_null() & series.is_not_null())
    if bad is not None:
        raise table.error(f"{show(series[bad])} is not a number", row=bad, field=column)
    return converted


def lists(series: pl.Series, separator: str) -> pl.Series:
    """Split a text column into lists of stripped, non-empty strings (empty cell: ``[]``)."""
    if isinstance(series.dtype, pl.List | pl.Array):
        return series.fill_null([]) if series.null_count() else series
    text = series.cast(pl.String)
    parts = text.str.split(separator).list.eval(pl.element().str.strip_chars())
    parts = parts.list.eval(pl.element().filter(pl.element().str.len_bytes() > 0))
    return parts.fill_null(pl.lit([], dtype=pl.List(pl.String)))


def float_lists(table: Table, column: str, separator: str) -> pl.Series:
    """Split a text column into lists of numbers (RecBole ``float_seq``)."""
    parts = lists(table.frame[column], separator)
    converted = parts.list.eval(pl.element().cast(pl.Float64, strict=False))
    bad = first_row(converted.list.eval(pl.element().is_null()).list.any())
    if bad is not None:
        raise table.error(
            f"{show(table.frame[column][bad])} is not a list of numbers", row=bad, field=column
        )
    return converted


def gather_rows(frame: pl.DataFrame, positions: Sequence[int] | np.ndarray) -> pl.DataFrame:
    """Rows of ``frame`` at ``positions``; position −1 gives a row of nulls."""
    pos = np.asarray(positions, dtype=np.int64)
    if len(pos) and (pos < 0).any():
        frame = pl.concat([frame, frame.clear(1)])
        pos = np.where(pos < 0, frame.height - 1, pos)
    return frame[pos]
