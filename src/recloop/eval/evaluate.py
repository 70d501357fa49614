"""Run a model over an :class:`~recloop.data.split.EvalSet` and collect every metric.

Full ranking: each query is ranked against the whole catalogue minus its exclusions, in
batches of users. Models with ``score`` are ranked here by :func:`recloop.models.base.top_k`
(one tie rule for all); the others (e.g. TIGER) through their own ``recommend``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from recloop.data.split import EvalSet
from recloop.data.types import Catalog, Exclusions, Interactions, Queries, Users
from recloop.errors import ConfigError, RecloopError
from recloop.eval.beyond import beyond_accuracy, item_popularity
from recloop.eval.metrics import METRICS, ranking_metrics
from recloop.eval.segments import (
    SegmentTable,
    breakdown,
    head_items,
    item_band_breakdown,
    user_segments,
)
from recloop.models.base import top_k

PROTOCOL = "full ranking over all items minus exclusions; binary relevance"
CELLS_PER_BATCH = 1 << 24
"""Default batch: about this many score cells (users × items) per ``score`` call."""


class Ranker(Protocol):
    """What evaluation needs from a model: ``recommend``; ``score`` is used when it exists.

    Every :class:`~recloop.models.base.Recommender` is a Ranker.
    """

    def recommend(
        self, queries: Queries, k: int, exclude: Exclusions | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(eq=False)
class EvalResult:
    """Means, per-user values and top-K lists of one model on one evaluation set.

    ``users``, every array in ``per_user`` and the rows of ``recommendations`` are aligned:
    one entry per evaluated user (a user with at least one target), in EvalSet order.
    """

    ks: tuple[int, ...]
    metrics: dict[str, float]
    per_user: dict[str, np.ndarray]
    users: np.ndarray
    recommendations: np.ndarray
    n_items: int
    beyond: dict[str, float] = field(default_factory=dict)
    segments: SegmentTable = field(default_factory=dict)
    seconds: float = 0.0
    model: str = ""
    protocol: str = PROTOCOL

    @property
    def n_users(self) -> int:
        return len(self.users)

    def to_dict(self, *, per_user: bool = False) -> dict[str, Any]:
        """A JSON-ready summary (NaN as ``None``); ``per_user=True`` adds per-user arrays."""
        out: dict[str, Any] = {
            "model": self.model,
            "protocol": self.protocol,
            "ks": list(self.ks),
            "n_users": self.n_users,
            "n_items": self.n_items,
            "seconds": self.seconds,
            "metrics": dict(self.metrics),
            "beyond": dict(self.beyond),
            "segments": self.segments,
        }
        if per_user:
            out["users"] = self.users.tolist()
            out["per_user"] = {name: values.tolist() for name, values in self.per_user.items()}
        return _json_ready(out)


def _json_ready(value: Any) -> Any:
    """NaN (an undefined mean) becomes ``None`` so strict JSON parsers accept the output."""
    if isinstance(value, dict):
        return {key: _json_ready(v) for key, v in value.items()}
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _n_items(
    model: Ranker,
    n_items: int | None,
    train: Interactions | None,
    catalog: Catalog | None,
) -> int | None:
    """The catalogue size from the first source that knows it."""
    if n_items is not None:
        return int(n_items)
    if train is not None:
        return train.n_items
    if catalog is not None:
        return len(catalog)
    fitted = getattr(model, "n_items_", None)
    return int(fitted) if fitted is not None else None


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("users"),
        TimeElapsedColumn(),
        transient=True,
        disable=not enabled,
    )


def evaluate(
    model: Ranker,
    eval_set: EvalSet,
    ks: Sequence[int] = (10, 20),
    *,
    batch_size: int | None = None,
    train: Interactions | None = None,
    catalog: Catalog | None = None,
    users: Users | None = None,
    progress: bool = True,
    n_items: int | None = None,
    metrics: Sequence[str] = METRICS,
    genre_attribute: str = "genres",
) -> EvalResult:
    """Rank every query of ``eval_set`` in full and compute ranking metrics at each k in ``ks``.

    ``train`` enables popularity, novelty, activity segments and head/tail bands; ``catalog``
    (its ``genre_attribute``) enables intra-list diversity; ``users`` gender and age segments.
    ``batch_size`` defaults to about 16M score cells per batch.
    """
    ks = tuple(dict.fromkeys(int(k) for k in ks))
    if not ks or min(ks) < 1:
        raise ConfigError("ks must hold at least one positive cut-off")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch_size must be positive, not {batch_size}")
    max_k = max(ks)
    size = _n_items(model, n_items, train, catalog)
    if catalog is not None and size is not None and len(catalog) != size:
        raise ConfigError(f"catalog has {len(catalog)} items, evaluation uses {size}")
    score = getattr(model, "score", None)
    n = len(eval_set)
    if batch_size is None:
        batch_size = max(1, CELLS_PER_BATCH // max(size or 1, 1))
    recommendations = np.full((n, max_k), -1, dtype=np.int64)
    name = type(model).__name__
    started = time.perf_counter()
    with _progress(progress) as bar:
        task = bar.add_task(f"evaluating {name}", total=n)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            batch = eval_set.take(np.arange(start, stop))
            if callable(score):
                scores = np.asarray(score(batch.queries))
                if size is None:
                    size = scores.shape[1]
                if scores.shape != (stop - start, size):
                    raise RecloopError(
                        f"{name}.score returned shape {scores.shape}, "
                        f"expected ({stop - start}, {size})"
                    )
                items, _ = top_k(scores, max_k, batch.exclude.to_csr(size))
            else:
                items, _ = model.recommend(batch.queries, max_k, batch.exclude)
                items = np.asarray(items)
                if items.shape != (stop - start, max_k):
                    raise RecloopError(
                        f"{name}.recommend returned shape {items.shape}, "
                        f"expected ({stop - start}, {max_k})"
                    )
            recommendations[start:stop] = items
            bar.advance(task, stop - start)
    if size is None:  # recommend-only model and nothing else knew the catalogue size
        targets_max = int(eval_set.targets_items.max(initial=-1))
        size = max(int(recommendations.max(initial=-1)), targets_max) + 1

    ranking = ranking_metrics(
        recommendations, eval_set.targets_indptr, eval_set.targets_items, ks, metrics
    )
    rows = ranking.rows
    recs = recommendations[rows]
    per_user = dict(ranking.per_user)

    popularity = item_popularity(train) if train is not None else None
    genres = None
    if catalog is not None and genre_attribute in catalog.attributes:
        genres = catalog.attributes[genre_attribute]
    beyond = beyond_accuracy(recs, size, ks, popularity=popularity, genres=genres)
    per_user.update(beyond.per_user)

    segments: SegmentTable = {}
    user_index = eval_set.queries.user[rows]
    if users is not None or train is not None:
        labels = user_segments(user_index, users=users, train=train)
        segments = breakdown(per_user, labels)
    if train is not None:
        sub = eval_set.take(rows)
        segments["item_band"] = item_band_breakdown(
            recs, sub.targets_indptr, sub.targets_items, head_items(train), ks, metrics
        )
    return EvalResult(
        ks=ks,
        metrics=ranking.means,
        per_user=per_user,
        users=user_index,
        recommendations=recs,
        n_items=size,
        beyond=beyond.means,
        segments=segments,
        seconds=time.perf_counter() - started,
        model=name,
    )
