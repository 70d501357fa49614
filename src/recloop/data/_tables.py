"""Reading files into raw Polars columns, and finding the line behind a row when one is bad.

Everything here turns Polars' and the OS's complaints into :class:`DataError` lines naming the
file and, where it can, the 1-based line (a header is line 1). The happy path never loops over
rows in Python; the scans that locate a bad line run only once something has gone wrong.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from recloop.errors import DataError

# Formats people hand us by mistake, recognised by their first bytes.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (or an Excel/Office file); extract or export it first"),
    (b"\x1f\x8b", "a gzip-compressed file; decompress it first"),
    (b"BZh", "a bzip2-compressed file; decompress it first"),
    (b"\xfd7zXZ\x00", "an xz-compressed file; decompress it first"),
    (b"(\xb5/\xfd", "a zstd-compressed file; decompress it first"),
    (b"PAR1", "a Parquet file; give it the .parquet suffix"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"\x7fELF", "an executable program"),
)
_UTF16_MARKS = (b"\xff\xfe", b"\xfe\xff")
_UTF8_BOM = b"\xef\xbb\xbf"
_SNIFF_BYTES = 8192
_UNIT_SEPARATOR = "\x1f"  # stands in for multi-character separators such as MovieLens' "::"


@dataclass(frozen=True)
class TextLayout:
    """How a delimited text file is laid out."""

    separator: str = ","
    quote: str | None = '"'
    header: bool = True
    names: tuple[str, ...] = ()  # column names for a file without a header
    latin1: bool = False  # accept Latin-1 bytes when the file is not valid UTF-8 (GroupLens files)

    @property
    def kind(self) -> str:
        named = {",": "CSV", "\t": "tab-separated", "|": "pipe-separated", ";": "CSV"}
        return named.get(self.separator, f"{self.separator!r}-separated")


@dataclass(eq=False)
class Table:
    """A file read into raw Polars columns, able to say which line a row came from."""

    path: Path
    frame: pl.DataFrame
    format: str  # "text", "jsonl" or "parquet"
    found: tuple[str, ...]  # every column the file has (the frame may hold fewer)
    layout: TextLayout | None = None
    rows: np.ndarray | None = None  # source row of each frame row, when blank rows were dropped

    @property
    def height(self) -> int:
        return self.frame.height

    def source_row(self, row: int) -> int:
        return int(self.rows[row]) if self.rows is not None else row

    def line_of(self, row: int) -> int | None:
        """1-based line where frame row ``row`` starts (``None`` for Parquet)."""
        raw = self.source_row(row)
        if self.format == "jsonl":
            return _jsonl_line(self.path, raw)
        if self.format == "text" and self.layout is not None:
            return _text_line(self.path, self.layout, raw)
        return None

    def error(self, reason: str, *, row: int | None = None, field: str | None = None) -> DataError:
        """A :class:`DataError` located at ``row`` (a frame row) and ``field``."""
        line = None
        if row is not None:
            line = self.line_of(row)
            if line is None:
                reason = f"{reason} (row {self.source_row(row) + 1})"
        return DataError(reason, path=self.path, line=line, field=field)

    def require(self, *names: str | None, hint: str = "") -> None:
        """Raise when a named column is missing, listing the columns the file does have."""
        for name in names:
            if name is not None and name not in self.found:
                found = ", ".join(repr(c) for c in self.found) or "none"
                line = 1 if self.format == "text" and self.layout and self.layout.header else None
                raise DataError(
                    f"missing column {name!r} (found: {found}){hint}",
                    path=self.path,
                    line=line,
                    field=name,
                )


# --------------------------------------------------------------------------- checks on the file
def check_file(path: Path) -> bytes:
    """The first bytes of ``path``; raises for a missing, empty or binary file."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataError("no such file or directory", path=path) from None
    except OSError as exc:
        raise DataError(f"cannot be read: {exc.strerror or exc}", path=path) from None
    if path.is_dir():
        raise DataError("is a directory, not a file", path=path)
    if size == 0:
        raise DataError("the file is empty (0 bytes)", path=path, line=1)
    try:
        with path.open("rb") as f:
            return f.read(_SNIFF_BYTES)
    except OSError as exc:
        raise DataError(f"cannot be read: {exc.strerror or exc}", path=path) from None


def check_text(path: Path, head: bytes, *, latin1: bool = False) -> None:
    """Refuse known binary formats, NUL bytes and (unless ``latin1``) bytes that are not UTF-8."""
    for signature, what in _SIGNATURES:
        if head.startswith(signature):
            raise DataError(f"is not a text file: it looks like {what}", path=path)
    if head.startswith(_UTF16_MARKS):
        raise DataError("is UTF-16 text; save it as UTF-8", path=path)
    nul = head.find(b"\x00")
    if nul >= 0:
        line = head.count(b"\n", 0, nul) + 1
        raise DataError(
            "is not a text file: it holds binary data (a NUL byte)", path=path, line=line
        )
    if not latin1:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as exc:
            if exc.start < len(head) - 4:  # not merely a character cut at the sniff boundary
                raise _utf8_error(path, head, exc) from None


def _utf8_error(path: Path, data: bytes, exc: UnicodeDecodeError) -> DataError:
    line = data.count(b"\n", 0, exc.start) + 1
    byte = data[exc.start]
    return DataError(
        f"is not UTF-8 text (byte 0x{byte:02x} cannot be decoded); save it as UTF-8",
        path=path,
        line=line,
    )


# --------------------------------------------------------------------------- delimited text
def read_text(path: Path, layout: TextLayout) -> Table:
    """Read a delimited text file with every column as strings (empty fields are null)."""
    head = check_file(path)
    check_text(path, head, latin1=layout.latin1)
    separator = layout.separator
    source: Path | io.BytesIO = path
    if layout.latin1 or len(separator) > 1:
        source = io.BytesIO(_recode(path, layout))
        if len(separator) > 1:
            separator = _UNIT_SEPARATOR
    try:
        frame = pl.read_csv(
            source,
            separator=separator,
            quote_char=layout.quote,
            has_header=layout.header,
            infer_schema=False,
            glob=False,
            raise_if_empty=True,
        )
    except pl.exceptions.NoDataError:
        raise DataError("holds no header line", path=path, line=1) from None
    except pl.exceptions.PolarsError as exc:
        raise _explain_text_error(path, layout, exc) from None
    if layout.header:
        names = [c.strip().lstrip("\ufeff") for c in frame.columns]
        if names != frame.columns:
            frame.columns = _unique_names(names)
    else:
        if frame.width != len(layout.names):
            what = ", ".join(layout.names)
            raise DataError(
                f"expected {len(layout.names)} {layout.kind} fields ({what}), found {frame.width}",
                path=path,
                line=1,
            )
        frame.columns = list(layout.names)
    frame, rows = _drop_blank_rows(frame)
    if frame.height == 0:
        line = 2 if layout.header else 1
        raise DataError("holds no data rows", path=path, line=line)
    return Table(path, frame, "text", tuple(frame.columns), layout, rows)


def _unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        out.append(name if count == 0 else f"{name}_duplicated_{count - 1}")
    return out


def _drop_blank_rows(frame: pl.DataFrame) -> tuple[pl.DataFrame, np.ndarray | None]:
    blank = frame.select(pl.all_horizontal(pl.all().is_null())).to_series()
    if not blank.any():
        return frame, None
    keep = ~blank
    return frame.filter(keep), np.flatnonzero(keep.to_numpy())


def _decode(data: bytes, path: Path, latin1: bool) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if latin1:
            return data.decode("latin-1")
        raise _utf8_error(path, data, exc) from None


def _recode(path: Path, layout: TextLayout) -> bytes:
    """The file as UTF-8 bytes with a multi-character separator replaced by one character."""
    text = _decode(path.read_bytes(), path, layout.latin1)
    if len(layout.separator) > 1:
        text = text.replace(layout.separator, _UNIT_SEPARATOR)
    return text.encode("utf-8")


def _open_text(path: Path, layout: TextLayout) -> io.StringIO:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1" if layout.latin1 else "utf-8", errors="replace")
    return io.StringIO(text, newline="")


def _records(path: Path, layout: TextLayout) -> Iterator[tuple[int, list[str]]]:
    """(start line, fields) of every record, header included; blank lines give ``[]``."""
    stream = _open_text(path, layout)
    if layout.quote is None:
        for number, line in enumerate(stream, start=1):
            text = line.rstrip("\r\n")
            yield number, (text.split(layout.separator) if text else [])
        return
    reader = csv.reader(stream, delimiter=layout.separator, quotechar=layout.quote, strict=True)
    last = 0
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise _MalformedRecord(last + 1, str(exc)) from None
        yield last + 1, fields
        last = reader.line_num


class _MalformedRecord(Exception):
    def __init__(self, line: int, reason: str) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason


def _text_line(path: Path, layout: TextLayout, row: int) -> int | None:
    """Line where data row ``row`` (0-based, blank lines counted as Polars counts them) starts."""
    skip = 1 if layout.header else 0
    if layout.quote is None:
        return row + 1 + skip
    try:
        for index, (line, _) in enumerate(_records(path, layout)):
            if index == row + skip:
                return line
    except _MalformedRecord:
        return None
    return None


def _explain_text_error(path: Path, layout: TextLayout, exc: Exception) -> DataError:
    """Translate a Polars parse failure, scanning the file with :mod:`csv` to find the line."""
    message = str(exc)
    if "utf-8" in message.lower() or "utf8" in message.lower():
        data = path.read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as decode_error:
            return _utf8_error(path, data, decode_error)
    expected: int | None = len(layout.names) if not layout.header else None
    stray_quote: int | None = None
    try:
        for line, fields in _records(path, layout):
            if not fields:
                continue
            if expected is None:
                expected = len(fields)
                continue
            if len(fields) > expected:
                return DataError(
                    f"has {len(fields)} fields, but the {_reference(layout)} has {expected}; "
                    "quote fields that contain the separator",
                    path=path,
                    line=line,
                )
            if stray_quote is None and layout.quote and any(layout.quote in f for f in fields):
                stray_quote = line
    except _MalformedRecord as bad:
        return DataError(f"malformed quoting: {bad.reason}", path=path, line=bad.line)
    if stray_quote is not None:
        return DataError(
            f"cannot be parsed as {layout.kind}: a quote character ({layout.quote}) inside an "
            'unquoted field; quote the whole field and double the inner quotes ("")',
            path=path,
            line=stray_quote,
        )
    first = message.strip().splitlines()[0] if message.strip() else type(exc).__name__
    return DataError(f"cannot be parsed as {layout.kind}: {first}", path=path)


def _reference(layout: TextLayout) -> str:
    return "header" if layout.header else "expected layout"


# --------------------------------------------------------------------------- JSON lines
def read_jsonl(path: Path) -> Table:
    """Read a JSON-lines file: one object per line, blank lines ignored."""
    head = check_file(path)
    check_text(path, head)
    try:
        if head.startswith(_UTF8_BOM):  # Polars' JSON reader refuses a byte-order mark
            frame = pl.read_ndjson(
                io.BytesIO(path.read_bytes()[len(_UTF8_BOM) :]), infer_schema_length=None
            )
        else:
            with path.open("rb") as f:  # a handle, so "[" or "*" in the name is not a glob
                frame = pl.read_ndjson(f, infer_schema_length=None)
    except pl.exceptions.PolarsError as exc:
        raise _explain_jsonl_error(path, exc) from None
    except (
        ValueError,
        OSError,
    ) as exc:  # defensive: anything the reader raises is the input's fault
        raise _explain_jsonl_error(path, exc) from None
    if frame.height == 0:
        raise DataError("holds no JSON objects", path=path, line=1)
    frame, rows = _drop_blank_rows(frame)
    if frame.height == 0:
        raise DataError("holds only empty JSON objects", path=path, line=1)
    return Table(path, frame, "jsonl", tuple(frame.columns), None, rows)


def _jsonl_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if number == 1:
                raw = raw.removeprefix(_UTF8_BOM)
            if raw.strip():
                yield number, raw


def _jsonl_line(path: Path, row: int) -> int | None:
    for index, (number, _) in enumerate(_jsonl_lines(path)):
        if index == row:
            return number
    return None


def _explain_jsonl_error(path: Path, exc: Exception) -> DataError:
    for number, raw in _jsonl_lines(path):
        try:
            value = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as bad:
            return DataError(
                f"is not UTF-8 text (byte 0x{raw[bad.start]:02x} cannot be decoded)",
                path=path,
                line=number,
            )
        except json.JSONDecodeError as bad:
            return DataError(
                f"invalid JSON: {bad.msg} (column {bad.colno})", path=path, line=number
            )
        if not isinstance(value, dict):
            return DataError(
                f"each line must be a JSON object, found {type(value).__name__}",
                path=path,
                line=number,
            )
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return DataError(f"cannot be read as JSON lines: {first}", path=path)


# --------------------------------------------------------------------------- Parquet
def read_parquet(
    path: Path, wanted: Callable[[Sequence[str]], Sequence[str | None]] | None = None
) -> Table:
    """Read a Parquet file, typed as stored; ``wanted`` picks columns from the schema's names."""
    check_file(path)
    with path.open("rb") as f:
        start = f.read(4)
        f.seek(-4, io.SEEK_END)
        end = f.read(4)
    if start != b"PAR1":
        raise DataError("is not a Parquet file (it does not start with 'PAR1')", path=path)
    if end != b"PAR1":
        raise DataError(
            "is not a complete Parquet file (it does not end with 'PAR1'): truncated or corrupt",
            path=path,
        )
    try:
        with path.open("rb") as f:  # a handle, so "[" or "*" in the name is not a glob
            found = tuple(pl.read_parquet_schema(f))
        columns = None
        if wanted is not None:
            columns = [c for c in dict.fromkeys(wanted(found)) if c is not None and c in found]
        frame = pl.read_parquet(path, columns=columns, glob=False)
    except (pl.exceptions.PolarsError, pl.exceptions.PanicException, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"is not a readable Parquet file (truncated or corrupt): {first}", path=path
        ) from None
    if frame.height == 0:
        raise DataError("holds no rows", path=path)
    return Table(path, frame, "parquet", found)
