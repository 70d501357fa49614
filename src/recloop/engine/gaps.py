"""Gap analysis: which user segments does the recommender serve poorly?

Users with positive train rows are embedded (truncated SVD of their binary train rows, items
idf-weighted by default, rows L2-normalised before and after; or embeddings passed in),
clustered with seeded k-means, and each cluster is scored on three signals:

- **satisfaction**: *observed* when held-out interactions are given (mean NDCG@k of the
  model's top-k list against each user's held-out items that are not in their train history,
  over the users that have any), else *predicted* (mean of the user's top-k scores, min-max
  normalised over every analysed user's top-k scores, so in [0, 1]; padding counts as 0);
- **coverage**: the share of the segment's (user, item) train pairs whose item the model
  recommends to at least one user of the segment, in [0, 1]. Weighting by the segment's own
  demand keeps a segment with narrow tastes from looking well covered just because it touches
  few distinct items;
- **tail**: ``tail_demand`` is the share of the segment's positive train rows on tail items,
  ``tail_supply`` the share of tail items among its recommended slots (head = the most
  popular items covering ``tail_share`` of the train rows, as :func:`recloop.eval.head_items`).

The gap score, higher = worse served, is::

    gap = w_sat · (1 − satisfaction / overall satisfaction)
        + w_cov · (1 − coverage / overall coverage)
        + w_tail · max(0, tail_demand − tail_supply)

Overall satisfaction and tail shares are over all analysed users; overall coverage is the
size-weighted mean of the segments' coverage (the union over everyone would be larger by
construction). A term whose reference is 0 or undefined, or whose segment value is undefined
(no user of the segment has held-out items), contributes 0. Segments are ranked worst first
(ties: larger first), clusters smaller than ``min_users`` after all others: the ranked list is
the target list for the generative module.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from recloop.data.types import Interactions, Queries, Users
from recloop.errors import ConfigError
from recloop.eval.metrics import ranking_metrics
from recloop.eval.segments import head_items
from recloop.training import limit_threads

SIGNALS: tuple[str, ...] = ("satisfaction", "coverage", "tail")
"""The gap signals that ``GapConfig.weights`` may weigh."""

RECOMMEND_BATCH = 1000
"""Users per ``model.recommend`` call."""


class GapConfig(BaseModel):
    """How users are embedded, clustered and scored. Frozen; unknown fields are an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_segments: int = Field(default=8, ge=1, le=10_000, description="k-means clusters")
    embedding_dim: int = Field(default=32, ge=1, le=4096, description="truncated SVD size")
    item_weighting: Literal["idf", "binary"] = Field(
        default="idf",
        description="columns of the binary matrix before the SVD: 'idf' scales item i by "
        "1 + ln((1 + n_users) / (1 + users of i)) so that rare items count, 'binary' leaves "
        "them at 1",
    )
    k: int = Field(default=10, ge=1, le=10_000, description="list length; also top_items size")
    tail_share: float = Field(
        default=0.5, gt=0.0, lt=1.0, description="share of train rows the head items cover"
    )
    min_users: int = Field(default=5, ge=1, description="smaller clusters are ranked last")
    weights: dict[str, float] = Field(
        default_factory=lambda: {"satisfaction": 1.0, "coverage": 0.5, "tail": 0.5},
        description="weight of each gap signal (missing signals weigh 0)",
    )
    n_init: int = Field(default=5, ge=3, le=100, description="k-means restarts")
    seed: int = Field(default=0, ge=0, description="seeds the SVD and k-means")
    threads: int | None = Field(
        default=1, ge=1, description="BLAS/OpenMP threads for the SVD and k-means; None keeps them"
    )

    def __hash__(self) -> int:  # the dict field would make pydantic's frozen hash fail
        return hash(self.model_dump_json())

    @field_validator("weights")
    @classmethod
    def _check_weights(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - set(SIGNALS))
        if unknown:
            raise ValueError(f"unknown signal {unknown[0]!r} (expected {', '.join(SIGNALS)})")
        for name, w in v.items():
            if not (math.isfinite(w) and w >= 0):
                raise ValueError(f"weights[{name!r}] must be a finite number >= 0")
        if not any(w > 0 for w in v.values()):
            raise ValueError("at least one weight must be positive")
        return dict(v)


@dataclass(frozen=True)
class Segment:
    """One cluster of users and how well it is served (see the module docstring)."""

    segment: int
    users: np.ndarray  # dense user indices, ascending
    size: int
    satisfaction: float  # NaN when observed and no user of the segment has held-out items
    satisfaction_kind: str  # "observed" or "predicted"
    coverage: float
    tail_demand: float
    tail_supply: float
    gap: float
    top_items: list[int]
    attributes: dict[str, Any] = field(default_factory=dict)

    def to_json(self, include_users: bool = True) -> dict[str, Any]:
        """JSON-friendly dict: lists, floats (NaN as ``None``)."""
        out: dict[str, Any] = {
            "segment": int(self.segment),
            "size": int(self.size),
            "satisfaction": _num(self.satisfaction),
            "satisfaction_kind": self.satisfaction_kind,
            "coverage": _num(self.coverage),
            "tail_demand": _num(self.tail_demand),
            "tail_supply": _num(self.tail_supply),
            "gap": _num(self.gap),
            "top_items": [int(i) for i in self.top_items],
            "attributes": _jsonable(self.attributes),
        }
        if include_users:
            out["users"] = [int(u) for u in self.users]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Segment:
        """The segment :meth:`to_json` described (``users`` empty if it was left out)."""
        return cls(
            segment=int(data["segment"]),
            users=np.asarray(data.get("users", []), dtype=np.int64),
            size=int(data["size"]),
            satisfaction=_from_num(data["satisfaction"]),
            satisfaction_kind=str(data["satisfaction_kind"]),
            coverage=_from_num(data["coverage"]),
            tail_demand=_from_num(data["tail_demand"]),
            tail_supply=_from_num(data["tail_supply"]),
            gap=_from_num(data["gap"]),
            top_items=[int(i) for i in data["top_items"]],
            attributes=dict(data.get("attributes", {})),
        )


@dataclass(frozen=True)
class GapReport:
    """Segments ranked worst-served first, and the same metrics over all analysed users."""

    segments: list[Segment]
    overall: dict[str, float]

    def to_json(self, include_users: bool = True) -> dict[str, Any]:
        """JSON-friendly dict for the HTTP endpoint; ``include_users=False`` drops user lists."""
        return {
            "segments": [s.to_json(include_users) for s in self.segments],
            "overall": {k: _num(v) for k, v in self.overall.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GapReport:
        """The report :meth:`to_json` described."""
        return cls(
            segments=[Segment.from_json(s) for s in data["segments"]],
            overall={k: _from_num(v) for k, v in data["overall"].items()},
        )


# ------------------------------------------------------------------------------ the analysis
def analyse_gaps(
    train: Interactions,
    model: Any,
    config: GapConfig | Mapping[str, Any] | None = None,
    *,
    heldout: Interactions | None = None,
    user_embeddings: np.ndarray | None = None,
    users: Users | Mapping[str, Sequence[Any]] | None = None,
) -> GapReport:
    """Cluster the users with train history and rank the clusters by how poorly they are served.

    ``model`` is a fitted recloop model; it is asked for ``recommend(queries, k)`` with each
    user's positive train history as the query (history excluded), 1,000 users per call.
    ``heldout`` makes satisfaction observed (NDCG@k); ``user_embeddings`` (one row per user
    of ``train``) replaces the SVD embedding; ``users`` (``Users`` or attribute lists) adds the
    majority value (or median, for numbers) of each attribute to the segments' ``attributes``.
    Users without positive train rows are left out (counted in ``overall["users_skipped"]``).
    """
    cfg = _check_config(config)
    n_users, n_items = _check_train(train)
    _check_model(model)
    attrs = _check_users(users, n_users)
    pos = train.positive()
    x = pos.to_csr()  # binary users × items
    active = np.flatnonzero(np.diff(x.indptr) > 0)
    if len(active) == 0:
        raise ConfigError("train: no user has a positive interaction to analyse")
    emb = _check_embeddings(user_embeddings, n_users)
    targets = _check_heldout(heldout, train, x) if heldout is not None else None

    # --- embed and cluster
    xa = x[active]
    with limit_threads(cfg.threads):
        if emb is None:
            emb_a = _svd_embed(xa, cfg.embedding_dim, cfg.seed, idf=cfg.item_weighting == "idf")
        else:
            emb_a = emb[active]
        labels = _cluster(emb_a, cfg.n_segments, cfg.n_init, cfg.seed)

    # --- recommendations from the train histories
    indptr, hist = pos.histories()
    queries = Queries(np.arange(n_users, dtype=np.int32), indptr, hist).take(active)
    recs, scores = _recommend(model, queries, cfg.k, n_items)

    # --- per-user signals
    kind = "observed" if targets is not None else "predicted"
    if targets is not None:
        sat_u, hit_u, has_t = _observed(recs, targets[active], cfg.k)
    else:
        sat_u, hit_u, has_t = _predicted(scores), None, np.ones(len(active), dtype=bool)
    head = head_items(pos, cfg.tail_share)
    tail = ~head
    rows_all = np.bincount(pos.user, minlength=n_users)[active].astype(np.float64)
    rows_tail = np.bincount(pos.user[tail[pos.item]], minlength=n_users)[active].astype(float)
    valid = recs >= 0
    slots = valid.sum(axis=1).astype(np.float64)
    slots_tail = (valid & tail[np.where(valid, recs, 0)]).sum(axis=1).astype(np.float64)
    rec_mat = _binary_rows(recs, n_items)

    # --- segment aggregates (an indicator matrix sums per-user values per segment)
    seg_ids = np.unique(labels)
    member = sp.csr_matrix(
        (np.ones(len(labels)), (np.searchsorted(seg_ids, labels), np.arange(len(labels)))),
        shape=(len(seg_ids), len(labels)),
    )
    groups = [member]  # each segment
    groups.append(sp.csr_matrix(np.ones((1, len(labels)))))  # everyone, for "overall"
    both = sp.vstack(groups).tocsr()
    size = np.asarray(both.sum(axis=1)).ravel()
    n_eval = both @ has_t.astype(np.float64)
    sat = _ratio(both @ np.where(has_t, sat_u, 0.0), n_eval)
    hit = _ratio(both @ np.where(has_t, hit_u, 0.0), n_eval) if hit_u is not None else None
    pairs = sp.csr_matrix(both @ xa)  # train users of each item, per group
    shown = sp.csr_matrix((both @ rec_mat) > 0, dtype=np.float64)
    cov = _ratio(np.asarray(pairs.multiply(shown).sum(axis=1)), np.asarray(pairs.sum(axis=1)))
    o = len(seg_ids)  # the "overall" row
    # the union over everyone covers more by construction: compare with the mean segment
    cov[o] = float(np.average(cov[:o], weights=size[:o]))
    demand = _ratio(both @ rows_tail, both @ rows_all)
    supply = _ratio(both @ slots_tail, both @ slots)

    weights = {s: float(cfg.weights.get(s, 0.0)) for s in SIGNALS}
    counts_seg = sp.csr_matrix(member @ xa)  # train users of each item, per segment
    counts_all = np.asarray(xa.sum(axis=0)).ravel()
    segments: list[Segment] = []
    for j, seg in enumerate(seg_ids.tolist()):
        gap = (
            weights["satisfaction"] * _relative_shortfall(sat[j], sat[o])
            + weights["coverage"] * _relative_shortfall(cov[j], cov[o])
            + weights["tail"] * max(0.0, _zero_if_nan(demand[j] - supply[j]))
        )
        members = active[labels == seg]
        extra: dict[str, Any] = {"users_evaluated": int(n_eval[j])}
        if hit is not None:
            extra["hit_rate"] = float(hit[j])
        extra.update(_attribute_summary(attrs, members))
        segments.append(
            Segment(
                segment=int(seg),
                users=members.astype(np.int64),
                size=len(members),
                satisfaction=float(sat[j]),
                satisfaction_kind=kind,
                coverage=float(cov[j]),
                tail_demand=float(demand[j]),
                tail_supply=float(supply[j]),
                gap=float(gap),
                top_items=_top_items(counts_seg, j, len(members), counts_all, len(active), cfg.k),
                attributes=extra,
            )
        )
    segments.sort(key=lambda s: (s.size < cfg.min_users, -s.gap, -s.size, s.segment))
    overall = {
        "users": float(len(active)),
        "users_skipped": float(n_users - len(active)),
        "users_evaluated": float(n_eval[o]),
        "segments": float(len(segments)),
        "satisfaction": float(sat[o]),
        "coverage": float(cov[o]),
        "tail_demand": float(demand[o]),
        "tail_supply": float(supply[o]),
        "head_items": float(head.sum()),
    }
    if hit is not None:
        overall["hit_rate"] = float(hit[o])
    return GapReport(segments=segments, overall=overall)


# ------------------------------------------------------------------------------ validation
def _check_config(config: GapConfig | Mapping[str, Any] | None) -> GapConfig:
    if config is None:
        return GapConfig()
    if isinstance(config, GapConfig):
        return config
    if isinstance(config, Mapping):
        try:
            return GapConfig(**config)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "config"
            raise ConfigError(f"config: field '{where}': {err['msg']}") from None
    raise ConfigError(f"config must be a GapConfig or a dict, not {type(config).__name__}")


def _check_train(train: Any) -> tuple[int, int]:
    if not isinstance(train, Interactions):
        raise ConfigError(f"train must be Interactions, not {type(train).__name__}")
    if train.n_items < 1 or train.n_users < 1:
        raise ConfigError("train: needs at least one user and one item")
    return train.n_users, train.n_items


def _check_model(model: Any) -> None:
    if not callable(getattr(model, "recommend", None)):
        raise ConfigError(f"model must have recommend(queries, k); {type(model).__name__} has not")


def _check_users(
    users: Users | Mapping[str, Sequence[Any]] | None, n_users: int
) -> dict[str, Sequence[Any]]:
    if users is None:
        return {}
    attrs = users.attributes if isinstance(users, Users) else users
    if not isinstance(attrs, Mapping):
        raise ConfigError(f"users must be Users or a dict of lists, not {type(users).__name__}")
    for name, values in attrs.items():
        if isinstance(values, str) or not hasattr(values, "__len__"):
            raise ConfigError(f"users: attribute {name!r} must be a list, one value per user")
        if len(values) != n_users:
            raise ConfigError(
                f"users: attribute {name!r} has {len(values)} values for {n_users} users"
            )
    return dict(attrs)


def _check_embeddings(emb: np.ndarray | None, n_users: int) -> np.ndarray | None:
    if emb is None:
        return None
    try:
        arr = np.asarray(emb, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError("user_embeddings must be a numeric (n_users, d) array") from None
    if arr.ndim != 2 or arr.shape[0] != n_users or arr.shape[1] < 1:
        raise ConfigError(
            f"user_embeddings must have shape ({n_users}, d) with d >= 1, not {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise ConfigError("user_embeddings must be finite")
    return arr


def _check_heldout(heldout: Any, train: Interactions, x: sp.csr_matrix) -> sp.csr_matrix:
    """Held-out positive items per user (CSR over all users), train items removed."""
    if not isinstance(heldout, Interactions):
        raise ConfigError(f"heldout must be Interactions, not {type(heldout).__name__}")
    if heldout.n_users != train.n_users or heldout.n_items != train.n_items:
        raise ConfigError(
            f"heldout has {heldout.n_users} users × {heldout.n_items} items, train "
            f"{train.n_users} × {train.n_items}: they must share the id maps"
        )
    held = heldout.to_csr()
    held = held - held.multiply(x)  # an item already in train can never be recommended
    held.eliminate_zeros()
    held.sort_indices()
    return sp.csr_matrix(held)


# ------------------------------------------------------------------------------ steps
def segment_map(
    train: Interactions,
    report: GapReport,
    config: GapConfig | Mapping[str, Any] | None = None,
    *,
    max_points: int = 2000,
) -> dict[str, Any]:
    """A 2-D map of the analysed users for plotting: the first two principal directions of
    the same user embedding the clustering used (``points``: x, y and the index of the
    user's segment in ``report.segments``, at most ``max_points`` users, an even sample)
    and each segment's centroid."""
    cfg = config if isinstance(config, GapConfig) else GapConfig.model_validate(config or {})
    x = train.positive().to_csr()
    members = [np.asarray(seg.users, dtype=np.int64) for seg in report.segments]
    users = np.concatenate(members) if members else np.zeros(0, dtype=np.int64)
    if len(users) < 3:
        return {"points": [], "centroids": []}
    index = np.concatenate([np.full(len(m), i) for i, m in enumerate(members)])
    with limit_threads(cfg.threads):
        emb = _svd_embed(x[users], cfg.embedding_dim, cfg.seed, idf=cfg.item_weighting == "idf")
    centred = emb - emb.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T
    if xy.shape[1] < 2:
        xy = np.column_stack([xy, np.zeros(len(xy))])
    pick = np.linspace(0, len(users) - 1, min(max_points, len(users))).astype(np.int64)
    points = [{"x": float(xy[i, 0]), "y": float(xy[i, 1]), "segment": int(index[i])} for i in pick]
    centroids = [
        {"segment": s, "x": float(xy[index == s, 0].mean()), "y": float(xy[index == s, 1].mean())}
        for s in range(len(members))
        if (index == s).any()
    ]
    return {"points": points, "centroids": centroids}


def _svd_embed(x: sp.csr_matrix, dim: int, seed: int, *, idf: bool = True) -> np.ndarray:
    """Truncated SVD of the (idf-weighted) binary rows, L2-normalised before and after."""
    xw = sp.csr_matrix(x, dtype=np.float64)
    if idf:
        df = np.asarray(xw.sum(axis=0)).ravel()
        xw = sp.csr_matrix(xw @ sp.diags(1.0 + np.log((1.0 + xw.shape[0]) / (1.0 + df))))
    norms = np.sqrt(np.asarray(xw.multiply(xw).sum(axis=1)).ravel())
    xn = sp.csr_matrix(sp.diags(1.0 / np.maximum(norms, 1e-12)) @ xw)
    d = min(dim, min(xn.shape))
    if min(xn.shape) <= d + 1 or xn.shape[0] * xn.shape[1] <= 250_000:
        u, s, _ = np.linalg.svd(xn.toarray(), full_matrices=False)
        emb = u[:, :d] * s[:d]
    else:
        from sklearn.decomposition import TruncatedSVD  # type: ignore[import-untyped]

        emb = TruncatedSVD(n_components=d, random_state=seed).fit_transform(xn)
    emb = np.asarray(emb, dtype=np.float64)
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


def _cluster(emb: np.ndarray, n_segments: int, n_init: int, seed: int) -> np.ndarray:
    """Seeded k-means labels; never more clusters than distinct embedding rows."""
    n_distinct = len(np.unique(np.round(emb, 12), axis=0))
    n = min(n_segments, n_distinct)
    if n <= 1:
        return np.zeros(len(emb), dtype=np.int64)
    from sklearn.cluster import KMeans  # type: ignore[import-untyped]
    from sklearn.exceptions import ConvergenceWarning  # type: ignore[import-untyped]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        km = KMeans(n_clusters=n, n_init=n_init, random_state=seed).fit(emb)
    return np.asarray(km.labels_, dtype=np.int64)


def _recommend(model: Any, queries: Queries, k: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k items and scores for every query, ``RECOMMEND_BATCH`` queries per call."""
    items = np.full((len(queries), k), -1, dtype=np.int64)
    scores = np.full((len(queries), k), -np.inf, dtype=np.float64)
    for lo in range(0, len(queries), RECOMMEND_BATCH):
        rows = np.arange(lo, min(lo + RECOMMEND_BATCH, len(queries)))
        got_items, got_scores = model.recommend(queries.take(rows), k)
        got_items, got_scores = np.asarray(got_items), np.asarray(got_scores, dtype=np.float64)
        if got_items.shape != (len(rows), k) or got_scores.shape != (len(rows), k):
            raise ConfigError(
                f"model: recommend(queries, {k}) returned shape {got_items.shape}, "
                f"expected ({len(rows)}, {k})"
            )
        if got_items.size and (got_items.min() < -1 or got_items.max() >= n_items):
            raise ConfigError(f"model: recommend returned item indices outside [0, {n_items})")
        items[rows] = got_items
        scores[rows] = np.where(got_items >= 0, got_scores, -np.inf)
    return items, scores


def _observed(
    recs: np.ndarray, targets: sp.csr_matrix, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-user NDCG@k and Hit@k against held-out items, and which users have any."""
    result = ranking_metrics(
        recs, targets.indptr, targets.indices, ks=(k,), metrics=("ndcg", "hit")
    )
    ndcg = np.zeros(len(recs))
    hit = np.zeros(len(recs))
    ndcg[result.rows] = result.per_user[f"ndcg@{k}"]
    hit[result.rows] = result.per_user[f"hit@{k}"]
    has = np.zeros(len(recs), dtype=bool)
    has[result.rows] = True
    return ndcg, hit, has


def _predicted(scores: np.ndarray) -> np.ndarray:
    """Mean top-k score per user, min-max normalised over all users' top-k scores."""
    finite = np.isfinite(scores)
    if not finite.any():
        return np.zeros(len(scores))
    lo, hi = float(scores[finite].min()), float(scores[finite].max())
    norm = (scores - lo) / (hi - lo) if hi > lo else np.ones_like(scores)
    return np.asarray(np.where(finite, norm, 0.0).mean(axis=1), dtype=np.float64)


def _binary_rows(recs: np.ndarray, n_items: int) -> sp.csr_matrix:
    rows, cols = np.nonzero(recs >= 0)
    mat = sp.csr_matrix((np.ones(len(rows)), (rows, recs[rows, cols])), shape=(len(recs), n_items))
    mat.data[:] = 1.0
    return mat


def _top_items(
    counts: sp.csr_matrix, row: int, size: int, all_counts: np.ndarray, n_users: int, n: int
) -> list[int]:
    """Items with the highest lift (segment rate / overall rate), among well-supported ones.

    Row ``row`` of ``counts`` holds the segment's users per item; ``size`` is its user count.
    Support: at least max(2, 5 % of the segment) of its users (any interacted item if none
    reaches it). Ties: more segment users first, then the lower item index.
    """
    lo, hi = counts.indptr[row], counts.indptr[row + 1]
    items = counts.indices[lo:hi].astype(np.int64)
    seg = counts.data[lo:hi].astype(np.float64)
    items, seg = items[seg > 0], seg[seg > 0]
    ok = seg >= max(2.0, math.ceil(0.05 * size))
    if ok.any():
        items, seg = items[ok], seg[ok]
    lift = (seg / size) / (all_counts[items] / n_users)
    order = np.lexsort((items, -seg, -lift))
    return [int(i) for i in items[order[:n]]]


def _attribute_summary(attrs: Mapping[str, Sequence[Any]], members: np.ndarray) -> dict[str, Any]:
    """Per attribute: the median of numbers, else the majority value and its share."""
    out: dict[str, Any] = {}
    for name, values in attrs.items():
        picked = [values[int(u)] for u in members]
        picked = [v for v in picked if v is not None and not _is_nan(v)]
        if not picked:
            continue
        if all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in picked):
            out[name] = {"median": float(np.median(np.asarray(picked, dtype=np.float64)))}
            continue
        counts = Counter(str(v) for v in picked)
        value, count = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        out[name] = {"majority": value, "share": count / len(picked)}
    return out


# ------------------------------------------------------------------------------ small helpers
def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64).ravel()
    den = np.asarray(den, dtype=np.float64).ravel()
    out = np.full(len(num), np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _relative_shortfall(value: float, overall: float) -> float:
    """1 − value / overall; 0 when either is undefined or overall is 0."""
    if not (math.isfinite(value) and math.isfinite(overall)) or overall <= 0:
        return 0.0
    return 1.0 - value / overall


def _zero_if_nan(v: float) -> float:
    return 0.0 if not math.isfinite(v) else float(v)


def _is_nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _num(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _from_num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _jsonable(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple | np.ndarray):
        return [_jsonable(x) for x in v]
    if isinstance(v, bool | np.bool_):
        return bool(v)
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        return _num(float(v))
    return v


__all__ = ["SIGNALS", "GapConfig", "GapReport", "Segment", "analyse_gaps"]
