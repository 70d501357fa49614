"""Item-based k-nearest neighbours: shrunk cosine item–item similarity, top-k kept per item.

``score(u, j) = Σ_{i ∈ history(u)} w_ij`` where ``w_ij`` is the cosine similarity of items
``i`` and ``j`` over users, shrunk towards zero for rarely co-consumed pairs
(``dot / (‖i‖‖j‖ + shrink)``), and kept only when ``i`` is among the ``k`` most similar items
to ``j`` (Sarwar et al. 2001; Deshpande & Karypis 2004; Dacrema et al. 2019's tuned baseline).

The similarity is computed sparsely for a block of target items at a time and pruned to its
top ``k`` before the next block, so memory stays ``O(block co-occurrences + n_items · k)``: a
100k-item catalogue never materialises its dense item × item matrix.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from recloop.data.types import Catalog, Interactions, Queries, Users
from recloop.models.base import ModelConfig, ScoringRecommender

# Co-occurrence entries per similarity block; at ~60 bytes each while a block is ranked,
# about 250 MB.
_BLOCK_ENTRIES = 2**22

# Okapi BM25 constants, the usual defaults.
_BM25_K1 = 1.2
_BM25_B = 0.75


class ItemKNNConfig(ModelConfig):
    """Neighbourhood size, shrinkage and optional re-weighting of the item–user matrix."""

    k: int = Field(default=200, ge=1, description="Neighbours kept per item.")
    shrink: float = Field(
        default=10.0,
        ge=0.0,
        description="Added to the norm product: damps similarities backed by few users.",
    )
    feature_weighting: Literal["none", "tfidf", "bm25"] = Field(
        default="none",
        description=(
            "Re-weight each user's column of the item × user matrix before the similarity "
            "(users as terms, items as documents), so very active users count less."
        ),
    )
    normalize: bool = Field(
        default=False,
        description=(
            "Divide each item's kept neighbour weights by their sum, so its score is the share "
            "of its neighbourhood in the history (a weighted average; favours niche items)."
        ),
    )


class ItemKNN(ScoringRecommender):
    """Item–item collaborative filtering with a sparse top-k similarity matrix."""

    config_class = ItemKNNConfig
    config: ItemKNNConfig

    def _fit(self, train: Interactions, catalog: Catalog | None, users: Users | None) -> None:
        x = train.to_csr()  # users × items, binary
        x = _weight_features(x, self.config.feature_weighting)
        weights = item_similarity(x, self.config.k, self.config.shrink)  # target × neighbour
        if self.config.normalize:
            sums = np.asarray(weights.sum(axis=1)).ravel()
            sums[sums == 0] = 1.0
            weights = sp.diags(1.0 / sums).astype(np.float32) @ weights
        # stored as neighbour × target so that scores = history @ weights
        self.weights_ = weights.T.tocsr().astype(np.float32)
        self.weights_.sort_indices()

    def _score(self, queries: Queries) -> np.ndarray:
        history = queries.history_csr(self.n_items_)
        return np.asarray((history @ self.weights_).toarray(), dtype=np.float32)

    def _state(self) -> dict[str, np.ndarray]:
        return {
            "weights_indptr": self.weights_.indptr.astype(np.int64),
            "weights_indices": self.weights_.indices.astype(np.int32),
            "weights_data": self.weights_.data.astype(np.float32),
        }

    def _set_state(self, arrays: dict[str, np.ndarray], manifest: dict[str, Any]) -> None:
        n = self.n_items_
        self.weights_ = sp.csr_matrix(
            (arrays["weights_data"], arrays["weights_indices"], arrays["weights_indptr"]),
            shape=(n, n),
        )


def item_similarity(
    x: sp.csr_matrix, k: int, shrink: float, *, block_entries: int = _BLOCK_ENTRIES
) -> sp.csr_matrix:
    """Top-``k`` shrunk cosine neighbours of every item, as a target × neighbour CSR.

    Row ``j`` holds the positive similarities of ``j``'s ``k`` nearest items (ties to the lower
    item index); an item is never its own neighbour. ``x`` is users × items. Target items are
    processed in blocks whose co-occurrence count stays under ``block_entries``, and every
    step is sparse, so the cost follows the data's co-occurrences, not ``n_items²``.
    """
    x = sp.csr_matrix(x, dtype=np.float32)
    n_items = x.shape[1]
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0), dtype=np.float32).ravel())
    x_t = x.T.tocsr()  # items × users
    # an upper bound on each target's nonzero similarities: the rows its users contribute
    user_sizes = np.diff(x.indptr).astype(np.float64)
    bound = np.minimum(np.asarray(x_t @ user_sizes).ravel(), n_items)
    ends = _block_ends(bound, block_entries)
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    start = 0
    for stop in ends if n_items > 1 else []:
        dots = (x_t[start:stop] @ x).tocsr()  # block × items, sparse
        target = start + np.repeat(np.arange(stop - start), np.diff(dots.indptr))
        neighbour = dots.indices.astype(np.int64)
        sim = dots.data / (norms[target] * norms[neighbour] + np.float32(shrink))
        keep = (sim > 0) & (neighbour != target)
        target, neighbour, sim = target[keep], neighbour[keep], sim[keep]
        order = np.lexsort((neighbour, -sim, target))  # by target, best first, low index on ties
        target, neighbour, sim = target[order], neighbour[order], sim[order]
        first = np.searchsorted(target, target, side="left")
        top = np.arange(len(target)) - first < k
        rows.append(target[top])
        cols.append(neighbour[top])
        vals.append(sim[top].astype(np.float32))
        start = stop
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    v = np.concatenate(vals) if vals else np.zeros(0, np.float32)
    out = sp.csr_matrix((v, (r, c)), shape=(n_items, n_items), dtype=np.float32)
    out.sort_indices()
    return out


def _block_ends(cost: np.ndarray, budget: int) -> list[int]:
    """Cut ``0..len(cost)`` into consecutive blocks whose summed cost stays within ``budget``.

    A single item costlier than the budget gets a block of its own.
    """
    ends: list[int] = []
    start, n = 0, len(cost)
    cumulative = np.concatenate([[0.0], np.cumsum(cost)])
    while start < n:
        stop = int(np.searchsorted(cumulative, cumulative[start] + budget, side="right")) - 1
        stop = min(n, max(stop, start + 1))
        ends.append(stop)
        start = stop
    return ends


def _weight_features(x: sp.csr_matrix, scheme: str) -> sp.csr_matrix:
    """TF-IDF or BM25 weights on the item × user matrix (items are the documents).

    A user's inverse document frequency ``log(n_items / (1 + |history|))`` makes heavy users
    count less; BM25 also saturates and length-normalises per item. Returns users × items.
    """
    if scheme == "none":
        return x
    docs = sp.csr_matrix(x.T, dtype=np.float32)  # items × users
    docs.sum_duplicates()
    n_docs = docs.shape[0]
    df = np.bincount(docs.indices, minlength=docs.shape[1]).astype(np.float32)
    idf = np.maximum(np.log(n_docs / (1.0 + df)), 0.0).astype(np.float32)
    row_of = np.repeat(np.arange(n_docs), np.diff(docs.indptr))
    if scheme == "tfidf":
        docs.data = np.sqrt(docs.data) * idf[docs.indices]
    else:  # bm25
        length = np.asarray(docs.sum(axis=1), dtype=np.float32).ravel()
        avg = float(length.mean()) if n_docs and length.mean() > 0 else 1.0
        norm = (1.0 - _BM25_B) + _BM25_B * length / avg
        tf = docs.data
        docs.data = tf * (_BM25_K1 + 1.0) / (_BM25_K1 * norm[row_of] + tf) * idf[docs.indices]
    return sp.csr_matrix(docs.T, dtype=np.float32)
