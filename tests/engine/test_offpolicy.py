"""IPS and SNIPS: hand-computed values and intervals, validation, and coverage on simulations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recloop.engine.offpolicy import Estimate, ips, snips, target_probabilities
from recloop.errors import ConfigError

Z95 = 1.959963984540054

# w = target / logged = [2, 0, 2, 0.5]; w·r = [2, 0, 2, 0]
REWARDS = [1.0, 0.0, 1.0, 0.0]
LOGGED = [0.5, 0.5, 0.25, 1.0]
TARGET = [1.0, 0.0, 0.5, 0.5]


def test_ips_by_hand() -> None:
    est = ips(REWARDS, LOGGED, TARGET)
    # mean(w·r) = 1; sample variance = (1 + 1 + 1 + 1) / 3; se = sqrt(4/3) / 2
    se = math.sqrt(4 / 3) / 2
    assert est.value == pytest.approx(1.0)
    assert est.low == pytest.approx(1.0 - Z95 * se)
    assert est.high == pytest.approx(1.0 + Z95 * se)
    assert est.n == 4
    assert est.effective_n == pytest.approx(4.5**2 / 8.25)  # (Σw)² / Σw²
    assert est.method == "ips"


def test_snips_by_hand() -> None:
    est = snips(REWARDS, LOGGED, TARGET)
    value = 4 / 4.5
    # w·(r - V̂) = [2/9, 0, 2/9, -4/9]: mean 0, sample variance (4 + 4 + 16) / 81 / 3
    var = (4 + 4 + 16) / 81 / 3
    se = math.sqrt(var / 1.125**2 / 4)  # mean(w) = 4.5 / 4
    assert est.value == pytest.approx(value)
    assert est.low == pytest.approx(value - Z95 * se)
    assert est.high == pytest.approx(value + Z95 * se)
    assert est.effective_n == pytest.approx(4.5**2 / 8.25)
    assert est.method == "snips"


def test_on_policy_weights_give_the_sample_mean() -> None:
    r = np.array([1.0, 0.0, 0.0, 1.0, 1.0])
    p = np.full(5, 0.3)
    for method in (ips, snips):
        est = method(r, p, p)
        assert est.value == pytest.approx(0.6)
        assert est.effective_n == pytest.approx(5.0)
    # with equal weights both intervals are the usual t-free normal interval of the mean
    se = float(np.std(r, ddof=1)) / math.sqrt(5)
    assert ips(r, p, p).high == pytest.approx(0.6 + Z95 * se)
    assert snips(r, p, p).high == pytest.approx(0.6 + Z95 * se)


def test_confidence_level_changes_the_width() -> None:
    est90 = ips(REWARDS, LOGGED, TARGET, confidence=0.90)
    se = math.sqrt(4 / 3) / 2
    assert est90.high - est90.value == pytest.approx(1.6448536269514722 * se)


def test_single_row_has_an_infinite_interval() -> None:
    est = ips([1.0], [0.5], [1.0])
    assert est.value == 2.0 and est.low == -math.inf and est.high == math.inf
    assert snips([1.0], [0.5], [1.0]).value == 1.0


@pytest.mark.parametrize(
    ("rewards", "logged", "target", "name"),
    [
        ([1.0, 0.0], [0.5], [0.5, 0.5], "equal lengths"),
        ([1.0, math.nan], [0.5, 0.5], [0.5, 0.5], "rewards must be finite"),
        ([1.0, 0.0], [0.0, 0.5], [0.5, 0.5], "logged_propensity"),
        ([1.0, 0.0], [1.5, 0.5], [0.5, 0.5], "logged_propensity"),
        ([1.0, 0.0], [0.5, 0.5], [-0.1, 0.5], "target_probability"),
        ([1.0, 0.0], [0.5, 0.5], [0.5, 1.1], "target_probability"),
        ([], [], [], "empty"),
        ([[1.0]], [[0.5]], [[0.5]], "one-dimensional"),
    ],
)
def test_bad_inputs_are_one_line_config_errors(
    rewards: list[float], logged: list[float], target: list[float], name: str
) -> None:
    for method in (ips, snips):
        with pytest.raises(ConfigError, match=name) as info:
            method(rewards, logged, target)
        assert "\n" not in str(info.value)


def test_bad_confidence_and_zero_target() -> None:
    with pytest.raises(ConfigError, match="confidence"):
        ips(REWARDS, LOGGED, TARGET, confidence=1.0)
    assert ips([1.0, 1.0], [0.5, 0.5], [0.0, 0.0]).value == 0.0
    with pytest.raises(ConfigError, match="SNIPS is undefined"):
        snips([1.0, 1.0], [0.5, 0.5], [0.0, 0.0])


def test_target_probabilities_row_by_row() -> None:
    table = {"a": np.array([0.2, 0.8]), "b": np.array([1.0, 0.0])}
    calls: list[str] = []

    def policy(segment: str) -> np.ndarray:
        calls.append(segment)
        return table[segment]

    out = target_probabilities(policy, ["a", "b", "a", "b"], np.array([1, 0, 0, 1]))
    np.testing.assert_allclose(out, [0.8, 1.0, 0.2, 0.0])
    assert sorted(calls) == ["a", "b"]  # once per distinct segment
    with pytest.raises(ConfigError, match="equal lengths"):
        target_probabilities(policy, ["a"], np.array([0, 1]))
    with pytest.raises(ConfigError, match="out of range"):
        target_probabilities(policy, ["a"], np.array([2]))
    with pytest.raises(ConfigError, match="summing to 1"):
        target_probabilities(lambda s: np.array([0.5, 0.6]), ["a"], np.array([0]))


def _simulate(seed: int, n: int) -> tuple[Estimate, Estimate, float]:
    """A fixed logging policy over 4 arms with Bernoulli rewards; target is a different one."""
    rates = np.array([0.2, 0.5, 0.3, 0.7])
    logging = np.array([0.4, 0.3, 0.2, 0.1])
    target = np.array([0.1, 0.2, 0.3, 0.4])
    rng = np.random.default_rng(seed)
    arms = rng.choice(4, size=n, p=logging)
    rewards = (rng.random(n) < rates[arms]).astype(np.float64)
    est_ips = ips(rewards, logging[arms], target[arms])
    est_snips = snips(rewards, logging[arms], target[arms])
    return est_ips, est_snips, float(target @ rates)


def test_ips_is_unbiased_and_its_interval_covers() -> None:
    reps = [_simulate(seed, 400) for seed in range(200)]
    truth = reps[0][2]
    covered_ips = np.mean([e.low <= truth <= e.high for e, _, _ in reps])
    covered_snips = np.mean([e.low <= truth <= e.high for _, e, _ in reps])
    assert covered_ips >= 0.90
    assert covered_snips >= 0.90
    # the mean over repetitions is close to the truth (unbiased): within 3 standard errors
    values = np.array([e.value for e, _, _ in reps])
    assert abs(values.mean() - truth) < 3 * values.std(ddof=1) / math.sqrt(len(values))
