"""ItemKNN: the shared contract and the blocked top-k similarity against a dense reference."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import scipy.sparse as sp

from recloop.data import Interactions, Queries
from recloop.models.base import ModelConfig
from recloop.models.itemknn import ItemKNN, ItemKNNConfig, _block_ends, item_similarity

from .contract import ModelContract


class TestItemKNNContract(ModelContract):
    model_class = ItemKNN
    invalid_configs: ClassVar = [
        {"k": 0},
        {"shrink": -1.0},
        {"feature_weighting": "idf"},
        {"normalize": "sometimes"},
    ]

    def make_config(self) -> ModelConfig:
        return ItemKNNConfig(k=20, shrink=2.0)


def _dense_reference(x: np.ndarray, k: int, shrink: float) -> np.ndarray:
    """Top-k shrunk cosine per target row, computed densely."""
    norms = np.sqrt((x * x).sum(axis=0))
    sim = (x.T @ x) / (norms[:, None] * norms[None, :] + shrink)
    np.fill_diagonal(sim, 0.0)
    out = np.zeros_like(sim)
    for j in range(sim.shape[0]):
        top = np.argsort(-sim[j], kind="stable")[:k]
        out[j, top] = sim[j, top]
    return np.where(out > 0, out, 0.0)


def _weighted_matrix(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((50, 30)) < 0.3) * rng.random((50, 30))  # no ties in similarity


def test_similarity_matches_dense_reference() -> None:
    x = _weighted_matrix()
    for k, shrink in [(5, 0.0), (5, 3.0), (29, 1.0), (100, 0.0)]:
        got = item_similarity(sp.csr_matrix(x), k, shrink).toarray()
        np.testing.assert_allclose(got, _dense_reference(x, k, shrink), rtol=1e-5, atol=1e-7)


def test_blocks_give_the_same_result_as_one_pass() -> None:
    x = sp.csr_matrix(_weighted_matrix(1))
    one = item_similarity(x, 7, 2.0)
    tiny_blocks = item_similarity(x, 7, 2.0, block_entries=1)  # one target item per block
    np.testing.assert_array_equal(tiny_blocks.toarray(), one.toarray())
    assert (np.diff(one.indptr) <= 7).all()


def test_scores_sum_neighbour_weights_over_the_history() -> None:
    rng = np.random.default_rng(3)
    users, items = np.nonzero(rng.random((60, 25)) < 0.3)
    model = ItemKNN(ItemKNNConfig(k=5, shrink=1.0)).fit(Interactions.from_arrays(users, items))
    x = Interactions.from_arrays(users, items).to_csr()
    sim = item_similarity(x, 5, 1.0).toarray()  # target × neighbour
    query = Queries.from_lists([-1], [[1, 4, 9]])
    np.testing.assert_allclose(model.score(query)[0], sim[:, [1, 4, 9]].sum(axis=1), rtol=1e-6)


def test_normalize_makes_each_neighbourhood_sum_to_one() -> None:
    rng = np.random.default_rng(4)
    users, items = np.nonzero(rng.random((60, 25)) < 0.3)
    data = Interactions.from_arrays(users, items)
    model = ItemKNN(ItemKNNConfig(k=5, normalize=True)).fit(data)
    sums = np.asarray(model.weights_.sum(axis=0)).ravel()  # per target item
    np.testing.assert_allclose(sums[sums > 0], 1.0, rtol=1e-5)


def test_feature_weighting_changes_similarity_and_stays_finite() -> None:
    rng = np.random.default_rng(5)
    users, items = np.nonzero(rng.random((80, 30)) < np.linspace(0.05, 0.8, 80)[:, None])
    data = Interactions.from_arrays(users, items)
    plain = ItemKNN(ItemKNNConfig(k=10, shrink=5.0)).fit(data).weights_.toarray()
    for scheme in ("tfidf", "bm25"):
        weighted = ItemKNN(ItemKNNConfig(k=10, shrink=5.0, feature_weighting=scheme)).fit(data)
        w = weighted.weights_.toarray()
        assert np.isfinite(w).all() and (w >= 0).all()
        assert not np.allclose(w, plain)


def test_single_item_catalogue() -> None:
    model = ItemKNN().fit(Interactions.from_arrays([0, 1], [0, 0]))
    assert model.weights_.nnz == 0
    items, _ = model.recommend(Queries.from_lists([-1], [[]]), 3)
    assert items.tolist() == [[0, -1, -1]]


def test_block_ends_respect_the_budget() -> None:
    assert _block_ends(np.array([1.0, 1, 1, 1, 1]), 2) == [2, 4, 5]
    assert _block_ends(np.array([5.0, 1, 1]), 2) == [1, 3]  # a costly item stands alone
    assert _block_ends(np.array([1.0, 1]), 100) == [2]
    assert _block_ends(np.zeros(0), 10) == []


def test_ties_go_to_the_lower_item_index() -> None:
    # items 1, 2 and 3 are each co-consumed with item 0 exactly alike
    data = Interactions.from_arrays([0, 0, 1, 1, 2, 2], [0, 3, 0, 2, 0, 1])
    sim = item_similarity(data.to_csr(), 2, 0.0).toarray()
    assert np.flatnonzero(sim[0]).tolist() == [1, 2]
