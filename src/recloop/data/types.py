"""Core data types: ids, interactions, catalogue, users, queries and exclusions.

Everything is columnar NumPy. Dense indices are ``int32``; timestamps are ``int64`` seconds.
Orientation is always users × items.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import numpy as np
import scipy.sparse as sp

from recloop.errors import DataError, UnknownIdError

IntArray = np.ndarray  # documented dtype aliases; NumPy's typing of dtypes is too loose to enforce
FloatArray = np.ndarray


class EventKind(IntEnum):
    """What an interaction was. Negative kinds are kept in the data, never counted as positives."""

    VIEW = 0
    CLICK = 1
    RATING = 2
    PURCHASE = 3
    LIKE = 4
    DISLIKE = 5
    SKIP = 6

    @property
    def is_negative(self) -> bool:
        return self in NEGATIVE_EVENTS

    @classmethod
    def parse(cls, value: str | int) -> EventKind:
        """Parse a name (``"click"``) or a code (``1``); raises ``ValueError`` otherwise."""
        if isinstance(value, str):
            text = value.strip()
            if text.lstrip("-").isdigit():
                return cls(int(text))
            try:
                return cls[text.upper()]
            except KeyError:
                names = ", ".join(k.name.lower() for k in cls)
                msg = f"unknown event kind {value!r} (expected one of {names})"
                raise ValueError(msg) from None
        return cls(int(value))


NEGATIVE_EVENTS = frozenset({EventKind.DISLIKE, EventKind.SKIP})
_NEGATIVE_CODES = np.array(sorted(int(k) for k in NEGATIVE_EVENTS), dtype=np.int8)


class IdMap:
    """External string id ↔ dense ``int32`` index. Append-only, so indices never move.

    Unknown ids are an error unless the caller asks for the explicit "new" path
    (``index(ids, unknown="new")`` maps them to −1).
    """

    __slots__ = ("_ids", "_index")

    def __init__(self, ids: Iterable[object] = ()) -> None:
        self._ids: list[str] = [str(i) for i in ids]
        self._index: dict[str, int] = dict(zip(self._ids, range(len(self._ids)), strict=True))
        if len(self._index) != len(self._ids):
            dup = next(k for k, n in Counter(self._ids).items() if n > 1)
            raise DataError(f"duplicate id {dup!r}")

    def add(self, ids: Iterable[object], *, allow_existing: bool = True) -> np.ndarray:
        """Assign indices to new ids (existing ones keep theirs); returns the indices of ``ids``.

        With ``allow_existing=False`` an id already in the map, or given twice, is an error and
        the map is left as it was.
        """
        keys = [str(raw) for raw in ids]
        if not allow_existing:
            seen: set[str] = set()
            for key in keys:
                if key in self._index or key in seen:
                    raise DataError(f"duplicate id {key!r}")
                seen.add(key)
        out: list[int] = []
        for key in keys:
            idx = self._index.get(key)
            if idx is None:
                idx = len(self._ids)
                self._ids.append(key)
                self._index[key] = idx
            out.append(idx)
        return np.asarray(out, dtype=np.int32)

    def index(self, ids: Iterable[object], *, unknown: str = "error") -> np.ndarray:
        """Dense indices of ``ids``. ``unknown="error"`` raises, ``unknown="new"`` gives −1."""
        if unknown not in ("error", "new"):
            raise ValueError("unknown must be 'error' or 'new'")
        if not isinstance(ids, Sequence | np.ndarray):  # a generator can be read only once
            ids = list(ids)
        get = self._index.get
        out = np.fromiter((get(str(i), -1) for i in ids), dtype=np.int32, count=len(ids))
        if unknown == "error" and (out < 0).any():
            missing = str(ids[int(np.flatnonzero(out < 0)[0])])
            raise UnknownIdError(f"unknown id {missing!r}")
        return out

    def id_of(self, index: int) -> str:
        if not 0 <= index < len(self._ids):
            raise UnknownIdError(f"no id at index {index}")
        return self._ids[index]

    def ids(self, indices: Iterable[int] | None = None) -> list[str]:
        """External ids of ``indices`` (all ids when omitted)."""
        if indices is None:
            return list(self._ids)
        return [self._ids[int(i)] for i in indices]

    def copy(self) -> IdMap:
        other = IdMap()
        other._ids = list(self._ids)
        other._index = dict(self._index)
        return other

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, key: object) -> bool:
        return str(key) in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdMap) and self._ids == other._ids

    def __hash__(self) -> int:  # pragma: no cover - mutable, identity hash is fine
        return id(self)

    def __repr__(self) -> str:
        head = ", ".join(repr(i) for i in self._ids[:3])
        more = ", ..." if len(self._ids) > 3 else ""
        return f"IdMap([{head}{more}], n={len(self._ids)})"


def stable_order(user: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
    """Permutation sorting by (user, timestamp); ties keep input order (stable sort)."""
    by_time = np.argsort(timestamp, kind="stable")
    return by_time[np.argsort(user[by_time], kind="stable")]


@dataclass(frozen=True, eq=False)
class Interactions:
    """Columnar interaction log over shared user and item id maps.

    ``value`` is the rating or weight; ``event`` an :class:`EventKind` code. Negative events
    (dislike, skip) are stored like any other row and excluded by :meth:`positive`.
    """

    user: np.ndarray
    item: np.ndarray
    timestamp: np.ndarray
    value: np.ndarray
    event: np.ndarray
    users: IdMap
    items: IdMap

    def __post_init__(self) -> None:
        n = len(self.user)
        for name, dtype in (
            ("user", np.int32),
            ("item", np.int32),
            ("timestamp", np.int64),
            ("value", np.float32),
            ("event", np.int8),
        ):
            arr = np.asarray(getattr(self, name))
            if arr.ndim != 1 or len(arr) != n:
                raise ValueError(f"Interactions.{name} must be 1-D of length {n}")
            object.__setattr__(self, name, arr.astype(dtype, copy=False))
        if n:
            if self.user.min() < 0 or self.user.max() >= len(self.users):
                raise ValueError("Interactions.user has indices outside the user IdMap")
            if self.item.min() < 0 or self.item.max() >= len(self.items):
                raise ValueError("Interactions.item has indices outside the item IdMap")

    @classmethod
    def from_arrays(
        cls,
        user: Sequence[int] | np.ndarray,
        item: Sequence[int] | np.ndarray,
        timestamp: Sequence[int] | np.ndarray | None = None,
        value: Sequence[float] | np.ndarray | None = None,
        event: Sequence[int] | np.ndarray | None = None,
        *,
        users: IdMap | None = None,
        items: IdMap | None = None,
    ) -> Interactions:
        """Build from dense indices; id maps default to ``"0".."n-1"`` sized by the max index."""
        u = np.asarray(user, dtype=np.int32)
        i = np.asarray(item, dtype=np.int32)
        n = len(u)
        ts = np.arange(n, dtype=np.int64) if timestamp is None else np.asarray(timestamp)
        val = np.ones(n, dtype=np.float32) if value is None else np.asarray(value)
        ev = (
            np.full(n, int(EventKind.RATING if value is not None else EventKind.CLICK), np.int8)
            if event is None
            else np.asarray(event)
        )
        if users is None:
            users = IdMap(str(k) for k in range(int(u.max()) + 1 if n else 0))
        if items is None:
            items = IdMap(str(k) for k in range(int(i.max()) + 1 if n else 0))
        return cls(u, i, ts, val, ev, users, items)

    # ------------------------------------------------------------------ basic views
    def __len__(self) -> int:
        return len(self.user)

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    def select(self, mask_or_index: np.ndarray) -> Interactions:
        """Rows chosen by a boolean mask or an index array, over the same id maps."""
        sel = np.asarray(mask_or_index)
        return Interactions(
            self.user[sel],
            self.item[sel],
            self.timestamp[sel],
            self.value[sel],
            self.event[sel],
            self.users,
            self.items,
        )

    def sorted(self) -> Interactions:
        """Rows sorted by (user, timestamp), ties in input order."""
        return self.select(stable_order(self.user, self.timestamp))

    def is_negative(self) -> np.ndarray:
        return np.isin(self.event, _NEGATIVE_CODES)

    def positive(self) -> Interactions:
        """Only positive rows (every event kind except dislike and skip)."""
        return self.select(~self.is_negative())

    def concat(self, other: Interactions) -> Interactions:
        if other.users is not self.users and other.users != self.users:
            raise ValueError("cannot concatenate Interactions over different user IdMaps")
        if other.items is not self.items and other.items != self.items:
            raise ValueError("cannot concatenate Interactions over different item IdMaps")
        return Interactions(
            np.concatenate([self.user, other.user]),
            np.concatenate([self.item, other.item]),
            np.concatenate([self.timestamp, other.timestamp]),
            np.concatenate([self.value, other.value]),
            np.concatenate([self.event, other.event]),
            self.users,
            self.items,
        )

    def to_csr(self, *, binary: bool = True, positive_only: bool = True) -> sp.csr_matrix:
        """Users × items matrix. Binary by default (repeats count once); negatives left out."""
        data = self.positive() if positive_only else self
        vals = np.ones(len(data), dtype=np.float32) if binary else data.value.astype(np.float32)
        mat = sp.csr_matrix(
            (vals, (data.user, data.item)), shape=(self.n_users, self.n_items), dtype=np.float32
        )
        mat.sum_duplicates()
        if binary:
            mat.data[:] = 1.0
        mat.sort_indices()
        return mat

    def histories(self, *, positive_only: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Per-user item sequences in time order as CSR ``(indptr, items)`` over all users.

        The sort is stable, so items with equal timestamps keep their input order.
        """
        data = self.positive() if positive_only else self
        order = stable_order(data.user, data.timestamp)
        counts = np.bincount(data.user, minlength=self.n_users)
        indptr = np.zeros(self.n_users + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return indptr, data.item[order].astype(np.int32)

    def user_counts(self) -> np.ndarray:
        return np.bincount(self.user, minlength=self.n_users)

    def item_counts(self) -> np.ndarray:
        return np.bincount(self.item, minlength=self.n_items)

    def __repr__(self) -> str:
        return (
            f"Interactions(n={len(self)}, users={self.n_users}, items={self.n_items}, "
            f"negatives={int(self.is_negative().sum())})"
        )


@dataclass(eq=False)
class Catalog:
    """Items with a title, the text embedders read, and free-form attributes.

    ``attributes`` maps a name to one value per item (a list for list fields such as genres).
    """

    items: IdMap
    title: list[str]
    text: list[str]
    attributes: dict[str, list[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.items)
        if len(self.title) != n or len(self.text) != n:
            raise ValueError(f"Catalog needs one title and one text per item ({n})")
        for name, values in self.attributes.items():
            if len(values) != n:
                raise ValueError(f"Catalog attribute {name!r} has {len(values)} values, not {n}")

    def __len__(self) -> int:
        return len(self.items)

    def attribute(self, name: str) -> list[Any]:
        try:
            return self.attributes[name]
        except KeyError:
            known = ", ".join(sorted(self.attributes)) or "none"
            raise KeyError(f"catalog has no attribute {name!r} (known: {known})") from None


@dataclass(eq=False)
class Users:
    """Per-user attributes (for segments, fairness audits and models that read them)."""

    users: IdMap
    attributes: dict[str, list[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.users)
        for name, values in self.attributes.items():
            if len(values) != n:
                raise ValueError(f"Users attribute {name!r} has {len(values)} values, not {n}")

    def __len__(self) -> int:
        return len(self.users)

    def attribute(self, name: str) -> list[Any]:
        try:
            return self.attributes[name]
        except KeyError:
            known = ", ".join(sorted(self.attributes)) or "none"
            raise KeyError(f"users have no attribute {name!r} (known: {known})") from None


@dataclass(eq=False)
class Dataset:
    """Interactions with the catalogue and users they refer to, over shared id maps."""

    name: str
    interactions: Interactions
    catalog: Catalog | None = None
    users: Users | None = None

    def __post_init__(self) -> None:
        if self.catalog is not None and self.catalog.items is not self.interactions.items:
            raise ValueError("Dataset.catalog must share the interactions' item IdMap")
        if self.users is not None and self.users.users is not self.interactions.users:
            raise ValueError("Dataset.users must share the interactions' user IdMap")

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, {self.interactions!r}, "
            f"catalog={'yes' if self.catalog else 'no'}, users={'yes' if self.users else 'no'})"
        )


_INT32_MAX = int(np.iinfo(np.int32).max)


def _index_array(values: Any, what: str, lowest: int) -> np.ndarray:
    """``values`` as int32 indices, refusing what the cast would silently change: fractions,
    values below ``lowest`` (−1 for users, 0 for items) and values beyond int32 (which would
    wrap around to other items)."""
    array = np.asarray(values)
    if array.size == 0:
        return array.astype(np.int32).reshape(array.shape)
    if array.dtype.kind not in "iuf" or array.dtype.kind == "b":
        raise DataError(f"{what} must be integer indices, not {array.dtype}")
    if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
        raise DataError(f"{what} must be whole numbers")
    low, high = array.min(), array.max()
    if low < lowest or high > _INT32_MAX:
        bad = low if low < lowest else high
        raise DataError(f"{what}: index {bad} is out of range ({lowest} to {_INT32_MAX})")
    return array.astype(np.int32, copy=False)


def _csr_from_lists(lists: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """``(indptr, values)`` of a list of lists; the values as given, checked by the caller."""
    lengths = np.array([len(values) for values in lists], dtype=np.int64)
    indptr = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    if not len(lists):
        return indptr, np.zeros(0, np.int32)
    return indptr, np.concatenate([np.asarray(values).ravel() for values in lists])


def _check_csr(indptr: np.ndarray, indices: np.ndarray, n_rows: int, what: str) -> None:
    if indptr.ndim != 1 or len(indptr) != n_rows + 1:
        raise ValueError(f"{what}: indptr must have length n_rows + 1 = {n_rows + 1}")
    if indptr[0] != 0 or indptr[-1] != len(indices) or (np.diff(indptr) < 0).any():
        raise ValueError(f"{what}: indptr is not a valid CSR offset array")


@dataclass(frozen=True, eq=False)
class Queries:
    """The input to recommendation: users plus their time-ordered histories as CSR.

    ``user`` holds dense user indices, −1 for a user the model has never seen.
    ``history_indptr``/``history_items`` are the CSR of item sequences (oldest first).
    """

    user: np.ndarray
    history_indptr: np.ndarray
    history_items: np.ndarray
    user_attributes: Mapping[str, Sequence[Any]] | None = None

    def __post_init__(self) -> None:
        # -1 is "a user the model has never seen"; an item is always known (0 or more)
        object.__setattr__(self, "user", _index_array(self.user, "Queries: user", -1))
        object.__setattr__(self, "history_indptr", np.asarray(self.history_indptr, np.int64))
        items = _index_array(self.history_items, "Queries: history item", 0)
        object.__setattr__(self, "history_items", items)
        _check_csr(self.history_indptr, self.history_items, len(self.user), "Queries")

    @classmethod
    def from_lists(cls, users: Sequence[int], histories: Sequence[Sequence[int]]) -> Queries:
        if len(users) != len(histories):
            raise ValueError("one history per user is required")
        return cls(np.asarray(users), *_csr_from_lists(histories))

    def __len__(self) -> int:
        return len(self.user)

    def history(self, row: int) -> np.ndarray:
        return self.history_items[self.history_indptr[row] : self.history_indptr[row + 1]]

    def history_lengths(self) -> np.ndarray:
        return np.diff(self.history_indptr)

    def history_csr(self, n_items: int) -> sp.csr_matrix:
        """Binary queries × items matrix of the histories."""
        data = np.ones(len(self.history_items), dtype=np.float32)
        # copies: scipy shares the index arrays and sum_duplicates() would rewrite them
        mat = sp.csr_matrix(
            (data, self.history_items.copy(), self.history_indptr.copy()),
            shape=(len(self), n_items),
        )
        mat.sum_duplicates()
        mat.data[:] = 1.0
        return mat

    def take(self, rows: np.ndarray) -> Queries:
        """A subset of queries (in the given order)."""
        rows = np.asarray(rows, dtype=np.int64)
        starts, ends = self.history_indptr[rows], self.history_indptr[rows + 1]
        lengths = ends - starts
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        if len(rows):
            idx = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1])
            items = self.history_items[idx]
        else:
            items = np.zeros(0, np.int32)
        attrs = None
        if self.user_attributes is not None:
            attrs = {k: [v[int(r)] for r in rows] for k, v in self.user_attributes.items()}
        return Queries(self.user[rows], indptr, items, attrs)


@dataclass(frozen=True, eq=False)
class Exclusions:
    """Per-query item sets that may not be recommended, as CSR ``(indptr, items)``."""

    indptr: np.ndarray
    items: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "indptr", np.asarray(self.indptr, dtype=np.int64))
        object.__setattr__(self, "items", _index_array(self.items, "Exclusions: item", 0))
        _check_csr(self.indptr, self.items, len(self.indptr) - 1, "Exclusions")

    @classmethod
    def from_history(cls, queries: Queries) -> Exclusions:
        """The default: every query excludes its own history."""
        return cls(queries.history_indptr, queries.history_items)

    @classmethod
    def from_lists(cls, lists: Sequence[Sequence[int]]) -> Exclusions:
        return cls(*_csr_from_lists(lists))

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def union(self, other: Exclusions) -> Exclusions:
        """Row-wise union of two exclusion sets of the same length."""
        if len(self) != len(other):
            raise ValueError("exclusion sets must have the same number of rows")
        a = self.to_csr(0)
        b = other.to_csr(0)
        n_items = max(a.shape[1], b.shape[1])
        a.resize((len(self), n_items))
        b.resize((len(self), n_items))
        merged = (a + b).tocsr()
        merged.sort_indices()
        return Exclusions(merged.indptr, merged.indices)

    def to_csr(self, n_items: int) -> sp.csr_matrix:
        """Binary queries × items matrix (width grows to fit the largest item index)."""
        width = max(n_items, int(self.items.max()) + 1 if len(self.items) else 0)
        data = np.ones(len(self.items), dtype=np.float32)
        # copies: scipy shares the index arrays and sum_duplicates() would rewrite them
        mat = sp.csr_matrix((data, self.items.copy(), self.indptr.copy()), shape=(len(self), width))
        mat.sum_duplicates()
        mat.data[:] = 1.0
        return mat
