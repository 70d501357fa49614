"""Fairness and exposure audits of top-K lists, and the counterfactual attribute-flip test.

- **Segment gaps**: per-user NDCG@K (any per-user metric) averaged within each value of a user
  segment (gender, age band, activity tercile), the gap between the best and the worst value,
  and each value against the overall mean, with paired bootstrap intervals over users.
- **Exposure**: impressions in the top-K lists by item popularity band (head / mid / tail by
  train popularity) and by genre, each as a share of impressions next to its share of the
  catalogue and of train interactions; the exposure Gini over all items.
- **Counterfactual flip**: for a model that reads user attributes, flip one protected
  attribute (e.g. gender M↔F) and measure the share of each user's top-K that changes.

Bands: items ranked by positive train rows (ties to the lower index); the **head** is the
shortest prefix reaching ``head_share`` of all rows (0.5: exactly ``segments.head_items``), the
**tail** the items whose more popular items already hold ``1 − tail_share`` of the rows (never
seen items included), the **mid** band the rest. Genres count fractionally: an item with g
genres gives 1/g of its impressions (and catalogue slot, and train rows) to each, so the shares
of every column sum to 1; an item without genres counts under ``(none)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from recloop.data.split import Split
from recloop.data.types import Catalog, Dataset, Exclusions, Interactions, Queries, Users
from recloop.errors import ConfigError, DataError
from recloop.eval.beyond import exposure_counts, gini
from recloop.eval.metrics import check_recommendations, metric_name
from recloop.eval.segments import (
    ACTIVITY_LEVELS,
    AGE_BANDS,
    SegmentTable,
    head_size,
    user_segments,
)

if TYPE_CHECKING:
    from recloop.eval.evaluate import EvalResult, Ranker

__all__ = [
    "BANDS",
    "ExposureAudit",
    "FairnessAudit",
    "FlipResult",
    "GapDraws",
    "SegmentGap",
    "bands_from_counts",
    "counterfactual_flip",
    "exposure_audit",
    "exposure_from_counts",
    "fairness_audit",
    "gap_draws",
    "gaps_from_table",
    "genre_weights",
    "popularity_bands",
    "summarise_gaps",
    "table_draws",
]

BANDS: tuple[str, ...] = ("head", "mid", "tail")
NO_GENRE = "(none)"
_MAX_CELLS = 1 << 22  # bootstrap weights drawn per chunk (resamples × users)


def _clean(value: Any) -> Any:
    """JSON-ready: NaN and ±inf become ``None``, numpy scalars Python ones, recursively."""
    if isinstance(value, Mapping):
        return {str(key): _clean(v) for key, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        return _clean(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---------------------------------------------------------------------------- segment gaps


@dataclass(frozen=True)
class SegmentGap:
    """One segment's per-value means, their gap and the intervals (``None``: not computed).

    ``values[v]`` holds ``mean``, ``users``, ``vs_overall`` (mean − overall mean) and its
    ``ci_low``/``ci_high``. ``gap`` is best − worst value mean; its interval resamples users
    and recomputes the difference between those two values (chosen on the point estimate).
    """

    segment: str
    metric: str
    overall: float
    values: dict[str, dict[str, float | int | None]]
    gap: float
    best: str | None
    worst: str | None
    gap_ci: tuple[float, float] | None = None
    confidence: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        return dict(_clean(asdict(self)))


@dataclass(frozen=True, eq=False)
class GapDraws:
    """Point estimates and bootstrap draws of one segment's value means (for pooling seeds).

    ``draws`` is (resamples × values) and ``draws_overall`` (resamples): the means over the
    same resampled users; NaN where a resample holds no user of a value.
    """

    segment: str
    metric: str
    labels: tuple[str, ...]
    means: np.ndarray
    users: np.ndarray
    overall: float
    draws: np.ndarray
    draws_overall: np.ndarray


def _value_order(segment: str, values: set[str]) -> list[str]:
    """Known bands in their natural order (ages, activity), anything else sorted."""
    known = {"age": AGE_BANDS, "activity": ACTIVITY_LEVELS}.get(segment, ())
    return [v for v in known if v in values] + sorted(values - set(known))


def _weights(n: int, n_resamples: int, seed: int) -> list[np.ndarray]:
    """Bootstrap resamples as per-user multiplicities (resamples × users), in chunks."""
    rng = np.random.default_rng(seed)
    step = max(1, _MAX_CELLS // max(n, 1))
    chunks = []
    for start in range(0, n_resamples, step):
        size = min(step, n_resamples - start)
        index = rng.integers(0, n, size=(size, n)) + n * np.arange(size)[:, None]
        counts = np.bincount(index.ravel(), minlength=size * n).reshape(size, n)
        chunks.append(counts.astype(np.float64))
    return chunks


def gap_draws(
    values: np.ndarray,
    labels: np.ndarray,
    *,
    segment: str,
    metric: str = "ndcg@10",
    n_resamples: int = 1000,
    seed: int = 0,
) -> GapDraws:
    """Per-value means of ``values`` (one per user) and ``n_resamples`` bootstrap draws.

    Users with a NaN value are left out everywhere; users labelled ``None`` count in the
    overall mean only. ``n_resamples = 0`` skips the bootstrap.
    """
    x = np.asarray(values, dtype=np.float64)
    lab = np.asarray(labels, dtype=object)
    if x.ndim != 1 or lab.shape != x.shape:
        raise DataError(f"{metric}: {x.shape} values for {lab.shape} segment labels")
    if n_resamples < 0:
        raise ConfigError(f"n_resamples must be >= 0, not {n_resamples}")
    keep = ~np.isnan(x)
    x = x[keep]
    lab = np.array([None if v is None else str(v) for v in lab[keep]], dtype=object)
    present = {v for v in lab if v is not None}
    names = tuple(_value_order(segment, present))
    onehot = np.zeros((len(x), len(names)))  # users × values
    for j, name in enumerate(names):
        onehot[:, j] = lab == name
    users = onehot.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (x @ onehot) / users
    overall = float(x.mean()) if len(x) else math.nan
    draws = np.full((n_resamples, len(names)), np.nan)
    draws_overall = np.full(n_resamples, np.nan)
    if n_resamples and len(x):
        start = 0
        for w in _weights(len(x), n_resamples, seed):
            stop = start + len(w)
            counts = w @ onehot
            with np.errstate(invalid="ignore", divide="ignore"):
                draws[start:stop] = (w @ (onehot * x[:, None])) / counts
            draws_overall[start:stop] = (w @ x) / w.sum(axis=1)
            start = stop
    return GapDraws(segment, metric, names, means, users.astype(np.int64), overall, draws,
                    draws_overall)  # fmt: skip


def _interval(draws: np.ndarray, confidence: float) -> tuple[float, float] | None:
    if len(draws) == 0 or np.isnan(draws).any():
        return None
    alpha = 1.0 - confidence
    low, high = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def summarise_gaps(draws: Sequence[GapDraws], confidence: float = 0.95) -> SegmentGap:
    """One :class:`SegmentGap` from one seed's draws, or several seeds' averaged.

    Seeds are pooled as the report pools metrics: point estimates and resampled means are
    averaged over seeds (users resampled within each). Values missing on a seed are dropped.
    """
    if not draws:
        raise ConfigError("summarise_gaps needs at least one GapDraws")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), not {confidence}")
    first = draws[0]
    names = [v for v in first.labels if all(v in d.labels for d in draws)]
    cols = [[d.labels.index(v) for v in names] for d in draws]
    means = np.mean([d.means[c] for d, c in zip(draws, cols, strict=True)], axis=0)
    users = np.mean([d.users[c] for d, c in zip(draws, cols, strict=True)], axis=0)
    overall = float(np.mean([d.overall for d in draws]))
    n_draws = {len(d.draws_overall) for d in draws}
    pooled = pooled_overall = None
    if len(n_draws) == 1 and n_draws != {0}:
        pooled = np.mean([d.draws[:, c] for d, c in zip(draws, cols, strict=True)], axis=0)
        pooled_overall = np.mean([d.draws_overall for d in draws], axis=0)
    table: dict[str, dict[str, float | int | None]] = {}
    for j, name in enumerate(names):
        row: dict[str, float | int | None] = {
            "mean": float(means[j]),
            "users": round(float(users[j])),
            "vs_overall": float(means[j] - overall),
            "ci_low": None,
            "ci_high": None,
        }
        if pooled is not None and pooled_overall is not None:
            found = _interval(pooled[:, j] - pooled_overall, confidence)
            if found is not None:
                row["ci_low"], row["ci_high"] = found
        table[name] = row
    defined = [j for j in range(len(names)) if not math.isnan(means[j])]
    if len(defined) >= 1:
        best = max(defined, key=lambda j: (means[j], -j))
        worst = min(defined, key=lambda j: (means[j], j))
        gap = float(means[best] - means[worst])
        gap_ci = (
            _interval(pooled[:, best] - pooled[:, worst], confidence)
            if pooled is not None and len(defined) > 1
            else None
        )
        best_name, worst_name = names[best], names[worst]
    else:
        gap, gap_ci, best_name, worst_name = math.nan, None, None, None
    return SegmentGap(
        segment=first.segment,
        metric=first.metric,
        overall=overall,
        values=table,
        gap=gap,
        best=best_name,
        worst=worst_name,
        gap_ci=gap_ci,
        confidence=confidence,
    )


def table_draws(table: SegmentTable, metric: str, overall: float) -> dict[str, GapDraws]:
    """Point estimates (no resamples) from a segment breakdown, for when labels are gone."""
    out: dict[str, GapDraws] = {}
    for segment, rows in table.items():
        if segment == "item_band":
            continue
        names = list(rows)
        out[segment] = GapDraws(
            segment=segment,
            metric=metric,
            labels=tuple(names),
            means=np.array([float(row.get(metric, math.nan)) for row in rows.values()]),
            users=np.array([int(row.get("users", 0)) for row in rows.values()]),
            overall=overall,
            draws=np.zeros((0, len(names))),
            draws_overall=np.zeros(0),
        )
    return out


def gaps_from_table(table: SegmentTable, metric: str, overall: float) -> dict[str, SegmentGap]:
    """Gaps from a segment breakdown's means alone (no per-user labels: no intervals)."""
    return {
        segment: summarise_gaps([draws])
        for segment, draws in table_draws(table, metric, overall).items()
    }


# ---------------------------------------------------------------------------- exposure


def bands_from_counts(
    counts: np.ndarray, head_share: float = 0.5, tail_share: float = 0.2
) -> np.ndarray:
    """``head`` / ``mid`` / ``tail`` per item from its interaction count (module docstring)."""
    if not 0 < head_share < 1:
        raise ConfigError(f"head_share must be in (0, 1), not {head_share}")
    if not 0 < tail_share <= 1 - head_share:
        raise ConfigError(f"tail_share must be in (0, 1 − head_share], not {tail_share}")
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or not (counts >= 0).all():
        raise DataError("counts must be one non-negative number per item")
    labels = np.full(len(counts), "tail", dtype=object)
    total = counts.sum()
    if total == 0:
        return labels
    order = np.lexsort((np.arange(len(counts)), -counts))
    covered = np.cumsum(counts[order])
    before = covered - counts[order]
    n_head = head_size(covered, head_share)
    rank = np.arange(len(order))
    band = np.where(before >= (1 - tail_share) * total - 1e-9, "tail", "mid")
    band[rank < n_head] = "head"
    labels[order] = band
    return labels


def popularity_bands(
    train: Interactions, head_share: float = 0.5, tail_share: float = 0.2
) -> np.ndarray:
    """``head`` / ``mid`` / ``tail`` per item by positive train rows (module docstring)."""
    return bands_from_counts(train.positive().item_counts(), head_share, tail_share)


@dataclass(frozen=True)
class ExposureAudit:
    """Who gets the impressions of the top-``k`` lists.

    ``bands[b]`` / ``genres[g]``: ``items``, ``catalog_share``, ``interaction_share`` (train
    rows), ``exposure_share`` (impressions) and ``ratio`` = exposure / interaction share
    (above 1: shown more than it is consumed).
    """

    k: int
    n_lists: int
    impressions: int
    gini: float
    coverage: float
    bands: dict[str, dict[str, float]]
    genres: dict[str, dict[str, float]] = field(default_factory=dict)
    band_rule: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(_clean(asdict(self)))


def _shares(weight: np.ndarray, exposure: np.ndarray, rows: np.ndarray) -> dict[str, float]:
    """Shares of catalogue, train rows and impressions for one group's per-item weights."""
    n_items = len(weight)
    impressions, train_rows = exposure.sum(), rows.sum()
    catalog = float(weight.sum() / n_items) if n_items else math.nan
    interactions = float(weight @ rows / train_rows) if train_rows else math.nan
    shown = float(weight @ exposure / impressions) if impressions else math.nan
    ratio = shown / interactions if interactions and not math.isnan(interactions) else math.nan
    return {
        "items": float(weight.sum()),
        "catalog_share": catalog,
        "interaction_share": interactions,
        "exposure_share": shown,
        "ratio": ratio,
    }


def genre_weights(genres: Sequence[Any]) -> tuple[list[str], np.ndarray]:
    """Genre names (sorted, ``(none)`` last when used) and items × genres fractional weights."""
    members: list[list[str]] = []
    for value in genres:
        if value is None:
            members.append([])
        elif isinstance(value, str):
            members.append([value])
        else:
            members.append(sorted({str(g) for g in value}))
    names = sorted({g for row in members for g in row})
    if any(not row for row in members):
        names.append(NO_GENRE)
    column = {name: j for j, name in enumerate(names)}
    weights = np.zeros((len(members), len(names)))
    for i, row in enumerate(members):
        for g in row or [NO_GENRE]:
            weights[i, column[g]] = 1.0 / max(len(row), 1)
    return names, weights


def exposure_from_counts(
    impressions: np.ndarray,
    interactions: np.ndarray,
    *,
    genres: Sequence[Any] | None = None,
    head_share: float = 0.5,
    tail_share: float = 0.2,
    k: int = 0,
    n_lists: int = 0,
) -> ExposureAudit:
    """The exposure audit from per-item counts: impressions and (positive) interactions.

    For callers that count impressions themselves, e.g. a service over its logged slates.
    ``genres`` holds one genre collection (or one string, or ``None``) per item.
    """
    exposure = np.asarray(impressions, dtype=np.float64)
    rows = np.asarray(interactions, dtype=np.float64)
    if exposure.ndim != 1 or exposure.shape != rows.shape:
        raise DataError(f"{exposure.shape} impression counts for {rows.shape} items")
    if not (exposure >= 0).all():
        raise DataError("impression counts must be non-negative")
    bands = bands_from_counts(rows, head_share, tail_share)
    band_table = {b: _shares((bands == b).astype(np.float64), exposure, rows) for b in BANDS}
    genre_table: dict[str, dict[str, float]] = {}
    if genres is not None:
        if len(genres) != len(rows):
            raise DataError(f"{len(genres)} genre entries for {len(rows)} items")
        names, weights = genre_weights(genres)
        genre_table = {g: _shares(weights[:, j], exposure, rows) for j, g in enumerate(names)}
    rule = (
        f"items by interactions: head = most popular up to {head_share:.0%} of them, "
        f"tail = least popular holding the last {tail_share:.0%} (unseen items included), "
        "mid = the rest"
    )
    return ExposureAudit(
        k=k,
        n_lists=n_lists,
        impressions=int(exposure.sum()),
        gini=gini(exposure),
        coverage=float((exposure > 0).mean()) if len(exposure) else math.nan,
        bands=band_table,
        genres=genre_table,
        band_rule=rule,
    )


def exposure_audit(
    recommendations: np.ndarray,
    train: Interactions,
    *,
    k: int = 10,
    catalog: Catalog | None = None,
    genre_attribute: str = "genres",
    head_share: float = 0.5,
    tail_share: float = 0.2,
) -> ExposureAudit:
    """Impressions of the top-``k`` of each list by popularity band and genre, and the Gini.

    ``recommendations`` is (lists × K ≥ k), padded with −1; an item repeated in a list counts
    once. Bands come from positive train rows; genres need ``catalog`` with
    ``genre_attribute``.
    """
    recs = check_recommendations(recommendations)
    if not 1 <= k <= recs.shape[1]:
        raise ConfigError(f"k must be in 1..{recs.shape[1]}, not {k}")
    n_items = train.n_items
    genres = None
    if catalog is not None and genre_attribute in catalog.attributes:
        if len(catalog) != n_items:
            raise DataError(f"the catalog has {len(catalog)} items, the train data {n_items}")
        genres = catalog.attributes[genre_attribute]
    return exposure_from_counts(
        exposure_counts(recs, n_items, k),
        train.positive().item_counts(),
        genres=genres,
        head_share=head_share,
        tail_share=tail_share,
        k=k,
        n_lists=len(recs),
    )


# ---------------------------------------------------------------------------- the audit


@dataclass(frozen=True)
class FairnessAudit:
    """Segment gaps of one per-user metric plus the exposure audit, JSON-ready via to_dict."""

    metric: str
    k: int
    n_users: int
    segments: dict[str, SegmentGap]
    exposure: ExposureAudit

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "k": self.k,
            "n_users": self.n_users,
            "segments": {name: gap.to_dict() for name, gap in self.segments.items()},
            "exposure": self.exposure.to_dict(),
        }


def fairness_audit(
    result: EvalResult,
    split: Split,
    dataset: Dataset | None = None,
    k: int = 10,
    *,
    users: Users | None = None,
    catalog: Catalog | None = None,
    metric: str = "ndcg",
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    head_share: float = 0.5,
    tail_share: float = 0.2,
) -> FairnessAudit:
    """Segment gaps of ``metric@k`` and the exposure audit of one evaluation result.

    ``result`` comes from :func:`recloop.eval.evaluate` on one part of ``split``; ``dataset``
    supplies ``users`` (gender, age) and ``catalog`` (genres) unless they are given. Activity
    terciles come from ``split.train``. ``n_resamples = 0`` skips the intervals.
    """
    if dataset is not None:
        users = users if users is not None else dataset.users
        catalog = catalog if catalog is not None else dataset.catalog
    name = metric_name(metric, k)
    if name not in result.per_user:
        known = ", ".join(sorted(result.per_user))
        raise ConfigError(f"the result has no per-user {name!r} (known: {known})")
    labels = user_segments(result.users, users=users, train=split.train)
    segments = {
        segment: summarise_gaps(
            [
                gap_draws(
                    result.per_user[name],
                    values,
                    segment=segment,
                    metric=name,
                    n_resamples=n_resamples,
                    seed=seed,
                )
            ],
            confidence,
        )
        for segment, values in labels.items()
    }
    exposure = exposure_audit(
        result.recommendations,
        split.train,
        k=k,
        catalog=catalog,
        head_share=head_share,
        tail_share=tail_share,
    )
    return FairnessAudit(name, k, result.n_users, segments, exposure)


# ---------------------------------------------------------------------------- flip test


@dataclass(frozen=True)
class FlipResult:
    """How much the top-``k`` changes when one attribute is flipped.

    ``change_rate``: mean over flipped users of the share of the original top-k items missing
    from the flipped top-k; ``position_change_rate``: share of positions whose item differs;
    ``distribution[c]``: users with exactly c items changed; ``by_value``: per original value.
    """

    attribute: str
    k: int
    n_queries: int
    n_flipped: int
    change_rate: float
    position_change_rate: float
    any_change_share: float
    distribution: list[int]
    by_value: dict[str, dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return dict(_clean(asdict(self)))


FlipMapping = Mapping[Any, Any] | Callable[[Any], Any]
"""Original value → flipped value; ``None`` (or a missing key) leaves that user out."""


def _flip_value(mapping: FlipMapping, value: Any) -> Any:
    if callable(mapping):
        return mapping(value)
    try:
        return mapping.get(value)
    except TypeError:  # unhashable value
        return None


def _attributes_of(queries: Queries, users: Users | None) -> dict[str, list[Any]]:
    """Every query's attributes: those the queries carry, else the users' by index."""
    if queries.user_attributes is not None:
        return {key: list(values) for key, values in queries.user_attributes.items()}
    if users is None:
        raise ConfigError("counterfactual_flip needs users, or queries with user_attributes")
    index = queries.user.astype(np.int64)
    bad = np.flatnonzero((index < 0) | (index >= len(users)))
    if len(bad):
        raise DataError(
            f"query row {int(bad[0])} has user {int(index[bad[0]])}, which has no attributes"
        )
    return {key: [values[int(u)] for u in index] for key, values in users.attributes.items()}


def counterfactual_flip(
    model: Ranker,
    queries: Queries,
    users: Users | None,
    attribute: str,
    mapping: FlipMapping,
    k: int = 10,
    *,
    exclude: Exclusions | None = None,
) -> FlipResult:
    """Recommend with each user's attributes as they are and with ``attribute`` flipped.

    Both passes give the model the attributes explicitly (``Queries.user_attributes``), so a
    model that ignores them changes nothing. Users whose value ``mapping`` does not flip are
    left out. ``exclude`` defaults to each query's history, as ``recommend``'s does.
    """
    if k < 1:
        raise ConfigError(f"k must be positive, not {k}")
    base = _attributes_of(queries, users)
    if attribute not in base:
        known = ", ".join(sorted(base)) or "none"
        raise ConfigError(f"no user attribute {attribute!r} to flip (known: {known})")
    original = base[attribute]
    flipped_values = [_flip_value(mapping, v) for v in original]
    rows = np.array([i for i, v in enumerate(flipped_values) if v is not None], dtype=np.int64)
    n_flipped = len(rows)
    empty = FlipResult(attribute, k, len(queries), 0, math.nan, math.nan, math.nan,
                       [0] * (k + 1), {})  # fmt: skip
    if n_flipped == 0:
        return empty
    subset = queries.take(rows)
    kept = {key: [values[int(r)] for r in rows] for key, values in base.items()}
    changed = dict(kept)
    changed[attribute] = [flipped_values[int(r)] for r in rows]
    ex = exclude if exclude is not None else Exclusions.from_history(queries)
    if len(ex) != len(queries):
        raise DataError(f"{len(ex)} exclusion rows for {len(queries)} queries")
    ex_rows = Queries(queries.user, ex.indptr, ex.items).take(rows)
    ex_sub = Exclusions(ex_rows.history_indptr, ex_rows.history_items)

    def top(attrs: dict[str, list[Any]]) -> np.ndarray:
        q = Queries(subset.user, subset.history_indptr, subset.history_items, attrs)
        items, _ = model.recommend(q, k, ex_sub)
        return check_recommendations(np.asarray(items))[:, :k]

    before, after = top(kept), top(changed)
    valid = before >= 0
    shown = valid.sum(axis=1)
    kept_items = (before[:, :, None] == after[:, None, :]).any(axis=2) & valid
    n_changed = shown - kept_items.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(shown > 0, n_changed / np.maximum(shown, 1), 0.0)
    position = (before != after).mean(axis=1)
    by_value: dict[str, dict[str, float]] = {}
    labels = np.array([str(original[int(r)]) for r in rows], dtype=object)
    for value in sorted(set(labels.tolist())):
        mask = labels == value
        by_value[value] = {
            "users": float(mask.sum()),
            "change_rate": float(share[mask].mean()),
            "any_change_share": float((n_changed[mask] > 0).mean()),
        }
    return FlipResult(
        attribute=attribute,
        k=k,
        n_queries=len(queries),
        n_flipped=n_flipped,
        change_rate=float(share.mean()),
        position_change_rate=float(position.mean()),
        any_change_share=float((n_changed > 0).mean()),
        distribution=np.bincount(n_changed, minlength=k + 1)[: k + 1].astype(int).tolist(),
        by_value=by_value,
    )
