"""Full-ranking accuracy metrics with binary relevance: Recall, Precision, Hit, NDCG and MRR @K.

One boolean hit matrix (users × list positions) is built per evaluation and every metric at every
cut-off is read off its cumulative sums, so the metrics cannot disagree with each other.
Definitions follow docs/evaluation.md exactly; users with an empty target set are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

METRICS: tuple[str, ...] = ("recall", "precision", "hit", "ndcg", "mrr")
"""Ranking metrics this module computes, in report order."""


@dataclass(frozen=True, eq=False)
class RankingMetrics:
    """Per-user ranking metrics for the rows whose target set is non-empty.

    ``rows`` indexes the evaluated rows of the input; every array in ``per_user`` is aligned
    with it, so paired comparisons and segment breakdowns can reuse them.
    """

    rows: np.ndarray
    per_user: dict[str, np.ndarray]

    @property
    def means(self) -> dict[str, float]:
        """Each metric averaged over the evaluated users (NaN when there are none)."""
        return {
            name: float(values.mean()) if len(values) else float("nan")
            for name, values in self.per_user.items()
        }

    def __len__(self) -> int:
        return len(self.rows)


def metric_name(metric: str, k: int) -> str:
    """The canonical key of a metric at a cut-off, e.g. ``ndcg@10``."""
    return f"{metric}@{k}"


def check_recommendations(recommendations: np.ndarray) -> np.ndarray:
    """Validate an ``(n, K)`` integer list matrix (−1 is padding) and return it as int64."""
    recs = np.asarray(recommendations)
    if recs.ndim != 2:
        raise ValueError(f"recommendations must be a 2-D (n, K) array, not shape {recs.shape}")
    if recs.size and not np.issubdtype(recs.dtype, np.integer):
        raise ValueError(f"recommendations must hold integer item indices, not {recs.dtype}")
    recs = recs.astype(np.int64, copy=False)
    if recs.size and recs.min() < -1:
        raise ValueError("recommendations may only hold item indices >= 0 or -1 (padding)")
    return recs


def _check_targets(
    targets_indptr: np.ndarray, targets_items: np.ndarray, n_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.asarray(targets_indptr, dtype=np.int64)
    items = np.asarray(targets_items, dtype=np.int64)
    if indptr.ndim != 1 or len(indptr) != n_rows + 1:
        raise ValueError(f"targets_indptr must have length n + 1 = {n_rows + 1}")
    if indptr[0] != 0 or indptr[-1] != len(items) or (np.diff(indptr) < 0).any():
        raise ValueError("targets_indptr is not a valid CSR offset array")
    if len(items) and items.min() < 0:
        raise ValueError("target items must be item indices >= 0")
    return indptr, items


def first_occurrences(recommendations: np.ndarray) -> np.ndarray:
    """Mask of list slots holding a real item seen for the first time in its row.

    A list is a set in the definitions (|R ∩ T|), so a repeated item can never count twice.
    """
    recs = check_recommendations(recommendations)
    valid = recs >= 0
    if recs.shape[1] < 2:
        return valid
    order = np.argsort(recs, axis=1, kind="stable")
    ranked = np.take_along_axis(recs, order, axis=1)
    repeat_sorted = np.zeros(recs.shape, dtype=bool)
    repeat_sorted[:, 1:] = ranked[:, 1:] == ranked[:, :-1]
    repeat = np.zeros(recs.shape, dtype=bool)
    np.put_along_axis(repeat, order, repeat_sorted, axis=1)
    return valid & ~repeat


def hit_matrix(
    recommendations: np.ndarray, targets_indptr: np.ndarray, targets_items: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean ``(n, K)`` matrix of list slots holding a target, and ``|T|`` per row.

    Targets are CSR over the same rows. Padding (−1) and repeated items are never hits;
    repeated targets count once. Matching uses sorted ``row * width + item`` keys.
    """
    recs = check_recommendations(recommendations)
    n, _ = recs.shape
    indptr, items = _check_targets(targets_indptr, targets_items, n)
    width = int(max(recs.max(initial=-1), items.max(initial=-1))) + 1
    target_rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    keys = np.unique(target_rows * width + items)
    n_targets = np.bincount(keys // width, minlength=n) if width else np.zeros(n, np.int64)
    slots = first_occurrences(recs)
    rec_keys = np.arange(n, dtype=np.int64)[:, None] * width + recs
    if len(keys):
        found = keys[np.minimum(np.searchsorted(keys, rec_keys), len(keys) - 1)] == rec_keys
    else:
        found = np.zeros(recs.shape, dtype=bool)
    return slots & found, n_targets.astype(np.int64)


def ideal_dcg(max_k: int) -> np.ndarray:
    """``idcg[m] = Σ_{i≤m} 1/log2(i+1)`` for m = 0..max_k (the NDCG normaliser at |T| = m)."""
    table = np.zeros(max_k + 1, dtype=np.float64)
    np.cumsum(1.0 / np.log2(np.arange(2, max_k + 2)), out=table[1:])
    return table


def metrics_from_hits(
    hits: np.ndarray,
    n_targets: np.ndarray,
    ks: Sequence[int] = (10, 20),
    metrics: Sequence[str] = METRICS,
) -> RankingMetrics:
    """Every requested metric at every cut-off from a hit matrix and the target-set sizes.

    Rows with ``n_targets == 0`` are dropped; the cumulative sums are taken once for all ks.
    """
    hits = np.asarray(hits, dtype=bool)
    if hits.ndim != 2:
        raise ValueError("hits must be a 2-D (n, K) boolean matrix")
    n_targets = np.asarray(n_targets, dtype=np.int64)
    if len(n_targets) != hits.shape[0]:
        raise ValueError("n_targets needs one entry per row of hits")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r} (expected one of {', '.join(METRICS)})")
    ks = _check_ks(ks, hits.shape[1])
    rows = np.flatnonzero(n_targets > 0)
    hits = hits[rows]
    size = n_targets[rows].astype(np.float64)
    max_k = hits.shape[1]
    per_user: dict[str, np.ndarray] = {}
    cum_hits = np.cumsum(hits, axis=1, dtype=np.int64)
    if "ndcg" in metrics:
        discount = 1.0 / np.log2(np.arange(2, max_k + 2))
        cum_dcg = np.cumsum(hits * discount, axis=1)
        idcg = ideal_dcg(max_k)
    if "mrr" in metrics:
        any_hit = hits.any(axis=1)
        first = np.where(any_hit, hits.argmax(axis=1), max_k)  # 0-based rank of the first hit
    for metric in metrics:
        for k in ks:
            n_hit = cum_hits[:, k - 1].astype(np.float64)
            if metric == "recall":
                value = n_hit / size
            elif metric == "precision":
                value = n_hit / k
            elif metric == "hit":
                value = (n_hit > 0).astype(np.float64)
            elif metric == "ndcg":
                value = cum_dcg[:, k - 1] / idcg[np.minimum(n_targets[rows], k)]
            else:  # mrr
                value = np.where(first < k, 1.0 / (first + 1.0), 0.0)
            per_user[metric_name(metric, k)] = value
    return RankingMetrics(rows=rows, per_user=per_user)


def ranking_metrics(
    recommendations: np.ndarray,
    targets_indptr: np.ndarray,
    targets_items: np.ndarray,
    ks: Sequence[int] = (10, 20),
    metrics: Sequence[str] = METRICS,
) -> RankingMetrics:
    """Recall, Precision, Hit, NDCG and MRR at each K for top-K lists against CSR targets.

    ``recommendations`` is ``(n, K_max)`` item indices, best first, −1 for padding; every k in
    ``ks`` must be ≤ K_max. Users with no targets are excluded from every metric.
    """
    hits, n_targets = hit_matrix(recommendations, targets_indptr, targets_items)
    return metrics_from_hits(hits, n_targets, ks, metrics)


def _check_ks(ks: Sequence[int], max_k: int) -> list[int]:
    out = [int(k) for k in ks]
    if not out:
        raise ValueError("ks must name at least one cut-off")
    for k in out:
        if k < 1:
            raise ValueError(f"cut-offs must be positive, not {k}")
        if k > max_k:
            raise ValueError(f"cut-off {k} exceeds the list length {max_k}")
    return out
