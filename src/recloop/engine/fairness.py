"""Debiasing and exposure-fair re-rankers over score matrices and candidate lists.

Three post-processing steps, each with a ``strength`` where 0 is exactly the input ranking:

- :func:`popularity_debias` rescores a users × items matrix against item popularity, either
  ``s − strength·σ_u·log p`` (``mode="log"``, a per-user-scaled bonus for rare items) or
  ``s / p^strength`` (``mode="ips"``). For EASE, ``"ips"`` *is* inverse-propensity training:
  with the squared loss the IPS estimator's target is ``X · diag(1/θ)`` and EASE's columns
  decouple, so each learned column is the plain one times ``1/θ_j`` (see docs/fairness.md).
- :func:`exposure_fair_rerank` is FA*IR-style (Zehlike et al., 2017): every prefix of length
  ``i`` of the top-k holds at least ``m(i)`` protected items (e.g. long-tail items), with
  ``m(i) = ⌊strength·i⌋`` or FA*IR's binomial table at significance ``alpha``; within each group
  the model's order is kept. Vectorised over users: k steps, each one NumPy pass.
- :func:`min_exposure_rerank` is exposure-constrained over a whole batch of users: items shown
  fewer than ``strength`` × their uniform share of impressions are swapped into the lists of
  the users who lose least relevance by taking them, in place of items that stay above that
  minimum after the swap, with at most ``max_share`` of each list swapped.

Candidate lists are ``(n, C)`` item indices best first (−1 pads, as ``recommend`` returns) with
their ``(n, C)`` scores; results are ``(n, k)`` items and the scores they came with.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from scipy import stats

from recloop.errors import ConfigError, DataError

__all__ = [
    "check_candidates",
    "exposure_fair_rerank",
    "fair_prefix_minimums",
    "min_exposure_rerank",
    "popularity_debias",
    "row_spread",
]

DebiasMode = Literal["log", "ips"]


def _check_strength(strength: float, name: str = "strength") -> float:
    value = float(strength)
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise ConfigError(f"{name} must be in [0, 1], not {strength!r}")
    return value


def popularity_debias(
    scores: np.ndarray,
    popularity: np.ndarray,
    strength: float,
    *,
    mode: DebiasMode = "log",
) -> np.ndarray:
    """Scores re-weighted against item popularity; ``strength`` 0 returns them unchanged.

    ``popularity`` is positive per item (any scale, e.g. ``recloop.eval.item_popularity``).
    ``"log"``: ``s_ui − strength · σ_u · log p_i`` with ``σ_u`` the standard deviation of row
    u's finite scores, so one strength means the same on any model's scale (strength ≤ 1).
    ``"ips"``: ``s_ui / p_i^strength``, the inverse-propensity weight with exponent η =
    ``strength``. Non-finite scores (excluded items) stay as they are.
    """
    strength = _check_strength(strength)
    s = np.asarray(scores, dtype=np.float32)
    pop = np.asarray(popularity, dtype=np.float64)
    if s.ndim != 2:
        raise DataError(f"scores must be a 2-D users × items array, not shape {s.shape}")
    if pop.ndim != 1 or len(pop) != s.shape[1]:
        raise DataError(f"popularity must have one value per item ({s.shape[1]}), not {pop.shape}")
    if not np.isfinite(pop).all() or (pop <= 0).any():
        raise DataError("popularity must be positive and finite for every item")
    if mode not in ("log", "ips"):
        raise ConfigError(f"mode must be 'log' or 'ips', not {mode!r}")
    if strength == 0.0:
        return s.copy()
    finite = np.isfinite(s)
    if mode == "ips":
        weight = np.power(pop, -strength).astype(np.float32)
        out = s * weight[None, :]
    else:
        sigma = row_spread(s, finite)
        out = (s - strength * sigma * np.log(pop)[None, :]).astype(np.float32)
    return np.where(finite, out, s).astype(np.float32)


def row_spread(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-row standard deviation of the masked entries, as a column; 1 where it is 0 or empty."""
    filled = np.where(mask, values, 0.0).astype(np.float64)
    count = np.maximum(mask.sum(axis=1, keepdims=True), 1)
    mean = filled.sum(axis=1, keepdims=True) / count
    var = (np.where(mask, filled - mean, 0.0) ** 2).sum(axis=1, keepdims=True) / count
    sigma = np.sqrt(var)
    sigma[~(sigma > 0)] = 1.0
    return sigma


def fair_prefix_minimums(k: int, share: float, alpha: float | None = None) -> np.ndarray:
    """``m(i)`` for prefixes ``i = 1..k``: the protected items each prefix must hold.

    Without ``alpha``, ``m(i) = ⌊share · i⌋`` (a deterministic minimum share). With ``alpha``,
    FA*IR's table: ``m(i) = F⁻¹(alpha; i, share)``, the fewest protected items a ranking drawn
    with protected probability ``share`` shows with probability above ``alpha`` (no multiple-
    testing adjustment of ``alpha``).
    """
    if k < 1:
        raise ConfigError(f"k must be positive, not {k}")
    share = _check_strength(share, "share")
    prefix = np.arange(1, k + 1)
    if alpha is None:
        return np.floor(share * prefix + 1e-9).astype(np.int64)
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha must be in (0, 1), not {alpha!r}")
    return np.asarray(stats.binom.ppf(alpha, prefix, share), dtype=np.int64)


def check_candidates(
    candidates: np.ndarray, scores: np.ndarray | None, k: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """A re-ranker's ``(candidates, scores)`` checked (2-D, same shape, ``k`` sensible) and
    returned as arrays; :class:`~recloop.errors.DataError` or ``ConfigError`` otherwise."""
    items = np.asarray(candidates)
    if items.ndim != 2:
        raise DataError(f"candidates must be a 2-D (users, C) array, not shape {items.shape}")
    if items.size and items.dtype.kind not in "iu":
        raise DataError(f"candidates must hold integer item indices, not {items.dtype}")
    items = items.astype(np.int64, copy=False)
    if items.size and items.min() < -1:
        raise DataError("candidates may only hold item indices >= 0 or -1 (padding)")
    if k < 1:
        raise ConfigError(f"k must be positive, not {k}")
    if scores is None:
        return items, None
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != items.shape:
        raise DataError(f"candidate scores have shape {s.shape}, candidates {items.shape}")
    return items, s


def _head(items: np.ndarray, scores: np.ndarray | None, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` columns, padded with −1 / −inf when there are fewer."""
    n, width = items.shape
    out = np.full((n, k), -1, dtype=np.int64)
    out_scores = np.full((n, k), -np.inf, dtype=np.float32)
    take = min(k, width)
    out[:, :take] = items[:, :take]
    if scores is not None:
        out_scores[:, :take] = scores[:, :take]
    out_scores[out < 0] = -np.inf
    return out, out_scores


def exposure_fair_rerank(
    candidates: np.ndarray,
    protected: np.ndarray,
    strength: float,
    k: int = 10,
    *,
    scores: np.ndarray | None = None,
    alpha: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """FA*IR-style top-``k``: every prefix ``i`` holds at least ``m(i)`` protected items.

    ``protected`` is a boolean mask over items (e.g. the long tail: ``~head_items(train)``);
    ``strength`` is the minimum protected share of :func:`fair_prefix_minimums`. At each
    position the best remaining protected candidate is taken when the prefix would otherwise
    fall short, else the best remaining candidate of either group, so each group keeps the
    model's order. When a row runs out of protected candidates the rest is filled from the
    others (the minimum cannot be met from what the candidates hold). Strength 0 returns the
    first ``k`` candidates unchanged. Returns ``(n, k)`` items and their scores (−inf when
    ``scores`` is not given, and for padding).
    """
    items, s = check_candidates(candidates, scores, k)
    mask = np.asarray(protected, dtype=bool)
    if mask.ndim != 1:
        raise DataError("protected must be a 1-D boolean mask over items")
    if items.size and items.max() >= len(mask):
        raise DataError(f"candidate item {int(items.max())} is outside the protected mask")
    minimum = fair_prefix_minimums(k, strength, alpha)
    n, width = items.shape
    if not minimum.any() or width == 0:
        return _head(items, s, k)
    valid = items >= 0
    is_prot = valid & mask[np.maximum(items, 0)]
    is_other = valid & ~is_prot
    # candidate positions of each group in the model's order, group members first
    prot_pos = np.argsort(~is_prot, axis=1, kind="stable")
    other_pos = np.argsort(~is_other, axis=1, kind="stable")
    n_prot, n_other = is_prot.sum(axis=1), is_other.sum(axis=1)
    rows = np.arange(n)
    next_prot = np.zeros(n, dtype=np.int64)
    next_other = np.zeros(n, dtype=np.int64)
    shown_prot = np.zeros(n, dtype=np.int64)
    chosen = np.full((n, k), -1, dtype=np.int64)  # candidate positions
    for i in range(k):
        has_prot, has_other = next_prot < n_prot, next_other < n_other
        at_prot = np.where(has_prot, prot_pos[rows, np.minimum(next_prot, width - 1)], width)
        at_other = np.where(has_other, other_pos[rows, np.minimum(next_other, width - 1)], width)
        take_prot = has_prot & ((shown_prot < minimum[i]) | (at_prot < at_other))
        take_other = ~take_prot & has_other
        chosen[:, i] = np.where(take_prot, at_prot, np.where(take_other, at_other, -1))
        next_prot += take_prot
        next_other += take_other
        shown_prot += take_prot
    picked = chosen >= 0
    safe = np.maximum(chosen, 0)
    out = np.where(picked, np.take_along_axis(items, safe, axis=1), -1)
    out_scores = np.full((n, k), -np.inf, dtype=np.float32)
    if s is not None:
        out_scores = np.where(picked, np.take_along_axis(s, safe, axis=1), -np.inf)
    return out, out_scores.astype(np.float32)


def min_exposure_rerank(
    candidates: np.ndarray,
    scores: np.ndarray,
    strength: float,
    k: int = 10,
    *,
    n_items: int,
    max_share: float = 0.3,
    prior_exposure: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exposure-constrained top-``k`` over a batch: lift every item towards a minimum exposure.

    The minimum is ``strength`` × the uniform share of impressions, ``(P + n·k) / n_items``,
    with ``P`` the impressions already counted in ``prior_exposure`` (none by default).
    Starting from each row's first ``k`` candidates, (row, item) pairs where the item sits
    below the minimum are visited by the relevance the row gives up, ``(s_k − s_j) / σ_u``
    (the row's k-th score minus the item's, over the spread of the row's candidate scores),
    smallest first. A pair is taken when the row has swapped fewer than ``⌊max_share · k⌋``
    slots and still shows an original item whose exposure stays at or above the minimum after
    losing it: the lowest-ranked such item makes room. Shown items keep score order, so swapped
    items sit at the end of the list. ``prior_exposure`` (per item) counts impressions made
    elsewhere (earlier batches, a service's running counts), so the rule also works one
    request at a time. Strength 0 returns the first ``k`` candidates unchanged.
    """
    strength = _check_strength(strength)
    max_share = _check_strength(max_share, "max_share")
    items, s = check_candidates(candidates, scores, k)
    assert s is not None
    if n_items < 1:
        raise ConfigError(f"n_items must be positive, not {n_items}")
    if items.size and items.max() >= n_items:
        raise DataError(f"candidate item {int(items.max())} is outside the {n_items} items")
    prior = np.zeros(n_items)
    if prior_exposure is not None:
        prior = np.asarray(prior_exposure, dtype=np.float64)
        if prior.shape != (n_items,) or not (prior >= 0).all():
            raise DataError(f"prior_exposure must be {n_items} non-negative counts")
    n, width = items.shape
    max_swaps = math.floor(max_share * k + 1e-9)
    minimum = strength * (prior.sum() + n * k) / n_items
    if minimum == 0 or max_swaps == 0 or width <= k or n == 0:
        return _head(items, s, k)
    valid = (items >= 0) & np.isfinite(s)
    shown = np.zeros((n, width), dtype=bool)
    shown[:, :k] = valid[:, :k]
    exposure = np.bincount(items[:, :k][shown[:, :k]], minlength=n_items) + prior

    # the relevance each row gives up per candidate beyond its first k, in units of its spread
    kth = np.where(valid[:, :k], s[:, :k], np.inf).min(axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):
        cost = (kth - np.where(valid, s, 0.0)[:, k:]) / row_spread(s, valid)
    rows, cols = np.nonzero(valid[:, k:] & (exposure[np.maximum(items[:, k:], 0)] < minimum))
    order = np.lexsort((cols, rows, cost[rows, cols]))
    swaps = np.zeros(n, dtype=np.int64)
    for row, col in zip(rows[order].tolist(), (cols[order] + k).tolist(), strict=True):
        item = int(items[row, col])
        if exposure[item] >= minimum or swaps[row] >= max_swaps or shown[row, col]:
            continue
        room = -1
        for slot in range(k - 1, -1, -1):  # the lowest-ranked original item that can give way
            if shown[row, slot] and exposure[items[row, slot]] - 1 >= minimum:
                room = slot
                break
        if room < 0:
            continue
        shown[row, room] = False
        shown[row, col] = True
        exposure[items[row, room]] -= 1
        exposure[item] += 1
        swaps[row] += 1
    # the shown columns of each row, in candidate (score) order, then padding
    position = np.argsort(~shown, axis=1, kind="stable")[:, :k]
    picked = np.take_along_axis(shown, position, axis=1)
    out = np.where(picked, np.take_along_axis(items, position, axis=1), -1)
    out_scores = np.where(picked, np.take_along_axis(s, position, axis=1), -np.inf)
    return out.astype(np.int64), out_scores.astype(np.float32)
