"""Beyond-accuracy metrics against hand-computed values and plain reference loops."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from recloop.data import IdMap, Interactions
from recloop.eval import (
    average_popularity,
    beyond_accuracy,
    coverage,
    exposure_counts,
    exposure_gini,
    genre_matrix,
    gini,
    intra_list_diversity,
    item_popularity,
    novelty,
)


def reference_gini(counts: Sequence[float]) -> float:
    """Gini as the mean absolute difference over all ordered pairs ÷ (2 · mean)."""
    n = len(counts)
    mean = sum(counts) / n
    diff = sum(abs(a - b) for a in counts for b in counts)
    return diff / (2 * n * n * mean)


def reference_ild(items: list[int], genres: list[set[str]]) -> float:
    """Mean 1 − Jaccard over the pairs of distinct real items in one list."""
    shown = list(dict.fromkeys(i for i in items if i >= 0))
    pairs = list(itertools.combinations(shown, 2))
    if not pairs:
        return math.nan
    total = 0.0
    for a, b in pairs:
        union = genres[a] | genres[b]
        total += 1.0 - (len(genres[a] & genres[b]) / len(union) if union else 1.0)
    return total / len(pairs)


# --------------------------------------------------------------------------- Gini


def test_gini_all_equal_is_zero() -> None:
    assert gini(np.full(7, 3)) == pytest.approx(0.0)


@pytest.mark.parametrize("n", [1, 2, 5, 100])
def test_gini_one_item_takes_all(n: int) -> None:
    counts = np.zeros(n)
    counts[n // 2] = 42
    assert gini(counts) == pytest.approx((n - 1) / n)


def test_gini_hand_computed() -> None:
    # x = [1, 2, 3, 4], n = 4, Σx = 10: Σ(2i − n − 1)·x_(i) = −3·1 − 1·2 + 1·3 + 3·4 = 10
    # G = 10 / (4 · 10) = 0.25 (pairwise check: Σ|xi − xj| = 20, 2·n²·mean = 80 -> 0.25)
    assert gini(np.array([4, 1, 3, 2])) == pytest.approx(0.25)
    assert reference_gini([4, 1, 3, 2]) == pytest.approx(0.25)
    assert math.isnan(gini(np.zeros(3)))
    with pytest.raises(ValueError):
        gini(np.array([1, -1]))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=1, max_size=40).filter(lambda c: sum(c) > 0))
def test_gini_matches_pairwise_definition(counts: list[int]) -> None:
    assert gini(np.array(counts)) == pytest.approx(reference_gini(counts), abs=1e-12)


def test_exposure_gini_counts_unshown_items() -> None:
    # 4 items, lists show items 2 and 3 twice each: counts [0, 0, 2, 2]
    # Σ(2i − 5)·x_(i) = 1·2 + 3·2 = 8; G = 8 / (4 · 4) = 0.5
    recs = np.array([[2, 3], [3, 2]])
    assert exposure_counts(recs, 4).tolist() == [0, 0, 2, 2]
    assert exposure_gini(recs, 4) == pytest.approx(0.5)
    # only the first column: items 2 and 3 once each -> still 0.5; one item only -> 3/4
    assert exposure_gini(recs, 4, k=1) == pytest.approx(0.5)
    assert exposure_gini(np.array([[1, -1], [1, -1]]), 4) == pytest.approx(0.75)


# --------------------------------------------------------------------------- coverage


def test_coverage_by_hand() -> None:
    # top-2 lists show {0, 1, 4} of 10 items -> 0.3; top-1 shows {0, 4} -> 0.2; padding ignored
    recs = np.array([[0, 1, 7], [4, -1, -1], [0, 4, 8]])
    assert coverage(recs, 10, k=2) == pytest.approx(0.3)
    assert coverage(recs, 10, k=1) == pytest.approx(0.2)
    assert coverage(recs, 10) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="outside"):
        coverage(recs, 5)
    with pytest.raises(ValueError, match="k must"):
        coverage(recs, 10, k=4)


def test_repeats_count_once() -> None:
    assert exposure_counts(np.array([[1, 1, 1]]), 3).tolist() == [0, 1, 0]


# --------------------------------------------------------------------------- popularity


def test_item_popularity_by_hand() -> None:
    train = Interactions.from_arrays([0, 0, 1, 2, 2], [0, 0, 0, 0, 1], items=IdMap(["a", "b", "c"]))
    # distinct users: item 0 -> 3, item 1 -> 1, item 2 -> 0; n_users = 3
    # p = [(3+1)/4, (1+1)/4, (0+1)/4] = [1, 0.5, 0.25]
    np.testing.assert_allclose(item_popularity(train), [1.0, 0.5, 0.25])


def test_popularity_and_novelty_by_hand() -> None:
    p = np.array([1.0, 0.5, 0.25])
    recs = np.array([[1, 2], [0, -1], [-1, -1]])
    # list 0: mean p = (0.5 + 0.25)/2 = 0.375; novelty = (−log2 0.5 − log2 0.25)/2 = (1 + 2)/2
    # list 1: item 0 only: p = 1, novelty = 0; list 2 is empty -> NaN
    arp = average_popularity(recs, p)
    nov = novelty(recs, p)
    np.testing.assert_allclose(arp[:2], [0.375, 1.0])
    np.testing.assert_allclose(nov[:2], [1.5, 0.0])
    assert math.isnan(arp[2]) and math.isnan(nov[2])
    np.testing.assert_allclose(novelty(recs, p, k=1)[:2], [1.0, 0.0])
    with pytest.raises(ValueError, match="no popularity"):
        novelty(np.array([[5]]), p)


# --------------------------------------------------------------------------- ILD


GENRES = [{"a"}, {"a", "b"}, {"b"}, set(), {"c"}, {"a"}]


def test_ild_by_hand() -> None:
    # list [3, 1]: {} vs {a, b}: Jaccard 0 -> distance 1
    # list [0, 2, 5]: {a}/{b}: 1, {a}/{a}: 0, {b}/{a}: 1 -> 2/3
    # list [0, 1, -1]: {a}/{a, b}: Jaccard 1/2 -> 1/2 (padding ignored)
    # list [4, 4]: one distinct item, no pairs -> NaN
    recs = np.array([[3, 1, -1], [0, 2, 5], [0, 1, -1], [4, 4, -1]])
    ild = intra_list_diversity(recs, GENRES)
    np.testing.assert_allclose(ild[:3], [1.0, 2 / 3, 0.5])
    assert math.isnan(ild[3])
    # two items without genres count as identical: distance 0
    assert intra_list_diversity(np.array([[0, 1]]), [set(), set()])[0] == 0.0


def test_genre_matrix_inputs() -> None:
    # a string is one genre, not its characters; None is an empty set
    mat = genre_matrix(["Drama", ["Drama", "War"], None])
    assert mat.shape == (3, 2)
    assert mat.toarray().tolist() == [[1, 0], [1, 1], [0, 0]]
    dense = np.array([[2, 0], [1, 1], [0, 0]])
    assert (genre_matrix(sp.csr_matrix(dense)).toarray() == [[1, 0], [1, 1], [0, 0]]).all()


@pytest.mark.parametrize("seed", range(10))
def test_ild_random_against_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_items, k = 30, 8
    vocab = list("abcdefg")
    genres = [
        set(rng.choice(vocab, size=int(rng.integers(0, 4)), replace=False)) for _ in range(n_items)
    ]
    recs = rng.integers(-1, n_items, size=(25, k))
    expected = [reference_ild(row.tolist(), genres) for row in recs]
    for chunk_cells in (1, 100, 1 << 24):  # chunking must not change anything
        got = intra_list_diversity(recs, genres, chunk_cells=chunk_cells)
        np.testing.assert_allclose(got, expected, equal_nan=True)
    as_sparse = genre_matrix(genres)
    np.testing.assert_allclose(intra_list_diversity(recs, as_sparse), expected, equal_nan=True)


# --------------------------------------------------------------------------- all together


def test_beyond_accuracy_bundle() -> None:
    recs = np.array([[0, 1, 2], [0, 5, -1]])
    p = np.linspace(0.1, 0.6, 6)
    res = beyond_accuracy(recs, 6, ks=(1, 3), popularity=p, genres=GENRES)
    means = res.means
    assert means["coverage@1"] == pytest.approx(1 / 6)  # item 0 only
    assert means["coverage@3"] == pytest.approx(4 / 6)  # items 0, 1, 2, 5
    assert means["gini@1"] == pytest.approx(5 / 6)
    assert set(res.per_user) == {
        "avg_popularity@1",
        "avg_popularity@3",
        "novelty@1",
        "novelty@3",
        "ild@1",
        "ild@3",
    }
    assert math.isnan(means["ild@1"])  # one item per list: no pairs anywhere
    # ild@3: list 0 = {a}/{a,b}: 1/2, {a}/{b}: 1, {a,b}/{b}: 1/2 -> 2/3; list 1 = {a}/{a}: 0
    assert means["ild@3"] == pytest.approx((2 / 3 + 0.0) / 2)
    only = beyond_accuracy(recs, 6, ks=(3,))
    assert set(only.means) == {"coverage@3", "gini@3"}


@pytest.mark.parametrize("dtype", [bool, np.float32, np.int64])
def test_intra_list_diversity_binarises_any_sparse_genre_matrix(dtype: type) -> None:
    """Items {A,B}, {A,B}, {A}: distances 0, 1/2, 1/2, so ILD 1/3 whatever the matrix holds."""
    weights = np.array([[2, 2], [1, 1], [1, 0]])
    genres = sp.csr_matrix(weights.astype(dtype))
    before = genres.toarray().copy()
    ild = intra_list_diversity(np.array([[0, 1, 2]]), genres, 3)
    np.testing.assert_allclose(ild, [1 / 3])
    np.testing.assert_array_equal(genres.toarray(), before)  # the caller's matrix untouched
