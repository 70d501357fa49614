"""Paired bootstrap: known answers, reproducibility and a per-resample reference loop."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recloop.eval import BootstrapResult, paired_bootstrap


def reference_bootstrap(
    a: np.ndarray, b: np.ndarray, n_resamples: int, confidence: float, seed: int
) -> tuple[float, float, float]:
    """One resample at a time from the same seeded stream: (low, high, share <= 0)."""
    rng = np.random.default_rng(seed)
    diff = a - b
    means = []
    for _ in range(n_resamples):
        index = rng.integers(0, len(diff), size=len(diff))
        means.append(float(np.mean(diff[index])))
    alpha = 1 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high), float(np.mean(np.array(means) <= 0))


def test_identical_models() -> None:
    a = np.random.default_rng(0).random(200)
    res = paired_bootstrap(a, a.copy())
    assert res.mean_difference == 0.0
    assert res.ci_low == 0.0 and res.ci_high == 0.0
    assert res.p_value == 1.0  # every resampled difference is <= 0
    assert not res.significant


def test_constant_shift() -> None:
    b = np.random.default_rng(1).random(100)
    res = paired_bootstrap(b + 0.1, b, n_resamples=200)
    assert res.mean_difference == pytest.approx(0.1)
    assert res.ci_low == pytest.approx(0.1) and res.ci_high == pytest.approx(0.1)
    assert res.p_value == 0.0
    assert res.significant


def test_matches_reference_loop_and_chunking() -> None:
    rng = np.random.default_rng(2)
    a = rng.random(57)
    b = a + rng.normal(0, 0.2, size=57)
    low, high, share = reference_bootstrap(a, b, 300, 0.9, seed=7)
    for max_cells in (1, 57 * 13, 1 << 22):  # chunk sizes 1, 13 and everything at once
        res = paired_bootstrap(a, b, n_resamples=300, confidence=0.9, seed=7, max_cells=max_cells)
        assert res.ci_low == pytest.approx(low) and res.ci_high == pytest.approx(high)
        assert res.p_value == pytest.approx(share)


def test_seeded_and_sensible() -> None:
    rng = np.random.default_rng(3)
    a = rng.binomial(1, 0.4, size=2000).astype(float)
    b = rng.binomial(1, 0.3, size=2000).astype(float)
    first = paired_bootstrap(a, b, seed=11)
    assert first == paired_bootstrap(a, b, seed=11)
    assert first != paired_bootstrap(a, b, seed=12)
    assert first.n_resamples == 1000 and first.confidence == 0.95 and first.n_users == 2000
    assert first.ci_low < first.mean_difference < first.ci_high
    # standard error of a difference of two independent proportions ~ 0.0147; the 95% interval
    # is about ±1.96 of it
    width = first.ci_high - first.ci_low
    assert 0.04 < width < 0.075
    assert first.significant and first.p_value < 0.01
    assert json.loads(json.dumps(first.to_dict()))["n_users"] == 2000


@pytest.mark.parametrize(
    ("a", "b", "kwargs", "match"),
    [
        (np.zeros(3), np.zeros(4), {}, "equal length"),
        (np.zeros(0), np.zeros(0), {}, "at least one"),
        (np.array([np.nan]), np.zeros(1), {}, "NaN"),
        (np.zeros(3), np.zeros(3), {"n_resamples": 0}, "n_resamples"),
        (np.zeros(3), np.zeros(3), {"confidence": 1.0}, "confidence"),
    ],
)
def test_invalid_inputs(a: np.ndarray, b: np.ndarray, kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        paired_bootstrap(a, b, **kwargs)  # type: ignore[arg-type]


def test_result_type() -> None:
    res = paired_bootstrap(np.ones(5), np.zeros(5), n_resamples=10, metric="ndcg@10")
    assert isinstance(res, BootstrapResult) and res.metric == "ndcg@10"
