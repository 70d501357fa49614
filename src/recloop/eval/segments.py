"""Metric breakdowns by user segment (gender, age band, activity) and by item band (head/tail).

A breakdown is ``{segment: {value: {metric: mean, "users": count}}}``. A segment whose source
is missing (no ``Users``, no ``age`` attribute, no train data) is left out, never an error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from recloop.data.types import Interactions, Users
from recloop.eval.metrics import (
    METRICS,
    RankingMetrics,
    check_recommendations,
    first_occurrences,
    hit_matrix,
    metric_name,
    metrics_from_hits,
)

SegmentTable = dict[str, dict[str, dict[str, float]]]
"""``{segment_name: {value: {metric: mean, "users": count}}}``."""

AGE_BANDS: tuple[str, ...] = ("<18", "18-24", "25-34", "35-44", "45-55", "56+")
ACTIVITY_LEVELS: tuple[str, ...] = ("low", "mid", "high")
ITEM_BANDS: tuple[str, ...] = ("head", "tail")
_AGE_UPPER = (18.0, 25.0, 35.0, 45.0, 56.0)  # exclusive upper bounds of the first five bands


def age_band(age: object) -> str | None:
    """Band of an age: <18, 18-24, 25-34, 35-44, 45-55 (45 ≤ age < 56) or 56+.

    Band labels pass through unchanged; a missing or non-numeric age gives ``None``.
    """
    if age is None:
        return None
    if isinstance(age, str) and age in AGE_BANDS:
        return age
    try:
        value = float(age)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if math.isnan(value):
        return None
    for upper, band in zip(_AGE_UPPER, AGE_BANDS, strict=False):
        if value < upper:
            return band
    return AGE_BANDS[-1]


def activity_terciles(counts: np.ndarray) -> np.ndarray:
    """Label each user low / mid / high by train size, with cut points from these users.

    With the counts sorted ascending (n users), ``c1`` is the ⌈n/3⌉-th and ``c2`` the ⌈2n/3⌉-th
    value; low is ``count ≤ c1``, mid ``c1 < count ≤ c2``, high the rest. Equal counts always
    share a band, so bands can be uneven when many users tie at a cut point.
    """
    counts = np.asarray(counts)
    labels = np.full(len(counts), None, dtype=object)
    if len(counts) == 0:
        return labels
    ordered = np.sort(counts)
    n = len(ordered)
    c1 = ordered[math.ceil(n / 3) - 1]
    c2 = ordered[math.ceil(2 * n / 3) - 1]
    labels[:] = np.where(counts <= c1, "low", np.where(counts <= c2, "mid", "high"))
    return labels


def head_items(train: Interactions, share: float = 0.5) -> np.ndarray:
    """Mask of head items: the most-interacted items covering ``share`` of train interactions.

    Items are ranked by positive train rows (ties to the lower index) and the head is the
    shortest prefix whose rows reach ``share`` of all; the rest, never-seen items included,
    is the tail.
    """
    if not 0 < share < 1:
        raise ValueError("share must be in (0, 1)")
    counts = train.positive().item_counts()
    head = np.zeros(train.n_items, dtype=bool)
    total = counts.sum()
    if total == 0:
        return head
    order = np.lexsort((np.arange(len(counts)), -counts))
    covered = np.cumsum(counts[order])
    head[order[: head_size(covered, share)]] = True
    return head


def head_size(covered: np.ndarray, share: float) -> int:
    """How many of the most popular items (``covered``: their cumulative counts, most
    popular first) it takes to cover ``share`` of all interactions. A float product such as
    0.55 × 100 = 55.000000000000007 must not add an item, hence the tolerance."""
    total = float(covered[-1])
    target = share * total - 1e-9 * max(1.0, total)
    return int(np.searchsorted(covered, target, side="left")) + 1


def _labels_from(values: Sequence[Any], user_index: np.ndarray, band: bool) -> np.ndarray:
    labels = np.full(len(user_index), None, dtype=object)
    for row, user in enumerate(user_index):
        if not 0 <= user < len(values):
            continue
        value = values[int(user)]
        if band:
            labels[row] = age_band(value)
        elif value is not None and not (isinstance(value, float) and math.isnan(value)):
            labels[row] = str(value)
    return labels


def user_segments(
    user_index: np.ndarray,
    *,
    users: Users | None = None,
    train: Interactions | None = None,
) -> dict[str, np.ndarray]:
    """Segment labels (``None`` = unknown) per evaluated user: gender, age band, activity.

    ``user_index`` holds dense user indices (−1 for unseen users). Gender and age come from
    ``users.attributes``; activity terciles need ``train`` and count its positive rows.
    """
    user_index = np.asarray(user_index, dtype=np.int64)
    out: dict[str, np.ndarray] = {}
    if users is not None:
        if "gender" in users.attributes:
            out["gender"] = _labels_from(users.attributes["gender"], user_index, band=False)
        if "age" in users.attributes:
            out["age"] = _labels_from(users.attributes["age"], user_index, band=True)
    if train is not None:
        known = (user_index >= 0) & (user_index < train.n_users)
        labels = np.full(len(user_index), None, dtype=object)
        counts = train.positive().user_counts()
        labels[known] = activity_terciles(counts[user_index[known]])
        out["activity"] = labels
    return out


def _value_order(name: str, values: set[str]) -> list[str]:
    known = {"age": AGE_BANDS, "activity": ACTIVITY_LEVELS}.get(name, ())
    return [v for v in known if v in values] + sorted(values - set(known))


def breakdown(
    per_user: Mapping[str, np.ndarray], segments: Mapping[str, np.ndarray]
) -> SegmentTable:
    """Mean of every per-user metric within each segment value, plus the user count.

    Users labelled ``None`` are left out of that segment; NaN values (undefined per-user
    metrics) are left out of that mean.
    """
    table: SegmentTable = {}
    for name, labels in segments.items():
        labels = np.asarray(labels, dtype=object)
        present = {str(v) for v in labels if v is not None}
        table[name] = {}
        for value in _value_order(name, present):
            mask = labels == value
            row: dict[str, float] = {}
            for metric, values in per_user.items():
                if len(values) != len(labels):
                    raise ValueError(f"{metric} has {len(values)} users, segments {len(labels)}")
                chosen = values[mask]
                chosen = chosen[~np.isnan(chosen)]
                row[metric] = float(chosen.mean()) if len(chosen) else float("nan")
            row["users"] = int(mask.sum())
            table[name][value] = row
    return table


def band_ranking_metrics(
    recommendations: np.ndarray,
    targets_indptr: np.ndarray,
    targets_items: np.ndarray,
    head: np.ndarray,
    ks: Sequence[int] = (10, 20),
    metrics: Sequence[str] = METRICS,
) -> dict[str, RankingMetrics]:
    """Ranking metrics with each user's targets restricted to the head or the tail band.

    The list R stays the full top-K list; T becomes ``T ∩ band``, and users whose restricted T
    is empty are left out of that band (so recall@K of tail targets = |R ∩ T_tail| / |T_tail|).
    """
    recs = check_recommendations(recommendations)
    head = np.asarray(head, dtype=bool)
    indptr = np.asarray(targets_indptr, dtype=np.int64)
    items = np.asarray(targets_items, dtype=np.int64)
    top = max(int(recs.max(initial=-1)), int(items.max(initial=-1)))
    if top >= len(head):
        raise ValueError(f"item {top} is outside the head mask of {len(head)} items")
    hits, _ = hit_matrix(recs, indptr, items)
    rec_head = head[np.maximum(recs, 0)]
    rows = np.repeat(np.arange(len(recs), dtype=np.int64), np.diff(indptr))
    width = top + 1
    keys = np.unique(rows * width + items)  # distinct (row, item) target pairs
    key_rows, key_items = keys // width, keys % width
    out: dict[str, RankingMetrics] = {}
    for band, in_band in (("head", head), ("tail", ~head)):
        n_targets = np.bincount(key_rows[in_band[key_items]], minlength=len(recs))
        band_hits = hits & (rec_head if band == "head" else ~rec_head)
        out[band] = metrics_from_hits(band_hits, n_targets, ks, metrics)
    return out


def exposure_share(recommendations: np.ndarray, head: np.ndarray, k: int) -> dict[str, float]:
    """Share of the shown top-``k`` slots going to head and to tail items (they sum to 1)."""
    recs = check_recommendations(recommendations)[:, :k]
    shown = recs[first_occurrences(recs)]
    if len(shown) == 0:
        return {"head": float("nan"), "tail": float("nan")}
    head_share = float(np.asarray(head, dtype=bool)[shown].mean())
    return {"head": head_share, "tail": 1.0 - head_share}


def item_band_breakdown(
    recommendations: np.ndarray,
    targets_indptr: np.ndarray,
    targets_items: np.ndarray,
    head: np.ndarray,
    ks: Sequence[int] = (10, 20),
    metrics: Sequence[str] = METRICS,
) -> dict[str, dict[str, float]]:
    """Per band: ranking metrics on band targets, ``users``, ``items`` and ``exposure_share@K``."""
    per_band = band_ranking_metrics(
        recommendations, targets_indptr, targets_items, head, ks, metrics
    )
    shares = {k: exposure_share(recommendations, head, k) for k in ks}
    head = np.asarray(head, dtype=bool)
    sizes = {"head": int(head.sum()), "tail": int((~head).sum())}
    table: dict[str, dict[str, float]] = {}
    for band, result in per_band.items():
        row: dict[str, float] = dict(result.means)
        row.update({metric_name("exposure_share", k): shares[k][band] for k in ks})
        row["users"] = len(result)
        row["items"] = sizes[band]
        table[band] = row
    return table
