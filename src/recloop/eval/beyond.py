"""Beyond-accuracy metrics of top-K lists: coverage, exposure Gini, popularity, novelty, ILD.

Popularity is ``p_i = (train users of i + 1) / (n_users + 1)``, so unseen items have a finite
novelty. Padding (−1) is ignored everywhere and an item repeated within a list counts once.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import scipy.sparse as sp

from recloop.data.types import Interactions
from recloop.eval.metrics import check_recommendations, first_occurrences, metric_name

GenreSets: TypeAlias = "sp.spmatrix | sp.sparray | Sequence[Iterable[Hashable] | str | None]"
"""Item genres: a sparse items × genres matrix, or one collection of genres per item."""

BEYOND_METRICS: tuple[str, ...] = ("coverage", "gini", "avg_popularity", "novelty", "ild")


@dataclass(frozen=True, eq=False)
class BeyondAccuracy:
    """Catalogue-level values (coverage, Gini) and per-list values (NaN where undefined)."""

    catalog_level: dict[str, float]
    per_user: dict[str, np.ndarray]

    @property
    def means(self) -> dict[str, float]:
        """Catalogue-level values plus per-list values averaged over the lists that define them."""
        out = dict(self.catalog_level)
        for name, values in self.per_user.items():
            defined = values[~np.isnan(values)]
            out[name] = float(defined.mean()) if len(defined) else float("nan")
        return out


def item_popularity(train: Interactions) -> np.ndarray:
    """``p_i = (distinct users with a positive train interaction on i + 1) / (n_users + 1)``."""
    users_per_item = np.asarray(train.to_csr().sum(axis=0)).ravel()
    return (users_per_item + 1.0) / (train.n_users + 1.0)


def _top(recommendations: np.ndarray, k: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` columns and the mask of the distinct real items in them."""
    recs = check_recommendations(recommendations)
    if k is not None:
        if k < 1 or k > recs.shape[1]:
            raise ValueError(f"k must be in 1..{recs.shape[1]}, not {k}")
        recs = recs[:, :k]
    return recs, first_occurrences(recs)


def exposure_counts(recommendations: np.ndarray, n_items: int, k: int | None = None) -> np.ndarray:
    """How many top-``k`` lists show each of the ``n_items`` items (zero counts included)."""
    recs, shown = _top(recommendations, k)
    items = recs[shown]
    if len(items) and items.max() >= n_items:
        raise ValueError(f"recommended item {int(items.max())} is outside the {n_items} items")
    return np.bincount(items, minlength=n_items)


def coverage(recommendations: np.ndarray, n_items: int, k: int | None = None) -> float:
    """``|∪_u R_u| / |I|``: the share of the catalogue shown in at least one top-``k`` list."""
    if n_items <= 0:
        raise ValueError("n_items must be positive")
    return float((exposure_counts(recommendations, n_items, k) > 0).sum() / n_items)


def gini(counts: np.ndarray) -> float:
    """Gini index of non-negative counts: 0 when all are equal, (n−1)/n when one holds all.

    ``G = Σ_i (2i − n − 1) x_(i) / (n Σ x)`` over the ascending counts x_(1..n); NaN if Σ x = 0.
    """
    x = np.sort(np.asarray(counts, dtype=np.float64).ravel())
    if len(x) and x[0] < 0:
        raise ValueError("gini needs non-negative counts")
    n, total = len(x), x.sum()
    if n == 0 or total == 0:
        return float("nan")
    rank = np.arange(1, n + 1, dtype=np.float64)
    return float(((2.0 * rank - n - 1.0) * x).sum() / (n * total))


def exposure_gini(recommendations: np.ndarray, n_items: int, k: int | None = None) -> float:
    """Gini of item exposure in the top-``k`` lists over all ``n_items`` items."""
    return gini(exposure_counts(recommendations, n_items, k))


def _per_list_mean(recs: np.ndarray, shown: np.ndarray, values: np.ndarray) -> np.ndarray:
    per_slot = np.where(shown, values[np.where(shown, recs, 0)], 0.0)
    n_shown = shown.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_shown > 0, per_slot.sum(axis=1) / n_shown, np.nan)


def _check_popularity(recs: np.ndarray, shown: np.ndarray, popularity: np.ndarray) -> np.ndarray:
    pop = np.asarray(popularity, dtype=np.float64)
    if pop.ndim != 1:
        raise ValueError("popularity must be a 1-D array over items")
    if shown.any() and recs[shown].max() >= len(pop):
        raise ValueError(f"recommended item {int(recs[shown].max())} has no popularity value")
    return pop


def average_popularity(
    recommendations: np.ndarray, popularity: np.ndarray, k: int | None = None
) -> np.ndarray:
    """Mean ``p_i`` over the items of each top-``k`` list (NaN for an empty list)."""
    recs, shown = _top(recommendations, k)
    return _per_list_mean(recs, shown, _check_popularity(recs, shown, popularity))


def novelty(
    recommendations: np.ndarray, popularity: np.ndarray, k: int | None = None
) -> np.ndarray:
    """Mean self-information ``−log2 p_i`` over the items of each list (NaN for an empty list)."""
    recs, shown = _top(recommendations, k)
    pop = _check_popularity(recs, shown, popularity)
    if (pop <= 0).any():
        raise ValueError("novelty needs strictly positive popularity values")
    return _per_list_mean(recs, shown, -np.log2(pop))


def genre_matrix(genres: GenreSets) -> sp.csr_matrix:
    """Binary items × genres CSR from a sparse matrix or one genre collection per item.

    A string is one genre (not split into characters) and ``None`` is an empty set.
    """
    if sp.issparse(genres):
        mat = sp.csr_matrix(genres, dtype=np.float32, copy=True)  # the caller's stays as it is
        mat.sum_duplicates()
        mat.eliminate_zeros()
        mat.data[:] = 1.0
        return mat
    vocabulary: dict[Hashable, int] = {}
    indptr = [0]
    indices: list[int] = []
    for value in genres:
        members: Iterable[Hashable]
        if value is None:
            members = ()
        elif isinstance(value, str):
            members = (value,)
        else:
            members = value
        row = {vocabulary.setdefault(g, len(vocabulary)) for g in members}
        indices.extend(sorted(row))
        indptr.append(len(indices))
    data = np.ones(len(indices), dtype=np.float32)
    return sp.csr_matrix(
        (data, np.asarray(indices, dtype=np.int64), np.asarray(indptr, dtype=np.int64)),
        shape=(len(indptr) - 1, len(vocabulary)),
    )


def intra_list_diversity(
    recommendations: np.ndarray,
    genres: GenreSets,
    k: int | None = None,
    *,
    chunk_cells: int = 1 << 24,
) -> np.ndarray:
    """Mean pairwise ``1 − Jaccard(genres_a, genres_b)`` within each top-``k`` list.

    Lists with fewer than two items are NaN. Two items that both lack genres count as identical
    (distance 0). Lists are processed in chunks of about ``chunk_cells`` dense cells.
    """
    recs, shown = _top(recommendations, k)
    mat = genre_matrix(genres)  # binary: a weighted or boolean matrix would skew the Jaccard
    if shown.any() and recs[shown].max() >= mat.shape[0]:
        raise ValueError(f"recommended item {int(recs[shown].max())} has no genre entry")
    n, width = recs.shape
    out = np.full(n, np.nan)
    if n == 0 or width < 2:
        return out
    upper = np.triu(np.ones((width, width), dtype=bool), k=1)
    n_genres = max(mat.shape[1], 1)
    step = max(1, chunk_cells // (width * max(n_genres, width)))
    for start in range(0, n, step):
        items = recs[start : start + step]
        mask = shown[start : start + step]
        dense = mat[np.where(mask, items, 0).ravel()].toarray()
        dense = dense.reshape(len(items), width, mat.shape[1])  # (lists, K, genres)
        inter = dense @ dense.transpose(0, 2, 1)  # (lists, K, K) shared genres
        inter = inter.astype(np.float64)  # counts are exact in float32; divide in float64
        size = dense.sum(axis=2, dtype=np.float64)
        union = size[:, :, None] + size[:, None, :] - inter
        with np.errstate(invalid="ignore", divide="ignore"):
            distance = np.where(union > 0, 1.0 - inter / union, 0.0)
        pairs = mask[:, :, None] & mask[:, None, :] & upper
        n_pairs = pairs.sum(axis=(1, 2))
        total = np.where(pairs, distance, 0.0).sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start : start + step] = np.where(n_pairs > 0, total / n_pairs, np.nan)
    return out


def beyond_accuracy(
    recommendations: np.ndarray,
    n_items: int,
    ks: Sequence[int] = (10, 20),
    *,
    popularity: np.ndarray | None = None,
    genres: GenreSets | None = None,
) -> BeyondAccuracy:
    """Coverage and Gini at each k; popularity and novelty if ``popularity``; ILD if ``genres``."""
    catalog_level: dict[str, float] = {}
    per_user: dict[str, np.ndarray] = {}
    genre_mat = genre_matrix(genres) if genres is not None else None
    for k in ks:
        catalog_level[metric_name("coverage", k)] = coverage(recommendations, n_items, k)
        catalog_level[metric_name("gini", k)] = exposure_gini(recommendations, n_items, k)
    if popularity is not None:
        for k in ks:
            per_user[metric_name("avg_popularity", k)] = average_popularity(
                recommendations, popularity, k
            )
        for k in ks:
            per_user[metric_name("novelty", k)] = novelty(recommendations, popularity, k)
    if genre_mat is not None:
        for k in ks:
            per_user[metric_name("ild", k)] = intra_list_diversity(recommendations, genre_mat, k)
    return BeyondAccuracy(catalog_level=catalog_level, per_user=per_user)
