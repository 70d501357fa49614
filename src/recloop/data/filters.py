"""Filters that run before splitting: rating threshold, de-duplication and k-core.

Each returns new :class:`Interactions` over the same id maps plus a small record of what it
did, which :func:`apply_filters` collects into the split's metadata.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from recloop.data.types import Interactions, stable_order

DedupPolicy = Literal["keep_all", "keep_last", "keep_first"]


class Filters(BaseModel):
    """The filters applied before splitting, in this order: threshold, dedup, k-core."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_rating: float | None = Field(
        default=None,
        description="keep rows with value >= this as implicit positives (None keeps every row)",
    )
    dedup: DedupPolicy = Field(
        default="keep_all", description="what to do with repeated (user, item) pairs"
    )
    user_core: int = Field(default=0, ge=0, description="min interactions per user (k-core)")
    item_core: int = Field(default=0, ge=0, description="min interactions per item (k-core)")


def rating_threshold(data: Interactions, min_rating: float) -> Interactions:
    """Keep rows whose value is at least ``min_rating``."""
    return data.select(data.value >= min_rating)


def deduplicate(data: Interactions, policy: DedupPolicy) -> Interactions:
    """Keep all rows, or one per (user, item): the last or the first in time (stable)."""
    if policy == "keep_all" or len(data) == 0:
        return data
    order = stable_order(data.user, data.timestamp)
    key = data.user[order].astype(np.int64) * max(data.n_items, 1) + data.item[order]
    # order is time-sorted within each user; a stable sort by key groups each pair in time order
    by_key = np.argsort(key, kind="stable")
    sorted_key = key[by_key]
    if policy == "keep_last":
        last = np.ones(len(sorted_key), dtype=bool)
        last[:-1] = sorted_key[1:] != sorted_key[:-1]
        chosen = order[by_key[last]]
    else:
        first = np.ones(len(sorted_key), dtype=bool)
        first[1:] = sorted_key[1:] != sorted_key[:-1]
        chosen = order[by_key[first]]
    return data.select(np.sort(chosen))


def k_core(data: Interactions, user_core: int, item_core: int) -> Interactions:
    """Iteratively drop users and items with fewer than k interactions until stable."""
    if user_core <= 1 and item_core <= 1:
        return data
    keep = np.ones(len(data), dtype=bool)
    while True:
        u_counts = np.bincount(data.user[keep], minlength=data.n_users)
        i_counts = np.bincount(data.item[keep], minlength=data.n_items)
        ok = keep & (u_counts[data.user] >= user_core) & (i_counts[data.item] >= item_core)
        if ok.sum() == keep.sum():
            break
        keep = ok
    return data.select(keep)


def apply_filters(data: Interactions, filters: Filters) -> tuple[Interactions, dict[str, Any]]:
    """Apply ``filters`` in order; returns the result and a record for the split metadata."""
    record: dict[str, Any] = {"filters": filters.model_dump(), "rows_in": len(data)}
    if filters.min_rating is not None:
        data = rating_threshold(data, filters.min_rating)
        record["rows_after_threshold"] = len(data)
    data = deduplicate(data, filters.dedup)
    record["rows_after_dedup"] = len(data)
    data = k_core(data, filters.user_core, filters.item_core)
    record["rows_out"] = len(data)
    record["users_out"] = int((data.user_counts() > 0).sum())
    record["items_out"] = int((data.item_counts() > 0).sum())
    return data, record
