"""Thompson bandit: propensities, learning on planted arms, state, validation, seeding."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from recloop.engine.bandit import BanditConfig, Choice, ThompsonBandit
from recloop.errors import ConfigError

ARMS = ["w0", "w1", "w2", "w3"]


def trained(seed: int = 0) -> ThompsonBandit:
    bandit = ThompsonBandit(ARMS, BanditConfig(seed=seed))
    bandit.update_many("a", np.array([0, 1, 1, 2, 3, 3]), np.array([1, 0, 1, 0, 1, 1.0]))
    bandit.update("b", 2, 0.25)
    return bandit


def test_probabilities_sum_to_one_and_respect_the_floor() -> None:
    bandit = ThompsonBandit(ARMS, BanditConfig(epsilon=0.1))
    rng = np.random.default_rng(1)
    bandit.update_many("s", np.zeros(500, dtype=np.int64), (rng.random(500) < 0.9) * 1.0)
    bandit.update_many("s", np.ones(500, dtype=np.int64), np.zeros(500))
    for segment in ("s", "unknown"):
        p = bandit.probabilities(segment)
        assert p.shape == (4,)
        assert p.sum() == pytest.approx(1.0)
        assert np.all(p >= 0.1 / 4 - 1e-12)
    assert bandit.probabilities("unknown") == pytest.approx(np.full(4, 0.25), abs=0.05)
    # arm 1 never wins a posterior draw: it keeps exactly the exploration floor
    assert bandit.probabilities("s")[1] == pytest.approx(0.1 / 4)


def test_propensities_agree_with_a_large_sample_estimate() -> None:
    bandit = trained()
    alpha, beta = bandit.posterior("a")
    draws = np.random.default_rng(123).beta(alpha, beta, size=(400_000, 4))
    share = np.bincount(draws.argmax(axis=1), minlength=4) / len(draws)
    reference = 0.05 / 4 + 0.95 * share
    np.testing.assert_allclose(bandit.probabilities("a"), reference, atol=0.05)


def test_choice_logs_the_policy_distribution() -> None:
    bandit = trained()
    choice = bandit.choose("a")
    assert isinstance(choice, Choice)
    probs = bandit.probabilities("a")
    assert choice.segment == "a" and choice.arm_name == ARMS[choice.arm]
    assert choice.propensity == pytest.approx(probs[choice.arm])
    assert choice.probabilities == pytest.approx(tuple(probs))
    assert choice.propensity >= 0.05 / 4


def test_choices_follow_the_logged_probabilities() -> None:
    bandit = trained()
    arms, props = bandit.choose_many("a", 40_000)
    probs = bandit.probabilities("a")
    np.testing.assert_allclose(props, probs[arms])
    np.testing.assert_allclose(np.bincount(arms, minlength=4) / len(arms), probs, atol=0.01)
    single = [bandit.choose("a").arm for _ in range(4000)]
    np.testing.assert_allclose(np.bincount(single, minlength=4) / 4000, probs, atol=0.03)


def test_best_planted_arm_takes_over() -> None:
    rates = np.array([0.10, 0.20, 0.35, 0.50, 0.30])
    bandit = ThompsonBandit([f"arm{i}" for i in range(5)], BanditConfig(seed=7))
    rng = np.random.default_rng(7)
    for _ in range(30):
        arms, _ = bandit.choose_many("seg", 100)
        bandit.update_many("seg", arms, (rng.random(100) < rates[arms]).astype(np.float64))
    p = bandit.probabilities("seg")
    assert p.argmax() == 3
    assert p[3] > 0.8
    # another segment is untouched
    assert bandit.probabilities("other").max() < 0.5


def test_fractional_rewards_update_the_posterior() -> None:
    bandit = ThompsonBandit(ARMS, BanditConfig(prior_alpha=2.0, prior_beta=3.0))
    bandit.update("s", 1, 0.25)
    bandit.update_many("s", np.array([1, 2]), np.array([1.0, 0.0]))
    alpha, beta = bandit.posterior("s")
    np.testing.assert_allclose(alpha, [2.0, 3.25, 2.0, 2.0])
    np.testing.assert_allclose(beta, [3.0, 3.75, 4.0, 3.0])
    assert bandit.posterior("new")[0].tolist() == [2.0] * 4


def test_probabilities_are_cached_until_the_segment_is_updated() -> None:
    bandit = trained()
    first = bandit.probabilities("a")
    bandit.update("b", 0, 1.0)
    np.testing.assert_array_equal(bandit.probabilities("a"), first)
    bandit.update_many("a", np.full(50, 2), np.ones(50))
    assert bandit.probabilities("a")[2] > first[2]


def test_state_round_trip_gives_identical_probabilities_and_choices() -> None:
    bandit = trained()
    bandit.probabilities("a")  # advance nothing but the cache
    restored = ThompsonBandit.from_state(json.loads(json.dumps(bandit.state())))
    assert restored.arms == bandit.arms and restored.config == bandit.config
    for segment in ("a", "b", "never-seen"):
        np.testing.assert_array_equal(
            restored.probabilities(segment), bandit.probabilities(segment)
        )
        for got, want in zip(restored.posterior(segment), bandit.posterior(segment), strict=True):
            np.testing.assert_array_equal(got, want)
    restored_arms = [restored.choose("a").arm for _ in range(50)]
    assert restored_arms == [bandit.choose("a").arm for _ in range(50)]


def test_seeded_runs_are_reproducible() -> None:
    def run(seed: int) -> list[int]:
        bandit = trained(seed)
        arms = [bandit.choose("a").arm for _ in range(200)]
        return arms + bandit.choose_many("b", 50)[0].tolist()

    assert run(3) == run(3)
    assert run(3) != run(4)
    # probabilities do not depend on what was drawn before
    fresh, used = trained(), trained()
    for _ in range(20):
        used.choose("a")
    np.testing.assert_array_equal(fresh.probabilities("a"), used.probabilities("a"))


def test_external_generator_is_used_when_given() -> None:
    bandit = trained()
    a = [bandit.choose("a", np.random.default_rng(5)).arm for _ in range(3)]
    b = [bandit.choose("a", np.random.default_rng(5)).arm for _ in range(3)]
    assert a == b


def test_config_validation() -> None:
    for bad in ({"epsilon": 1.0}, {"epsilon": -0.1}, {"draws": 999}, {"prior_alpha": 0.0}):
        with pytest.raises(ValidationError):
            BanditConfig(**bad)
    with pytest.raises(ValidationError):
        BanditConfig(temperature=1.0)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        BanditConfig().epsilon = 0.2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("arms", "message"),
    [
        ([], "1 to 16 arms"),
        ([f"a{i}" for i in range(17)], "1 to 16 arms"),
        (["a", "b", "a"], "unique; repeated: a"),
        (["a", ""], "non-empty strings"),
        ("abc", "sequence of arm names"),
    ],
)
def test_bad_arms(arms: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ThompsonBandit(arms)


def test_bad_updates_and_states() -> None:
    bandit = ThompsonBandit(ARMS)
    for arm, reward, message in [
        (4, 1.0, "out of range"),
        (-1, 1.0, "out of range"),
        (1.0, 1.0, "integer index"),
        (True, 1.0, "integer index"),
        (0, 1.5, r"in \[0, 1\]"),
        (0, float("nan"), r"in \[0, 1\]"),
    ]:
        with pytest.raises(ConfigError, match=message):
            bandit.update("s", arm, reward)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="equal length"):
        bandit.update_many("s", np.array([0, 1]), np.array([1.0]))
    with pytest.raises(ConfigError, match="out of range"):
        bandit.update_many("s", np.array([0, 9]), np.array([1.0, 0.0]))
    with pytest.raises(ConfigError, match="integer"):
        bandit.update_many("s", np.array([0.0]), np.array([1.0]))
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        bandit.update_many("s", np.array([0]), np.array([-0.5]))
    assert bandit.segments == ()  # nothing was half-applied
    state = trained().state()
    with pytest.raises(ConfigError, match="field 'epsilon'"):
        ThompsonBandit.from_state({**state, "config": {**state["config"], "epsilon": 2.0}})
    with pytest.raises(ConfigError, match="alpha must be 4 positive numbers"):
        ThompsonBandit.from_state({**state, "segments": {"a": {"alpha": [1.0], "beta": [1.0]}}})
    with pytest.raises(ConfigError, match="version"):
        ThompsonBandit.from_state({**state, "version": 99})


@pytest.mark.parametrize("value", [-5, 2**200])
def test_an_out_of_range_rng_state_is_a_config_error(value: int) -> None:
    bandit = ThompsonBandit(["a", "b"], BanditConfig(seed=0))
    state = bandit.state()
    state["rng"]["state"]["state"] = value
    with pytest.raises(ConfigError, match="rng"):
        ThompsonBandit.from_state(state)
