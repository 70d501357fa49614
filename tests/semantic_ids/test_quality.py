"""level_report: hand-computed values, uniform pair sampling, planted coherence, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Self

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recloop.errors import ConfigError
from recloop.semantic_ids.quality import _mean_jaccard, _sample_pairs, level_report
from recloop.semantic_ids.tokenizers import (
    ResidualKMeans,
    ResidualKMeansConfig,
    TokenizerConfig,
)

from .test_tokenizers import CLUSTERS, clustered

torch.set_num_threads(1)


class ZeroTokenizer:
    """A stand-in whose reconstruction is always zero, so the MSE is the mean square."""

    config = TokenizerConfig(levels=2, codebook_size=4)
    levels = 2
    codebook_size = 4

    def fit(self, embeddings: np.ndarray) -> Self:
        return self

    def encode(self, embeddings: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def reconstruct(self, codes: np.ndarray, depth: int) -> np.ndarray:
        return np.zeros((len(codes), 2), dtype=np.float32)

    def save(self, path: Path) -> None:
        raise NotImplementedError

    @classmethod
    def load(cls, path: Path) -> Self:
        raise NotImplementedError


def jaccard(a: set[int], b: set[int]) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


def test_level_report_by_hand() -> None:
    codes = np.array([[0, 0], [0, 1], [1, 0], [1, 0]])
    x = np.array([[1, 1], [2, 0], [0, 0], [0, 3]], dtype=np.float32)
    users = [{0, 1}, {1, 2}, {0, 1, 2}, {1}]  # users of each item
    rows, cols = zip(*[(u, i) for i, us in enumerate(users) for u in us], strict=True)
    inter = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(3, 4))
    report = level_report(x, codes, ZeroTokenizer(), inter)

    all_pairs = [jaccard(users[i], users[j]) for i in range(4) for j in range(i + 1, 4)]
    level1_pairs = [jaccard(users[0], users[1]), jaccard(users[2], users[3])]
    assert report[0] == pytest.approx(
        {
            "level": 1,
            "utilisation": 2 / 4,
            "perplexity": 2.0,
            "reconstruction_mse": np.mean(x**2),
            "collision_rate": 1.0,
            "coherence_prefix_jaccard": np.mean(level1_pairs),
            "coherence_random_jaccard": np.mean(all_pairs),
            "coherence_lift": np.mean(level1_pairs) / np.mean(all_pairs),
        }
    )
    usage = np.array([3, 1]) / 4
    assert report[1]["utilisation"] == pytest.approx(2 / 4)
    assert report[1]["perplexity"] == pytest.approx(np.exp(-(usage * np.log(usage)).sum()))
    assert report[1]["collision_rate"] == pytest.approx(0.5)  # items 2 and 3 share (1, 0)
    assert report[1]["coherence_prefix_jaccard"] == pytest.approx(1 / 3)


def test_without_collisions_or_interactions_coherence_is_none() -> None:
    codes = np.array([[0, 0], [0, 1], [1, 2], [1, 3]])
    x = np.zeros((4, 2), dtype=np.float32)
    inter = sp.csr_matrix(np.eye(4))
    report = level_report(x, codes, ZeroTokenizer(), inter)
    assert report[1]["collision_rate"] == 0.0
    assert report[1]["coherence_prefix_jaccard"] is None
    assert report[1]["coherence_random_jaccard"] == 0.0  # nobody shares a user
    assert report[0]["coherence_lift"] is None  # 0 / 0
    for row in level_report(x, codes, ZeroTokenizer(), None):
        assert row["coherence_prefix_jaccard"] is None
        assert row["coherence_random_jaccard"] is None
        assert row["coherence_lift"] is None


def test_mean_jaccard_equals_a_loop_over_sets() -> None:
    rng = np.random.default_rng(0)
    dense = rng.random((30, 12)) < 0.2
    dense[:, 5] = False  # an item nobody consumed
    item_users = sp.csr_matrix(dense.T.astype(np.float64))
    i, j = rng.integers(0, 12, 200), rng.integers(0, 12, 200)
    sets = [set(np.flatnonzero(dense[:, k])) for k in range(12)]
    expected = np.mean([jaccard(sets[a], sets[b]) for a, b in zip(i, j, strict=True)])
    assert _mean_jaccard(item_users, i, j) == pytest.approx(expected)


def test_pairs_are_enumerated_when_few() -> None:
    group = np.array([2, 0, 2, 1, 2, 0])
    i, j = _sample_pairs(group, 100, np.random.default_rng(0))
    found = {tuple(sorted(p)) for p in zip(i.tolist(), j.tolist(), strict=True)}
    assert len(i) == 4
    assert found == {(1, 5), (0, 2), (0, 4), (2, 4)}


def test_pairs_are_sampled_uniformly_over_same_group_pairs() -> None:
    group = np.repeat([0, 1, 2], [50, 200, 1])  # 1,225 + 19,900 pairs; item 250 is alone
    group = np.random.default_rng(1).permutation(group)
    i, j = _sample_pairs(group, 20_000, np.random.default_rng(0))
    assert len(i) == 20_000
    assert (i != j).all()
    assert (group[i] == group[j]).all()
    assert np.mean(group[i] == 0) == pytest.approx(1_225 / 21_125, abs=0.006)
    members = np.flatnonzero(group == 1)
    counts = np.bincount(np.r_[i[group[i] == 1], j[group[j] == 1]], minlength=len(group))
    assert counts[members].std() / counts[members].mean() < 0.15  # every member equally likely


def test_seeded_sampling_is_repeatable() -> None:
    group = np.repeat([0, 1], [300, 300])
    first = _sample_pairs(group, 1_000, np.random.default_rng(3))
    second = _sample_pairs(group, 1_000, np.random.default_rng(3))
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


# -- planted coherence ----------------------------------------------------------------


@pytest.fixture(scope="module")
def planted() -> tuple[np.ndarray, np.ndarray, ResidualKMeans, sp.csr_matrix]:
    """Clustered items, residual k-means codes, and users who each consume one cluster."""
    x, labels = clustered(n_per=30)
    tokenizer = ResidualKMeans(ResidualKMeansConfig(levels=2, codebook_size=CLUSTERS)).fit(x)
    rng = np.random.default_rng(0)
    rows, cols = [], []
    for user in range(300):
        members = np.flatnonzero(labels == rng.integers(CLUSTERS))
        rows += [user] * 8
        cols += rng.choice(members, 8, replace=False).tolist()
    inter = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(300, len(x)))
    return x, tokenizer.encode(x), tokenizer, inter


def test_prefixes_of_co_consumed_clusters_are_coherent(
    planted: tuple[np.ndarray, np.ndarray, ResidualKMeans, sp.csr_matrix],
) -> None:
    x, codes, tokenizer, inter = planted
    report = level_report(x, codes, tokenizer, inter, pairs=5_000)
    assert len(report) == 2
    assert report[0]["utilisation"] == 1.0
    assert report[0]["perplexity"] == pytest.approx(CLUSTERS, rel=0.05)
    assert report[0]["collision_rate"] == 1.0
    assert report[0]["reconstruction_mse"] > report[1]["reconstruction_mse"]  # type: ignore[operator]
    assert report[0]["coherence_lift"] > 4.0  # type: ignore[operator]
    assert report[0] == level_report(x, codes, tokenizer, inter, pairs=5_000)[0]  # seeded


def test_shuffled_codes_have_no_lift(
    planted: tuple[np.ndarray, np.ndarray, ResidualKMeans, sp.csr_matrix],
) -> None:
    x, codes, tokenizer, inter = planted
    lifts: list[
        float
    ] = []  # one shuffle's lift varies by about ±0.06 with which items share a group
    for seed in range(10):
        shuffled = codes[np.random.default_rng(seed).permutation(len(codes))]
        lift = level_report(x, shuffled, tokenizer, inter, pairs=5_000)[0]["coherence_lift"]
        assert lift is not None
        lifts.append(lift)
    assert np.mean(lifts) == pytest.approx(1.0, abs=0.08)


def test_level_report_errors(
    planted: tuple[np.ndarray, np.ndarray, ResidualKMeans, sp.csr_matrix],
) -> None:
    x, codes, tokenizer, inter = planted
    with pytest.raises(ConfigError, match="without the suffix"):
        level_report(x, np.c_[codes, codes[:, :1]], tokenizer, inter)
    with pytest.raises(ConfigError, match="without the suffix"):
        level_report(x[:-1], codes, tokenizer, inter)
    with pytest.raises(ConfigError, match="orientation is users × items"):
        level_report(x, codes, tokenizer, inter.T.tocsr())
    with pytest.raises(ConfigError, match="pairs must be positive"):
        level_report(x, codes, tokenizer, inter, pairs=0)
    with pytest.raises(ConfigError, match="NaN"):
        level_report(np.full_like(x, np.nan), codes, tokenizer, inter)
