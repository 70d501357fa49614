"""Fairness re-rankers: hand-computed cases, strength 0 is the identity, FA*IR's prefix rule."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recloop.engine.fairness import (
    exposure_fair_rerank,
    fair_prefix_minimums,
    min_exposure_rerank,
    popularity_debias,
)
from recloop.errors import ConfigError, DataError
from recloop.models.base import top_k

# -- popularity_debias ---------------------------------------------------------------------


def test_ips_mode_divides_by_popularity_to_the_strength() -> None:
    scores = np.array([[4.0, 2.0, 1.0, -np.inf]], dtype=np.float32)
    pop = np.array([0.5, 0.25, 0.01, 0.1])
    out = popularity_debias(scores, pop, 0.5, mode="ips")
    np.testing.assert_allclose(out[0, :3], [4 / 0.5**0.5, 2 / 0.5, 1 / 0.1], rtol=1e-6)
    assert np.isneginf(out[0, 3])  # an excluded item stays excluded


def test_log_mode_adds_a_spread_scaled_bonus() -> None:
    scores = np.array([[3.0, 1.0], [30.0, 10.0]], dtype=np.float32)
    pop = np.array([np.e**-1, np.e**-4])  # log p = −1, −4
    out = popularity_debias(scores, pop, 0.5, mode="log")
    # row spread: std([3, 1]) = 1, std([30, 10]) = 10; bonus = 0.5 · σ · (−log p)
    np.testing.assert_allclose(out, [[3.5, 3.0], [35.0, 30.0]], rtol=1e-6)
    ranked, _ = top_k(popularity_debias(scores, pop, 1.0), 2)
    np.testing.assert_array_equal(ranked, [[1, 0], [1, 0]])  # strength 1: the rare item wins


@pytest.mark.parametrize("mode", ["log", "ips"])
def test_strength_zero_returns_the_scores(mode: str) -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(5, 9)).astype(np.float32)
    out = popularity_debias(scores, rng.random(9) + 0.01, 0.0, mode=mode)  # type: ignore[arg-type]
    np.testing.assert_array_equal(out, scores)
    assert out is not scores


def test_debias_validates_its_inputs() -> None:
    scores = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(ConfigError, match="strength"):
        popularity_debias(scores, np.ones(3), 1.5)
    with pytest.raises(ConfigError, match="strength"):
        popularity_debias(scores, np.ones(3), float("nan"))
    with pytest.raises(DataError, match="one value per item"):
        popularity_debias(scores, np.ones(4), 0.5)
    with pytest.raises(DataError, match="positive"):
        popularity_debias(scores, np.array([1.0, 0.0, 1.0]), 0.5)
    with pytest.raises(ConfigError, match="mode"):
        popularity_debias(scores, np.ones(3), 0.5, mode="div")  # type: ignore[arg-type]


# -- FA*IR -----------------------------------------------------------------------------------


def test_prefix_minimums() -> None:
    np.testing.assert_array_equal(fair_prefix_minimums(6, 0.5), [0, 1, 1, 2, 2, 3])
    np.testing.assert_array_equal(fair_prefix_minimums(4, 0.0), [0, 0, 0, 0])
    np.testing.assert_array_equal(fair_prefix_minimums(3, 1.0), [1, 2, 3])
    # FA*IR's table (Zehlike et al. 2017, p = 0.5, α = 0.1): m = 0,0,0,1,1,1,2,2,3,3 for k ≤ 10
    np.testing.assert_array_equal(
        fair_prefix_minimums(10, 0.5, alpha=0.1), [0, 0, 0, 1, 1, 1, 2, 2, 3, 3]
    )
    with pytest.raises(ConfigError, match="alpha"):
        fair_prefix_minimums(3, 0.5, alpha=1.0)


def test_fair_rerank_hand_computed() -> None:
    # items 0..3 are popular, 4..7 protected; the model ranks all popular ones first
    protected = np.array([False] * 4 + [True] * 4)
    candidates = np.array([[0, 1, 2, 3, 4, 5, 6, 7]])
    scores = np.array([[8.0, 7, 6, 5, 4, 3, 2, 1]])
    items, out_scores = exposure_fair_rerank(candidates, protected, 0.5, 4, scores=scores)
    # m = [0, 1, 1, 2]: position 2 must bring the best protected item, position 4 the next one
    np.testing.assert_array_equal(items, [[0, 4, 1, 5]])
    np.testing.assert_array_equal(out_scores, [[8.0, 4, 7, 3]])


def test_fair_rerank_fills_from_the_others_when_protected_run_out() -> None:
    protected = np.array([False, False, False, True])
    items, scores = exposure_fair_rerank(np.array([[0, 1, 2, 3, -1]]), protected, 1.0, 5)
    np.testing.assert_array_equal(items, [[3, 0, 1, 2, -1]])
    assert np.isneginf(scores).all()  # no scores given


@st.composite
def candidate_lists(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    n_items = draw(st.integers(2, 30))
    n = draw(st.integers(1, 6))
    width = draw(st.integers(1, n_items))
    k = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    rows = [rng.permutation(n_items)[:width] for _ in range(n)]
    cands = np.stack(rows)
    pad = draw(st.integers(0, 3))
    cands = np.hstack([cands, np.full((n, pad), -1)])
    scores = -np.sort(-rng.normal(size=cands.shape), axis=1)
    protected = rng.random(n_items) < draw(st.floats(0.0, 1.0))
    return cands, scores, protected, k


@settings(max_examples=150, deadline=None)
@given(candidate_lists(), st.floats(0.0, 1.0), st.sampled_from([None, 0.1]))
def test_fair_rerank_properties(
    data: tuple[np.ndarray, np.ndarray, np.ndarray, int], strength: float, alpha: float | None
) -> None:
    cands, scores, protected, k = data
    items, _ = exposure_fair_rerank(cands, protected, strength, k, scores=scores, alpha=alpha)
    minimum = fair_prefix_minimums(k, strength, alpha)
    assert items.shape == (len(cands), k)
    for row, out in zip(cands, items, strict=True):
        real = row[row >= 0]
        shown = out[out >= 0]
        # a permutation of the best candidates, padding only at the end, no repeats
        assert set(shown.tolist()) <= set(real.tolist()) and len(set(shown.tolist())) == len(shown)
        assert len(shown) == min(k, len(real)) and (out[len(shown) :] == -1).all()
        is_prot = protected[shown]
        available = int(protected[real].sum())
        counts = np.cumsum(is_prot)
        for i in range(len(shown)):  # every prefix holds its minimum, as far as candidates allow
            assert counts[i] >= min(minimum[i], available)
        for group in (True, False):  # each group shows its best candidates, in the model's order
            mine = real[protected[real] == group]
            picked = shown[is_prot == group]
            np.testing.assert_array_equal(picked, mine[: len(picked)])


@settings(max_examples=60, deadline=None)
@given(candidate_lists(), st.sampled_from([None, 0.1]))
def test_fair_rerank_strength_zero_is_the_identity(
    data: tuple[np.ndarray, np.ndarray, np.ndarray, int], alpha: float | None
) -> None:
    cands, scores, protected, k = data
    items, _ = exposure_fair_rerank(cands, protected, 0.0, k, scores=scores, alpha=alpha)
    expected = np.full((len(cands), k), -1)
    width = min(k, cands.shape[1])
    expected[:, :width] = cands[:, :width]
    np.testing.assert_array_equal(items, expected)


def test_fair_rerank_validates_its_inputs() -> None:
    protected = np.array([True, False])
    with pytest.raises(ConfigError, match=r"strength|share"):
        exposure_fair_rerank(np.array([[0, 1]]), protected, 2.0, 2)
    with pytest.raises(DataError, match="outside"):
        exposure_fair_rerank(np.array([[0, 5]]), protected, 0.5, 2)
    with pytest.raises(DataError, match="2-D"):
        exposure_fair_rerank(np.array([0, 1]), protected, 0.5, 2)
    with pytest.raises(DataError, match="shape"):
        exposure_fair_rerank(np.array([[0, 1]]), protected, 0.5, 2, scores=np.zeros((1, 3)))
    with pytest.raises(ConfigError, match="k must be positive"):
        exposure_fair_rerank(np.array([[0, 1]]), protected, 0.5, 0)


# -- minimum exposure ------------------------------------------------------------------------


def test_min_exposure_hand_computed() -> None:
    # 4 users, 6 items, k = 2; everyone's top-2 is items 0 and 1; then 2..5 in different orders
    cands = np.array([[0, 1, 2, 3], [0, 1, 3, 4], [0, 1, 5, 2], [0, 1, 4, 5]])
    scores = np.array(
        [[9.0, 8.0, 7.9, 1.0], [9.0, 8.0, 2.0, 1.0], [9.0, 8.0, 7.0, 1.0], [9.0, 8.0, 5.0, 4.0]]
    )
    # uniform share 4·2/6, strength 0.75: a minimum of 1 impression per item; one swap a list
    items, out_scores = min_exposure_rerank(cands, scores, 0.75, 2, n_items=6, max_share=0.5)
    # costs (8 − score) / row σ: (u0, 2) 0.03, (u2, 5) 0.32, (u3, 4) 1.46, (u1, 3) 1.70, ...
    # item 1 gives way to u0, u2 and u3 (4 → 1 impressions); for u1 it cannot (1 − 1 < 1), so
    # u1's item 0 (4 → 3) makes room; the remaining pairs find their items at the minimum
    np.testing.assert_array_equal(items, [[0, 2], [1, 3], [0, 5], [0, 4]])
    np.testing.assert_array_equal(
        out_scores, np.array([[9, 7.9], [8, 2], [9, 7], [9, 5]], np.float32)
    )
    np.testing.assert_array_equal(np.bincount(items.ravel(), minlength=6), [3, 1, 1, 1, 1, 1])


@settings(max_examples=80, deadline=None)
@given(candidate_lists(), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_min_exposure_properties(
    data: tuple[np.ndarray, np.ndarray, np.ndarray, int], strength: float, max_share: float
) -> None:
    cands, scores, _, k = data
    n_items = int(cands.max()) + 1
    base, _ = exposure_fair_rerank(cands, np.zeros(n_items, dtype=bool), 0.0, k)
    items, out_scores = min_exposure_rerank(
        cands, scores, strength, k, n_items=n_items, max_share=max_share
    )
    minimum = strength * len(cands) * k / n_items
    before = np.bincount(base[base >= 0], minlength=n_items)
    after = np.bincount(items[items >= 0], minlength=n_items)
    max_swaps = int(np.floor(max_share * k + 1e-9))
    for row, out, orig, out_s in zip(cands, items, base, out_scores, strict=True):
        shown = out[out >= 0]
        assert len(set(shown.tolist())) == len(shown)
        assert set(shown.tolist()) <= set(row[row >= 0].tolist())
        assert len(shown) == len(orig[orig >= 0])  # lists keep their length
        assert len(set(shown.tolist()) - set(orig.tolist())) <= max_swaps
        assert (np.diff(out_s[: len(shown)]) <= 0).all()  # score order is kept
    # nothing that met the minimum is pushed below it, and nothing shown less gets less
    assert (after[before >= minimum] >= np.minimum(before[before >= minimum], minimum)).all()
    assert (after[before < minimum] >= before[before < minimum]).all()
    if strength == 0 or max_swaps == 0:
        np.testing.assert_array_equal(items, base)


def test_min_exposure_flattens_exposure_on_random_data() -> None:
    from recloop.eval.beyond import exposure_gini

    rng = np.random.default_rng(0)
    n, n_items = 200, 100
    pop = np.arange(n_items, 0, -1, dtype=np.float64) ** 1.2
    scores = np.log(pop)[None, :] + rng.normal(scale=1.0, size=(n, n_items))
    cands, cand_scores = top_k(scores.astype(np.float32), 50)
    base = cands[:, :10]
    items, _ = min_exposure_rerank(cands, cand_scores, 1.0, 10, n_items=n_items, max_share=0.3)
    assert exposure_gini(items, n_items) < exposure_gini(base, n_items) - 0.05
    lifted = np.setdiff1d(items, base)
    # impressions made elsewhere count: an item already shown enough is not lifted again
    # (prior 50 on one item: the minimum becomes (50 + 2000) / 100 = 20.5 < 50)
    prior = np.zeros(n_items)
    prior[lifted[0]] = 50.0
    again, _ = min_exposure_rerank(
        cands, cand_scores, 1.0, 10, n_items=n_items, max_share=0.3, prior_exposure=prior
    )
    assert lifted[0] not in np.setdiff1d(again, base)
    assert len(np.setdiff1d(again, base)) > 0


def test_min_exposure_validates_its_inputs() -> None:
    cands, scores = np.array([[0, 1, 2]]), np.zeros((1, 3))
    with pytest.raises(ConfigError, match="max_share"):
        min_exposure_rerank(cands, scores, 0.5, 2, n_items=3, max_share=2.0)
    with pytest.raises(DataError, match="outside"):
        min_exposure_rerank(cands, scores, 0.5, 2, n_items=2)
    with pytest.raises(DataError, match="prior_exposure"):
        min_exposure_rerank(cands, scores, 0.5, 2, n_items=3, prior_exposure=np.ones(2))
    with pytest.raises(ConfigError, match="n_items"):
        min_exposure_rerank(cands, scores, 0.5, 2, n_items=0)
