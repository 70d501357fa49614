"""Globally exposure-fair top-k: every user's list chosen jointly, with a price per item.

The per-user re-rankers of :mod:`recloop.engine.fairness` decide one list (or one swap) at a
time. :func:`exposure_price_rerank` instead chooses all lists of a batch at once, as one linear
program: maximise the users' total relevance minus ``strength`` × an exposure cost, subject to
every user getting ``k`` distinct candidates (and, optionally, no item more than
``max_exposure`` impressions). Long-tail items then go to the users for whom they cost least.

- **Relevance** is each user's candidate scores as z-scores over that user's candidates, so one
  unit means the same on every model's scale and for every user.
- **Exposure cost** is the exposure Gini linearised at a reference (by default the batch's own
  unre-ranked top-k): with the total number of impressions fixed, the Gini is a sum over items
  of exposure times a weight rising with the item's exposure rank, so the (j+1)-th impression of
  an item costs ``w(j) = 2·F(j) − 1``, with ``F(j)`` the mid-ranked share of items the reference
  shows at most ``j`` times. ``w`` rises with ``j``: the cost is convex, the first impression of
  an unseen item is the cheapest, the 200th of a blockbuster the dearest.
- The constraint matrix is a bipartite flow network (users → items → convex exposure segments),
  so the LP's optimum is integral: an exact min-cost flow, solved by HiGHS's dual simplex
  (``scipy.optimize.linprog``; deterministic), in a few seconds for 1,000 users × 200 candidates.

The LP's duals on the items are **exposure prices**: the allocation is each user's top-k of
``z − price`` (up to ties). Prices fitted on one batch can therefore be applied one request at a
time (:func:`apply_exposure_prices`), which is how a service would use the re-ranker; the batch
solution itself needs the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linprog

from recloop.engine.fairness import check_candidates, row_spread
from recloop.errors import ConfigError, DataError

__all__ = [
    "ExposureAllocation",
    "apply_exposure_prices",
    "exposure_price_rerank",
    "gini_exposure_weights",
    "priced_scores",
]


@dataclass(frozen=True)
class ExposureAllocation:
    """A batch's jointly chosen top-k lists and the per-item prices that support them.

    ``items`` (n, k): item indices in the model's score order, −1 pads; ``scores`` (n, k): the
    model's scores of those items (−inf for padding); ``prices`` (n_items,): the exposure price
    of each item in units of a user's score spread (z-units; only differences between items
    matter); ``exposure`` (n_items,): impressions of each item in ``items``.
    """

    items: np.ndarray
    scores: np.ndarray
    prices: np.ndarray
    exposure: np.ndarray


def gini_exposure_weights(reference: np.ndarray, levels: int) -> np.ndarray:
    """``w(j) = 2·F(j) − 1`` for ``j = 0..levels−1``: the linearised Gini's cost of raising an
    item from ``j`` to ``j + 1`` impressions, with ``F(j)`` the share of items the ``reference``
    exposure puts below ``j`` plus half the share at ``j`` (mid-ranks, so tied items split the
    difference). Non-decreasing, in [−1, 1]."""
    ref = np.sort(np.asarray(reference, dtype=np.float64))
    if ref.ndim != 1 or len(ref) == 0:
        raise DataError("reference exposure must be a non-empty 1-D array over items")
    j = np.arange(max(int(levels), 0), dtype=np.float64)
    below = np.searchsorted(ref, j, side="left")
    at_most = np.searchsorted(ref, j, side="right")
    return (below + at_most) / len(ref) - 1.0


def _utility(items: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row z-scores of the valid candidates (0 elsewhere) and the validity mask."""
    valid = (items >= 0) & np.isfinite(scores)
    filled = np.where(valid, scores, 0.0)
    count = np.maximum(valid.sum(axis=1, keepdims=True), 1)
    mean = filled.sum(axis=1, keepdims=True) / count
    z = np.where(valid, (filled - mean) / row_spread(scores, valid), 0.0)
    return z, valid


def _check_rows(items: np.ndarray, valid: np.ndarray, n_items: int) -> None:
    if n_items < 1:
        raise ConfigError(f"n_items must be positive, not {n_items}")
    if items.size and items.max() >= n_items:
        raise DataError(f"candidate item {int(items.max())} is outside the {n_items} items")
    marked = np.sort(np.where(valid, items, -1), axis=1)
    if ((marked[:, 1:] == marked[:, :-1]) & (marked[:, 1:] >= 0)).any():
        raise DataError("a candidate list holds the same item twice")


def _in_score_order(
    items: np.ndarray, scores: np.ndarray, shown: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The shown columns of each row in candidate order (best first), padded to ``k``."""
    n, width = items.shape
    out = np.full((n, k), -1, dtype=np.int64)
    out_scores = np.full((n, k), -np.inf, dtype=np.float32)
    take = min(k, width)
    position = np.argsort(~shown, axis=1, kind="stable")[:, :take]
    picked = np.take_along_axis(shown, position, axis=1)
    out[:, :take] = np.where(picked, np.take_along_axis(items, position, axis=1), -1)
    out_scores[:, :take] = np.where(picked, np.take_along_axis(scores, position, axis=1), -np.inf)
    return out, out_scores


def exposure_price_rerank(
    candidates: np.ndarray,
    scores: np.ndarray,
    strength: float,
    k: int = 10,
    *,
    n_items: int,
    max_exposure: int | np.ndarray | None = None,
    reference_exposure: np.ndarray | None = None,
) -> ExposureAllocation:
    """Every row's top-``k`` of ``candidates``, chosen jointly over the batch.

    Maximises ``Σ_u Σ_{i ∈ list_u} z_ui − strength · Σ_i Σ_{j < e_i} w(j)``: ``z`` the row's
    candidate scores as z-scores, ``e_i`` the impressions of item i in the batch and ``w`` the
    linearised Gini weights of :func:`gini_exposure_weights` at ``reference_exposure`` (per
    item; by default the impressions of the candidates' first ``k`` columns). ``strength`` ≥ 0
    is the exposure price in z-units: 0 returns the first ``k`` candidates unchanged (unless
    ``max_exposure`` is given). ``max_exposure`` (one cap, or one per item) bounds each item's
    impressions; a ``ConfigError`` says when no lists meet the caps. Rows keep
    ``min(k, valid candidates)`` items, shown in the model's score order; padding (−1) and
    non-finite scores are never shown. Needs the whole batch: the result depends on who else is
    in it (see :func:`apply_exposure_prices` for one request at a time).
    """
    items, s = check_candidates(candidates, scores, k)
    assert s is not None
    strength = float(strength)
    if not strength >= 0.0 or not np.isfinite(strength):
        raise ConfigError(f"strength must be a finite number >= 0, not {strength!r}")
    z, valid = _utility(items, s)
    _check_rows(items, valid, n_items)
    base_shown = valid & (np.cumsum(valid, axis=1) <= k)
    if reference_exposure is None:
        reference = np.bincount(items[base_shown], minlength=n_items).astype(np.float64)
    else:
        reference = np.asarray(reference_exposure, dtype=np.float64)
        if reference.shape != (n_items,) or not (reference >= 0).all():
            raise DataError(f"reference_exposure must be {n_items} non-negative counts")
    caps = None
    if max_exposure is not None:
        caps = np.asarray(max_exposure)
        if caps.ndim > 1 or caps.size not in (1, n_items):
            raise DataError(f"max_exposure must be one cap or {n_items}, not shape {caps.shape}")
        caps = np.broadcast_to(caps, (n_items,))
        if caps.dtype.kind not in "iu" or (caps < 0).any():
            raise ConfigError("max_exposure must be non-negative whole impressions")
    if (strength == 0.0 and caps is None) or not valid.any():
        out, out_scores = _in_score_order(items, s, base_shown, k)
        exposure = np.bincount(out[out >= 0], minlength=n_items)
        prices = np.zeros(n_items)
        return ExposureAllocation(out, out_scores, prices, exposure)

    shown, prices = _solve(items, z, valid, k, n_items, strength, reference, caps)
    out, out_scores = _in_score_order(items, s, shown, k)
    exposure = np.bincount(out[out >= 0], minlength=n_items)
    return ExposureAllocation(out, out_scores, prices, exposure)


def _solve(
    items: np.ndarray,
    z: np.ndarray,
    valid: np.ndarray,
    k: int,
    n_items: int,
    strength: float,
    reference: np.ndarray,
    caps: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """The min-cost flow users → items → exposure segments as an LP; (shown mask, prices)."""
    n = len(items)
    rows, cols = np.nonzero(valid)
    pair_item = items[rows, cols]
    present, pair_slot = np.unique(pair_item, return_inverse=True)  # items with a candidate row
    n_present = len(present)
    demand = np.minimum(valid.sum(axis=1), k)
    # an item can take at most one impression per row that holds it, and at most its cap
    supply = np.bincount(pair_slot, minlength=n_present)
    if caps is not None:
        supply = np.minimum(supply, caps[present])
    levels = int(supply.max())
    weight = strength * gini_exposure_weights(reference, levels + 1)
    # runs of equal weight become one segment: [starts[r], starts[r + 1]) at weight[starts[r]]
    starts = np.flatnonzero(np.r_[True, np.diff(weight[:levels]) != 0])
    ends = np.r_[starts[1:], levels]
    seg_item, seg_run = np.nonzero(starts[None, :] < supply[:, None])
    seg_width = np.minimum(ends[seg_run], supply[seg_item]) - starts[seg_run]
    seg_cost = weight[starts[seg_run]]

    n_pairs, n_segments = len(rows), len(seg_item)
    user_rows = sp.csr_matrix((np.ones(n_pairs), (rows, np.arange(n_pairs))), shape=(n, n_pairs))
    item_in = sp.csr_matrix(
        (np.ones(n_pairs), (pair_slot, np.arange(n_pairs))), shape=(n_present, n_pairs)
    )
    item_out = sp.csr_matrix(
        (-np.ones(n_segments), (seg_item, np.arange(n_segments))), shape=(n_present, n_segments)
    )
    a_eq = sp.vstack(
        [sp.hstack([user_rows, sp.csr_matrix((n, n_segments))]), sp.hstack([item_in, item_out])],
        format="csr",
    )
    b_eq = np.r_[demand.astype(np.float64), np.zeros(n_present)]
    cost = np.r_[-z[rows, cols], seg_cost]
    bounds = np.zeros((n_pairs + n_segments, 2))
    bounds[:n_pairs, 1] = 1.0
    bounds[n_pairs:, 1] = seg_width
    result = linprog(cost, A_eq=a_eq, b_eq=b_eq, bounds=bounds, method="highs-ds")
    if result.status == 2:
        raise ConfigError("no top-k lists meet max_exposure: the caps leave too few impressions")
    if result.status != 0:
        raise RuntimeError(f"the exposure LP did not solve: {result.message}")
    flow = np.zeros(items.shape)
    flow[rows, cols] = result.x[:n_pairs]
    # the optimum is integral (a flow network); rank by flow, then relevance, to be safe
    order = np.lexsort((-np.where(valid, z, -np.inf), -flow), axis=1)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(items.shape[1])[None, :], axis=1)
    shown = valid & (ranks < demand[:, None])
    # duals: raising an item row's right-hand side frees one impression of exposure cost
    prices = np.full(n_items, weight[0] if len(weight) else 0.0)
    prices[present] = -np.asarray(result.eqlin.marginals)[n:]
    return shown, prices


def priced_scores(candidates: np.ndarray, scores: np.ndarray, prices: np.ndarray) -> np.ndarray:
    """``z − price`` of every candidate (−inf for padding and non-finite scores): ``z`` the
    row's candidate scores as z-scores, as :func:`exposure_price_rerank` fits them."""
    items = np.asarray(candidates)
    s = np.asarray(scores, dtype=np.float64)
    if items.ndim != 2 or items.shape != s.shape:
        raise DataError(
            f"candidates and scores must be equal 2-D shapes, not {items.shape}, {s.shape}"
        )
    price = np.asarray(prices, dtype=np.float64)
    if price.ndim != 1 or not np.isfinite(price).all():
        raise DataError("prices must be a finite 1-D array over items")
    z, valid = _utility(items, s)
    _check_rows(items, valid, len(price))
    return np.where(valid, z - price[np.maximum(items, 0)], -np.inf)


def apply_exposure_prices(
    candidates: np.ndarray, scores: np.ndarray, prices: np.ndarray, k: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's top-``k`` by ``z − price`` (:func:`priced_scores`), one row at a time.

    ``prices`` per item, as :func:`exposure_price_rerank` returns them (in z-units, so they
    apply to any model's scores). Prices fitted on a batch applied to the same batch give back
    its lists up to ties; applied to new requests, they steer each request as the batch was
    steered, which is how a service can use the global re-ranker. Zero prices return the first
    ``k`` candidates. Shown items keep the model's score order.
    """
    items, s = check_candidates(candidates, scores, k)
    assert s is not None
    adjusted = priced_scores(items, s, prices)
    valid = np.isfinite(adjusted)
    order = np.lexsort((np.arange(items.shape[1])[None, :].repeat(len(items), 0), -adjusted))
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(items.shape[1])[None, :], axis=1)
    shown = valid & (ranks < k)
    return _in_score_order(items, s, shown, k)
