"""Ranking metrics: vectorised code against a plain per-user loop and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recloop.eval import (
    METRICS,
    hit_matrix,
    ideal_dcg,
    metrics_from_hits,
    ranking_metrics,
)

# --------------------------------------------------------------------------- reference


def reference_user(items: list[int], targets: set[int], k: int) -> dict[str, float]:
    """The textbook definitions for one user, one item at a time (−1 and repeats never count)."""
    seen: set[int] = set()
    n_hit, dcg, first = 0, 0.0, None
    for rank, item in enumerate(items[:k], start=1):
        relevant = item >= 0 and item in targets and item not in seen
        seen.add(item)
        if relevant:
            n_hit += 1
            dcg += 1.0 / math.log2(rank + 1)
            if first is None:
                first = rank
    idcg = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(targets), k) + 1))
    return {
        "recall": n_hit / len(targets),
        "precision": n_hit / k,
        "hit": float(n_hit > 0),
        "ndcg": dcg / idcg,
        "mrr": 1.0 / first if first is not None else 0.0,
    }


def reference(
    lists: list[list[int]], targets: list[set[int]], ks: list[int]
) -> dict[str, list[float]]:
    """Per-user values for users with a non-empty target set, in input order."""
    out: dict[str, list[float]] = {f"{m}@{k}": [] for m in METRICS for k in ks}
    for items, tgt in zip(lists, targets, strict=True):
        if not tgt:
            continue
        for k in ks:
            for metric, value in reference_user(items, tgt, k).items():
                out[f"{metric}@{k}"].append(value)
    return out


def to_csr(targets: list[set[int]]) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.cumsum([0] + [len(t) for t in targets])
    items = np.array([i for t in targets for i in sorted(t)], dtype=np.int64)
    return indptr, items


def check_against_reference(lists: list[list[int]], targets: list[set[int]], ks: list[int]) -> None:
    indptr, items = to_csr(targets)
    result = ranking_metrics(np.array(lists, dtype=np.int64), indptr, items, ks)
    expected = reference(lists, targets, ks)
    assert list(result.rows) == [r for r, t in enumerate(targets) if t]
    for name, values in expected.items():
        np.testing.assert_allclose(result.per_user[name], values, rtol=1e-12, atol=1e-12)
        if values:
            assert result.means[name] == pytest.approx(float(np.mean(values)), abs=1e-12)


# --------------------------------------------------------------------------- hand-computed


def test_hand_computed_two_users() -> None:
    # user 0: R = [5, 2, 9, 1, 7], T = {2, 7, 3}: hits at ranks 2 and 5
    # user 1: R = [4, -1, -1, -1, -1], T = {4}: hit at rank 1, the rest is padding
    # user 2: T = {} -> left out of every mean
    recs = np.array([[5, 2, 9, 1, 7], [4, -1, -1, -1, -1], [0, 1, 2, 3, 4]])
    indptr = np.array([0, 3, 4, 4])
    items = np.array([2, 7, 3, 4])
    res = ranking_metrics(recs, indptr, items, ks=(1, 2, 5))
    assert list(res.rows) == [0, 1]
    u0, u1 = 0, 1
    # @1: user 0 has no hit at rank 1; user 1 does
    assert res.per_user["recall@1"].tolist() == [0.0, 1.0]
    assert res.per_user["ndcg@1"].tolist() == [0.0, 1.0]
    # @2, user 0: recall 1/3, precision 1/2, MRR 1/2,
    # NDCG = (1/log2 3) / (1 + 1/log2 3) = 0.63093 / 1.63093 = 0.38685
    assert res.per_user["recall@2"][u0] == pytest.approx(1 / 3)
    assert res.per_user["precision@2"][u0] == pytest.approx(1 / 2)
    assert res.per_user["mrr@2"][u0] == pytest.approx(1 / 2)
    assert res.per_user["ndcg@2"][u0] == pytest.approx(0.38685, abs=1e-5)
    # @5, user 0: recall 2/3, precision 2/5, hit 1, MRR 1/2;
    # DCG = 1/log2 3 + 1/log2 6 = 0.63093 + 0.38685 = 1.01778
    # IDCG (|T| = 3) = 1 + 1/log2 3 + 1/log2 4 = 1 + 0.63093 + 0.5 = 2.13093; NDCG = 0.47763
    assert res.per_user["recall@5"][u0] == pytest.approx(2 / 3)
    assert res.per_user["precision@5"][u0] == pytest.approx(2 / 5)
    assert res.per_user["hit@5"][u0] == 1.0
    assert res.per_user["mrr@5"][u0] == pytest.approx(1 / 2)
    assert res.per_user["ndcg@5"][u0] == pytest.approx(0.47763, abs=1e-5)
    # @5, user 1: precision counts padding as misses: 1/5; the rest is perfect
    assert res.per_user["precision@5"][u1] == pytest.approx(1 / 5)
    assert res.per_user["ndcg@5"][u1] == pytest.approx(1.0)
    assert res.per_user["mrr@5"][u1] == 1.0
    # means over the two users with targets: recall@5 = (2/3 + 1) / 2 = 5/6
    assert res.means["recall@5"] == pytest.approx(5 / 6)
    assert res.means["ndcg@5"] == pytest.approx((0.47763 + 1.0) / 2, abs=1e-5)
    assert res.means["mrr@1"] == pytest.approx(0.5)


def test_hand_computed_more_targets_than_k() -> None:
    # R = [1, 2], T = {1, 2, 3, 4}, K = 2: recall = 2/4, precision = 2/2,
    # NDCG normalises by min(|T|, K) = 2 ideal ranks: (1 + 1/log2 3) / (1 + 1/log2 3) = 1
    res = ranking_metrics(np.array([[1, 2]]), np.array([0, 4]), np.array([1, 2, 3, 4]), ks=(2,))
    assert res.means["recall@2"] == pytest.approx(0.5)
    assert res.means["precision@2"] == pytest.approx(1.0)
    assert res.means["ndcg@2"] == pytest.approx(1.0)
    # R = [9, 1], same T: DCG = 1/log2 3 = 0.63093; IDCG = 1.63093; NDCG = 0.38685
    res = ranking_metrics(np.array([[9, 1]]), np.array([0, 4]), np.array([1, 2, 3, 4]), ks=(2,))
    assert res.means["ndcg@2"] == pytest.approx(0.38685, abs=1e-5)
    assert res.means["mrr@2"] == pytest.approx(0.5)


def test_k_equal_one() -> None:
    # K = 1 is precision = hit = MRR = NDCG; recall = hit / |T|
    recs = np.array([[3], [1], [-1]])
    indptr, items = to_csr([{3, 4}, {2}, {5}])
    res = ranking_metrics(recs, indptr, items, ks=(1,))
    for name in ("precision@1", "hit@1", "mrr@1", "ndcg@1"):
        assert res.per_user[name].tolist() == [1.0, 0.0, 0.0]
    assert res.per_user["recall@1"].tolist() == [0.5, 0.0, 0.0]


def test_ideal_dcg_table() -> None:
    # idcg[0] = 0, idcg[1] = 1, idcg[2] = 1 + 1/log2 3, idcg[3] = idcg[2] + 1/2
    table = ideal_dcg(3)
    np.testing.assert_allclose(table, [0.0, 1.0, 1 + 1 / math.log2(3), 1.5 + 1 / math.log2(3)])


# --------------------------------------------------------------------------- hit matrix


def test_hit_matrix_padding_duplicates_and_targets() -> None:
    # padding is never a hit, even when a row's key would meet the previous row's last item;
    # the second 2 in row 0 is a repeat; duplicate targets count once
    recs = np.array([[2, 2, -1], [-1, 0, 1]])
    indptr = np.array([0, 3, 4])
    items = np.array([2, 2, 3, 1])
    hits, n_targets = hit_matrix(recs, indptr, items)
    assert hits.tolist() == [[True, False, False], [False, False, True]]
    assert n_targets.tolist() == [2, 1]


def test_no_targets_at_all() -> None:
    res = ranking_metrics(np.array([[0, 1]]), np.array([0, 0]), np.array([]), ks=(2,))
    assert len(res) == 0
    assert math.isnan(res.means["ndcg@2"])


@pytest.mark.parametrize(
    ("recs", "ks", "match"),
    [
        (np.array([[0, 1]]), (3,), "exceeds"),
        (np.array([[0, 1]]), (0,), "positive"),
        (np.array([[0.0, 1.0]]), (1,), "integer"),
        (np.array([[-2, 1]]), (1,), "-1"),
        (np.array([0, 1]), (1,), "2-D"),
    ],
)
def test_invalid_inputs(recs: np.ndarray, ks: tuple[int, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ranking_metrics(recs, np.array([0, 1]), np.array([1]), ks=ks)


def test_invalid_targets_and_metric() -> None:
    with pytest.raises(ValueError, match="length"):
        ranking_metrics(np.array([[0, 1]]), np.array([0, 1, 1]), np.array([1]), ks=(1,))
    with pytest.raises(ValueError, match="unknown metric"):
        metrics_from_hits(np.ones((1, 2), bool), np.array([1]), ks=(1,), metrics=("auc",))


def test_metric_subset_and_names() -> None:
    res = ranking_metrics(
        np.array([[0, 1]]), np.array([0, 1]), np.array([1]), ks=(1, 2), metrics=("ndcg",)
    )
    assert list(res.per_user) == ["ndcg@1", "ndcg@2"]


# --------------------------------------------------------------------------- against reference


def random_case(
    rng: np.random.Generator, n_users: int, n_items: int, k_max: int
) -> tuple[list[list[int]], list[set[int]]]:
    """Lists without repeats, with trailing padding on some rows; targets of any size."""
    lists, targets = [], []
    for _ in range(n_users):
        length = int(rng.integers(0, min(k_max, n_items) + 1))
        items = rng.permutation(n_items)[:length].tolist()
        lists.append(items + [-1] * (k_max - length))
        size = int(rng.integers(0, n_items + 1)) if rng.random() < 0.8 else 0
        targets.append({int(i) for i in rng.choice(n_items, size=size, replace=False)})
    return lists, targets


@pytest.mark.parametrize("seed", range(20))
def test_random_against_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_items = int(rng.integers(1, 40))
    k_max = int(rng.integers(1, 25))
    lists, targets = random_case(rng, int(rng.integers(1, 60)), n_items, k_max)
    ks = sorted({1, k_max, int(rng.integers(1, k_max + 1))})
    check_against_reference(lists, targets, ks)


@st.composite
def cases(draw: st.DrawFn) -> tuple[list[list[int]], list[set[int]], list[int]]:
    """Arbitrary lists (padding anywhere, repeats allowed) and target sets (empty allowed)."""
    n_items = draw(st.integers(1, 15))
    k_max = draw(st.integers(1, 8))
    n_users = draw(st.integers(1, 8))
    item = st.integers(-1, n_items - 1)
    lists = [draw(st.lists(item, min_size=k_max, max_size=k_max)) for _ in range(n_users)]
    targets = [draw(st.sets(st.integers(0, n_items - 1))) for _ in range(n_users)]
    ks = draw(st.lists(st.integers(1, k_max), min_size=1, max_size=3, unique=True))
    return lists, targets, ks


@settings(max_examples=200, deadline=None)
@given(cases())
def test_property_matches_reference(
    case: tuple[list[list[int]], list[set[int]], list[int]],
) -> None:
    check_against_reference(*case)


@settings(max_examples=150, deadline=None)
@given(cases())
def test_property_bounds_and_monotonicity(
    case: tuple[list[list[int]], list[set[int]], list[int]],
) -> None:
    lists, targets, _ = case
    k_max = len(lists[0])
    ks = list(range(1, k_max + 1))
    indptr, items = to_csr(targets)
    res = ranking_metrics(np.array(lists), indptr, items, ks)
    for metric in METRICS:
        values = np.stack([res.per_user[f"{metric}@{k}"] for k in ks], axis=1)
        assert ((values >= 0) & (values <= 1 + 1e-12)).all()
        if metric in ("recall", "hit", "mrr"):  # never fall as K grows (Recall@1 <= Recall@5)
            assert (np.diff(values, axis=1) >= -1e-12).all()
    size = np.diff(indptr)[res.rows]
    for k in ks:  # |R ∩ T| two ways
        np.testing.assert_allclose(
            res.per_user[f"precision@{k}"] * k, res.per_user[f"recall@{k}"] * size
        )


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 30), st.integers(1, 10), st.integers(1, 10), st.integers(0, 2**32 - 1))
def test_property_perfect_list_scores_one(n_items: int, n_targets: int, k: int, seed: int) -> None:
    # a list that starts with targets (as many as fit) has NDCG = 1 and MRR = 1
    n_targets = min(n_targets, n_items)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_items)
    targets = set(order[:n_targets].tolist())
    rest = order[n_targets:].tolist()
    items = (order[:n_targets].tolist() + rest + [-1] * k)[:k]
    indptr, flat = to_csr([targets])
    res = ranking_metrics(np.array([items]), indptr, flat, ks=(k,))
    assert res.means[f"ndcg@{k}"] == pytest.approx(1.0)
    assert res.means[f"mrr@{k}"] == 1.0
    assert res.means[f"recall@{k}"] == pytest.approx(min(n_targets, k) / n_targets)


def test_speed_ml100k_size() -> None:
    # 943 users x 1,682 items, K up to 20: all ranking metrics well under a second
    import time

    rng = np.random.default_rng(0)
    recs = np.argsort(rng.random((943, 1682)), axis=1)[:, :20]
    lengths = rng.integers(1, 60, size=943)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    items = rng.integers(0, 1682, size=int(indptr[-1]))
    started = time.perf_counter()
    ranking_metrics(recs, indptr, items, ks=(5, 10, 20))
    assert time.perf_counter() - started < 1.0
