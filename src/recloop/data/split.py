"""Reproducible train/validation/test splits: ``loo``, ``ratio``, ``temporal``, ``cold_items``.

Held-out parts are cut from *positive* rows; negative rows (dislike, skip) are kept as signals:
under ``ratio`` and ``cold_items`` they stay in train (for cold items they are dropped with the
item), under ``loo`` and ``temporal`` they go to the part whose time window holds them. Targets
are always positive rows only.

What a query holds at evaluation time is fixed here, not by each model (see
:meth:`Split.evaluation_set`):

- ``ratio`` and ``cold_items``: the user's train items, for validation and test alike; testing
  also excludes the validation items.
- ``loo`` and ``temporal``: train items for validation; train + validation items (in time order)
  for test. Exclusions are exactly the query's history.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from recloop.data.filters import Filters, apply_filters
from recloop.data.types import Exclusions, Interactions, Queries, stable_order
from recloop.errors import ConfigError

Protocol = Literal["loo", "ratio", "temporal", "cold_items"]
Part = Literal["valid", "test"]
PROTOCOLS: tuple[str, ...] = ("loo", "ratio", "temporal", "cold_items")


@dataclass(frozen=True, eq=False)
class EvalSet:
    """One evaluation pass: queries, what they may not get, and what they should get.

    Only users with at least one target are included. ``targets_*`` is CSR over the queries.
    """

    queries: Queries
    exclude: Exclusions
    targets_indptr: np.ndarray
    targets_items: np.ndarray

    def __len__(self) -> int:
        return len(self.queries)

    def targets(self, row: int) -> np.ndarray:
        return self.targets_items[self.targets_indptr[row] : self.targets_indptr[row + 1]]

    def take(self, rows: np.ndarray) -> EvalSet:
        rows = np.asarray(rows, dtype=np.int64)
        q = self.queries.take(rows)
        ex = Queries(self.queries.user, self.exclude.indptr, self.exclude.items).take(rows)
        tg = Queries(self.queries.user, self.targets_indptr, self.targets_items).take(rows)
        return EvalSet(
            q,
            Exclusions(ex.history_indptr, ex.history_items),
            tg.history_indptr,
            tg.history_items,
        )


@dataclass(eq=False)
class Split:
    """Train, validation and test interactions plus the rules that made them."""

    protocol: str
    seed: int
    train: Interactions
    valid: Interactions
    test: Interactions
    meta: dict[str, Any] = field(default_factory=dict)
    cold_valid_items: np.ndarray | None = None
    cold_test_items: np.ndarray | None = None

    @property
    def n_users(self) -> int:
        return self.train.n_users

    @property
    def n_items(self) -> int:
        return self.train.n_items

    def evaluation_set(self, part: Part) -> EvalSet:
        """Queries, exclusions and targets for ``part`` under this split's protocol."""
        if part not in ("valid", "test"):
            raise ConfigError(f"part must be 'valid' or 'test', not {part!r}")
        held = self.valid if part == "valid" else self.test
        targets = held.positive()
        t_indptr, t_items = _unique_csr(targets.user, targets.item, self.n_users)
        users = np.flatnonzero(np.diff(t_indptr) > 0).astype(np.int32)

        if part == "test" and self.protocol in ("loo", "temporal"):
            history_source = self.train.concat(self.valid)
        else:
            history_source = self.train
        h_indptr, h_items = history_source.histories()
        all_users = np.arange(self.n_users, dtype=np.int32)
        queries = Queries(all_users, h_indptr, h_items).take(users)
        if part == "test" and self.protocol in ("ratio", "cold_items"):
            v = self.valid.positive()
            v_indptr, v_items = _unique_csr(v.user, v.item, self.n_users)
            valid_rows = Queries(np.arange(self.n_users), v_indptr, v_items).take(users)
            exclude = Exclusions.from_history(queries).union(
                Exclusions(valid_rows.history_indptr, valid_rows.history_items)
            )
        else:
            exclude = Exclusions.from_history(queries)
        tg = Queries(np.arange(self.n_users), t_indptr, t_items).take(users)
        return EvalSet(queries, exclude, tg.history_indptr, tg.history_items)

    def summary(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "seed": self.seed,
            "train_rows": len(self.train),
            "valid_rows": len(self.valid),
            "test_rows": len(self.test),
            **self.meta,
        }


def _unique_csr(user: np.ndarray, item: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR of the distinct (user, item) pairs, items sorted within each row."""
    if len(user) == 0:
        return np.zeros(n_rows + 1, np.int64), np.zeros(0, np.int32)
    key = np.unique(user.astype(np.int64) * (int(item.max()) + 1) + item)
    width = int(item.max()) + 1
    rows, cols = key // width, key % width
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    return indptr, cols.astype(np.int32)


def recbole_split_counts(n: int, ratios: tuple[float, ...] = (0.8, 0.1, 0.1)) -> list[int]:
    """Rows per part for one user, by RecBole 1.2's ratio rule (kept so its figures compare).

    ``cnt[i] = int(ratio_i * n)`` for the held-out parts, train takes the rest; then each
    held-out part whose share is in (0, 1) rows gets one row from train while train keeps
    more than one, test first.
    """
    total = sum(ratios)
    ratios = tuple(r / total for r in ratios)
    cnt = [int(r * n) for r in ratios]
    cnt[0] = n - sum(cnt[1:])
    for i in range(1, len(ratios)):
        if cnt[0] <= 1:
            break
        if 0 < ratios[-i] * n < 1:
            cnt[-i] += 1
            cnt[0] -= 1
    return cnt


def _assemble(
    data: Interactions, part_of_row: np.ndarray, protocol: str, seed: int, meta: dict[str, Any]
) -> Split:
    """Build a Split from a per-row part code (0 train, 1 valid, 2 test, −1 dropped)."""
    return Split(
        protocol=protocol,
        seed=seed,
        train=data.select(part_of_row == 0),
        valid=data.select(part_of_row == 1),
        test=data.select(part_of_row == 2),
        meta=meta,
    )


def loo(data: Interactions, seed: int = 0) -> Split:
    """Chronological leave-one-out: last positive is test, second-to-last validation.

    Users with fewer than 3 positive interactions stay wholly in train. Ties in time keep
    input order (stable sort), so the "last" of tied rows is the last one in the file.
    """
    part = np.zeros(len(data), dtype=np.int8)
    pos_rows = np.flatnonzero(~data.is_negative())
    order = pos_rows[stable_order(data.user[pos_rows], data.timestamp[pos_rows])]
    users = data.user[order]
    counts = np.bincount(users, minlength=data.n_users)
    ends = np.cumsum(counts)
    eligible = counts >= 3
    test_rows = order[ends[eligible] - 1]
    valid_rows = order[ends[eligible] - 2]
    part[valid_rows] = 1
    part[test_rows] = 2
    # negatives follow time: at or after the user's validation / test row, they leave train
    neg = np.flatnonzero(data.is_negative())
    if len(neg):
        v_time = np.full(data.n_users, np.iinfo(np.int64).max)
        t_time = np.full(data.n_users, np.iinfo(np.int64).max)
        v_time[data.user[valid_rows]] = data.timestamp[valid_rows]
        t_time[data.user[test_rows]] = data.timestamp[test_rows]
        nu, nt = data.user[neg], data.timestamp[neg]
        part[neg[nt >= v_time[nu]]] = 1
        part[neg[nt >= t_time[nu]]] = 2
    meta = {
        "query_history": "valid: train items; test: train + valid items",
        "users_wholly_in_train": int(((counts > 0) & ~eligible).sum()),
    }
    return _assemble(data, part, "loo", seed, meta)


def _check_shares(protocol: str, valid_share: float, test_share: float) -> None:
    """Shares must leave something for train: 0 <= valid, 0 < test, valid + test < 1."""
    if not (0 <= valid_share < 1 and 0 < test_share < 1 and valid_share + test_share < 1):
        raise ConfigError(
            f"{protocol} split needs 0 <= valid_share, 0 < test_share, sum < 1 "
            f"(got valid_share={valid_share}, test_share={test_share})"
        )


def ratio(
    data: Interactions, seed: int = 0, valid_share: float = 0.1, test_share: float = 0.1
) -> Split:
    """Per-user random split with RecBole 1.2's rounding (see :func:`recbole_split_counts`)."""
    _check_shares("ratio", valid_share, test_share)
    rng = np.random.default_rng(seed)
    part = np.zeros(len(data), dtype=np.int8)
    pos_rows = np.flatnonzero(~data.is_negative())
    noise = rng.random(len(pos_rows))
    order = pos_rows[np.lexsort((noise, data.user[pos_rows]))]
    users = data.user[order]
    counts = np.bincount(users, minlength=data.n_users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(order)) - starts[users]
    shares = (1.0 - valid_share - test_share, valid_share, test_share)
    n_train = np.zeros(data.n_users, np.int64)
    n_valid = np.zeros(data.n_users, np.int64)
    for n in np.unique(counts[counts > 0]):
        c = recbole_split_counts(int(n), shares)
        n_train[counts == n], n_valid[counts == n] = c[0], c[1]
    r_train, r_valid = n_train[users], n_valid[users]
    part[order] = np.where(rank < r_train, 0, np.where(rank < r_train + r_valid, 1, 2))
    meta = {
        "valid_share": valid_share,
        "test_share": test_share,
        "rounding": "recbole-1.2",
        "query_history": "train items (valid and test); test also excludes valid items",
    }
    return _assemble(data, part, "ratio", seed, meta)


def temporal(
    data: Interactions,
    seed: int = 0,
    valid_share: float = 0.1,
    test_share: float = 0.1,
    valid_start: int | None = None,
    test_start: int | None = None,
) -> Split:
    """Global time cut-offs: rows at or after ``test_start`` are test, ``valid_start`` valid.

    Cut-offs default to the time quantiles leaving ``test_share`` / ``valid_share`` of the
    positive rows after them. Rows with equal timestamps always fall in the same part.
    """
    _check_shares("temporal", valid_share, test_share)
    pos_ts = np.sort(data.timestamp[~data.is_negative()])
    if len(pos_ts) == 0:
        raise ConfigError("temporal split needs at least one positive interaction")
    if test_start is None:
        test_start = int(pos_ts[min(len(pos_ts) - 1, math.floor(len(pos_ts) * (1 - test_share)))])
    if valid_start is None:
        q = math.floor(len(pos_ts) * (1 - test_share - valid_share))
        valid_start = int(pos_ts[min(len(pos_ts) - 1, q)])
    if valid_start > test_start:
        raise ConfigError(f"valid_start ({valid_start}) is after test_start ({test_start})")
    ts = data.timestamp
    part = np.where(ts >= test_start, 2, np.where(ts >= valid_start, 1, 0)).astype(np.int8)
    meta = {
        "valid_start": valid_start,
        "test_start": test_start,
        "query_history": "valid: train items; test: train + valid items",
    }
    return _assemble(data, part, "temporal", seed, meta)


def cold_items(data: Interactions, seed: int = 0, share: float = 0.1) -> Split:
    """A seeded ``share`` of the interacted items loses every interaction from train.

    Half of those items (rounded down) form the validation cold set, the rest the test cold set;
    their interactions are the validation and test parts.
    """
    if not 0 < share < 1:
        raise ConfigError("cold_items share must be in (0, 1)")
    rng = np.random.default_rng(seed)
    present = np.flatnonzero(np.bincount(data.item[~data.is_negative()], minlength=data.n_items))
    n_cold = max(2, round(share * len(present)))
    if n_cold > len(present):
        raise ConfigError("cold_items split needs at least 2 interacted items")
    cold = rng.permutation(present)[:n_cold]
    valid_cold = np.sort(cold[: n_cold // 2]).astype(np.int32)
    test_cold = np.sort(cold[n_cold // 2 :]).astype(np.int32)
    part = np.zeros(len(data), dtype=np.int8)
    part[np.isin(data.item, valid_cold)] = 1
    part[np.isin(data.item, test_cold)] = 2
    part[(part > 0) & data.is_negative()] = -1  # negatives on cold items are no targets
    meta = {
        "share": share,
        "n_cold_valid": len(valid_cold),
        "n_cold_test": len(test_cold),
        "query_history": "train items (valid and test); test also excludes valid items",
    }
    split = _assemble(data, part, "cold_items", seed, meta)
    split.cold_valid_items = valid_cold
    split.cold_test_items = test_cold
    return split


def make_split(
    data: Interactions,
    protocol: str,
    seed: int = 0,
    filters: Filters | None = None,
    **params: Any,
) -> Split:
    """Filter then split ``data`` under ``protocol``; the filters are recorded in the metadata."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r} (expected one of {', '.join(PROTOCOLS)})")
    record: dict[str, Any] = {}
    if filters is not None:
        data, record = apply_filters(data, filters)
    splitter = {"loo": loo, "ratio": ratio, "temporal": temporal, "cold_items": cold_items}
    split = splitter[protocol](data, seed, **params)
    split.meta = {**record, **split.meta, "params": params}
    return split
