"""Per-segment choice of blend weights: Beta-Bernoulli Thompson sampling with ε exploration.

Each user segment picks one of at most 16 arms (blend-weight settings). The policy is a
mixture: with probability ε an arm uniformly at random, otherwise the argmax of one joint draw
from the arms' Beta posteriors. The probability of the chosen arm is logged with the slate so
that other policies can be evaluated off-policy (:mod:`recloop.engine.offpolicy`).

The Thompson draw is taken from the same ``draws`` posterior samples that give the logged
propensities (one of them, uniformly at random), so the logged propensity is exactly the
probability the arm was chosen with, not a Monte Carlo estimate of it; that keeps IPS unbiased.
"""

from __future__ import annotations

import hashlib
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from recloop.errors import ConfigError

MAX_ARMS = 16
STATE_VERSION = 1


class BanditConfig(BaseModel):
    """Exploration rate, propensity draws, Beta prior and seed of a :class:`ThompsonBandit`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    epsilon: float = Field(
        default=0.05, ge=0.0, lt=1.0, description="Share of uniformly random choices."
    )
    draws: int = Field(
        default=1000, ge=1000, description="Joint posterior draws behind the propensities."
    )
    prior_alpha: float = Field(default=1.0, gt=0.0, description="Beta prior successes.")
    prior_beta: float = Field(default=1.0, gt=0.0, description="Beta prior failures.")
    seed: int = Field(default=0, description="Seeds the choices and the posterior draws.")


@dataclass(frozen=True)
class Choice:
    """One decision: the arm picked for a segment and the probability it was picked with."""

    segment: str
    arm: int
    arm_name: str
    propensity: float  # P(policy picks `arm`), at least epsilon / number of arms
    probabilities: tuple[float, ...]  # the whole policy distribution at decision time


def _segment_name(segment: object) -> str:
    if not isinstance(segment, str):
        raise ConfigError(f"segment must be a string, not {type(segment).__name__}")
    return segment


class ThompsonBandit:
    """Beta-Bernoulli Thompson sampling per segment, mixed with ε uniform exploration.

    Unknown segments start at the prior. ``probabilities`` is a deterministic function of
    (seed, segment, posterior): its draws come from a generator keyed by those, so a restored
    bandit gives identical probabilities whatever was called before. ``choose`` uses the
    bandit's own seeded generator unless one is passed.
    """

    def __init__(self, arms: Sequence[str], config: BanditConfig | None = None) -> None:
        if isinstance(arms, str) or not isinstance(arms, Sequence):
            raise ConfigError("arms must be a sequence of arm names")
        names = list(arms)
        if not 1 <= len(names) <= MAX_ARMS:
            raise ConfigError(f"a bandit needs 1 to {MAX_ARMS} arms, got {len(names)}")
        if not all(isinstance(n, str) and n for n in names):
            raise ConfigError("arm names must be non-empty strings")
        if len(set(names)) != len(names):
            dupes = sorted({n for n in names if names.count(n) > 1})
            raise ConfigError(f"arm names must be unique; repeated: {', '.join(dupes)}")
        self.arms: tuple[str, ...] = tuple(names)
        self.config = config if config is not None else BanditConfig()
        self._rng = np.random.default_rng(self.config.seed)
        self._alpha: dict[str, np.ndarray] = {}
        self._beta: dict[str, np.ndarray] = {}
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # (policy, thompson share)

    @property
    def n_arms(self) -> int:
        return len(self.arms)

    @property
    def segments(self) -> tuple[str, ...]:
        """Segments that have seen at least one update."""
        return tuple(self._alpha)

    # -- posterior ---------------------------------------------------------------------------

    def posterior(self, segment: str) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the segment's Beta parameters (the prior for an unknown segment)."""
        alpha, beta = self._params(_segment_name(segment))
        return alpha.copy(), beta.copy()

    def _params(self, segment: str) -> tuple[np.ndarray, np.ndarray]:
        if segment in self._alpha:
            return self._alpha[segment], self._beta[segment]
        k = self.n_arms
        return np.full(k, self.config.prior_alpha), np.full(k, self.config.prior_beta)

    def _draw_rng(self, segment: str, alpha: np.ndarray, beta: np.ndarray) -> np.random.Generator:
        """A generator keyed by (seed, segment, posterior), so probabilities are reproducible."""
        digest = hashlib.blake2b(digest_size=16)
        digest.update(segment.encode())
        digest.update(np.ascontiguousarray(alpha, dtype=np.float64).tobytes())
        digest.update(np.ascontiguousarray(beta, dtype=np.float64).tobytes())
        key = int.from_bytes(digest.digest(), "little")
        return np.random.default_rng([self.config.seed & (2**64 - 1), key])

    def _policy(self, segment: str) -> tuple[np.ndarray, np.ndarray]:
        """(policy distribution, Thompson argmax shares), cached until the segment is updated."""
        cached = self._cache.get(segment)
        if cached is not None:
            return cached
        alpha, beta = self._params(segment)
        k, draws, eps = self.n_arms, self.config.draws, self.config.epsilon
        samples = self._draw_rng(segment, alpha, beta).beta(alpha, beta, size=(draws, k))
        is_top = samples == samples.max(axis=1, keepdims=True)
        share = (is_top / is_top.sum(axis=1, keepdims=True)).sum(axis=0) / draws
        share /= share.sum()
        probs = np.maximum(eps / k + (1.0 - eps) * share, eps / k)
        probs /= probs.sum()
        share.setflags(write=False)
        probs.setflags(write=False)
        self._cache[segment] = (probs, share)
        return probs, share

    def probabilities(self, segment: str) -> np.ndarray:
        """P(policy picks each arm) for ``segment``: ε/K + (1-ε)·(Thompson argmax share)."""
        return self._policy(_segment_name(segment))[0].copy()

    # -- decisions ---------------------------------------------------------------------------

    def choose(self, segment: str, rng: np.random.Generator | None = None) -> Choice:
        """Pick an arm: uniform with probability ε, else one Thompson draw; log its propensity."""
        segment = _segment_name(segment)
        gen = rng if rng is not None else self._rng
        probs, share = self._policy(segment)
        if gen.random() < self.config.epsilon:
            arm = int(gen.integers(self.n_arms))
        else:
            arm = int(gen.choice(self.n_arms, p=share))
        return Choice(
            segment=segment,
            arm=arm,
            arm_name=self.arms[arm],
            propensity=float(probs[arm]),
            probabilities=tuple(float(p) for p in probs),
        )

    def choose_many(
        self, segment: str, n: int, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``n`` independent choices for one segment at once: (arms, propensities)."""
        segment = _segment_name(segment)
        if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 0:
            raise ConfigError(f"n must be a non-negative integer, not {n!r}")
        gen = rng if rng is not None else self._rng
        probs, share = self._policy(segment)
        explore = gen.random(int(n)) < self.config.epsilon
        uniform = gen.integers(self.n_arms, size=int(n))
        thompson = gen.choice(self.n_arms, size=int(n), p=share)
        arms = np.where(explore, uniform, thompson).astype(np.int64)
        return arms, probs[arms].astype(np.float64)

    # -- learning ----------------------------------------------------------------------------

    def _check_arm(self, arm: object) -> int:
        if isinstance(arm, bool) or not isinstance(arm, numbers.Integral):
            raise ConfigError(f"arm must be an integer index, not {arm!r}")
        if not 0 <= int(arm) < self.n_arms:
            raise ConfigError(f"arm {arm} out of range: the bandit has {self.n_arms} arms")
        return int(arm)

    def _writable(self, segment: str) -> tuple[np.ndarray, np.ndarray]:
        if segment not in self._alpha:
            alpha, beta = self._params(segment)
            self._alpha[segment], self._beta[segment] = alpha, beta
        self._cache.pop(segment, None)
        return self._alpha[segment], self._beta[segment]

    def update(self, segment: str, arm: int, reward: float) -> None:
        """Add one outcome; a reward in [0, 1] counts as that fraction of a success."""
        segment = _segment_name(segment)
        index = self._check_arm(arm)
        if (
            isinstance(reward, bool)
            or not isinstance(reward, numbers.Real)
            or not 0.0 <= float(reward) <= 1.0
        ):
            raise ConfigError(f"reward must be a number in [0, 1], not {reward!r}")
        alpha, beta = self._writable(segment)
        alpha[index] += float(reward)
        beta[index] += 1.0 - float(reward)

    def update_many(self, segment: str, arms: np.ndarray, rewards: np.ndarray) -> None:
        """Add a batch of outcomes for one segment (same rules as :meth:`update`)."""
        segment = _segment_name(segment)
        arm_arr, reward_arr = np.asarray(arms), np.asarray(rewards)
        if arm_arr.ndim != 1 or reward_arr.ndim != 1 or len(arm_arr) != len(reward_arr):
            raise ConfigError(
                f"arms and rewards must be 1-D and of equal length, got shapes "
                f"{arm_arr.shape} and {reward_arr.shape}"
            )
        if len(arm_arr) == 0:
            return
        if not np.issubdtype(arm_arr.dtype, np.integer):
            raise ConfigError(f"arms must be integer indices, not {arm_arr.dtype}")
        if arm_arr.min() < 0 or arm_arr.max() >= self.n_arms:
            raise ConfigError(f"arms out of range: the bandit has {self.n_arms} arms")
        if reward_arr.dtype == np.bool_ or not np.issubdtype(reward_arr.dtype, np.number):
            raise ConfigError(f"rewards must be numbers in [0, 1], not {reward_arr.dtype}")
        values = reward_arr.astype(np.float64)
        if not (np.all(np.isfinite(values)) and values.min() >= 0.0 and values.max() <= 1.0):
            raise ConfigError("rewards must be numbers in [0, 1]")
        alpha, beta = self._writable(segment)
        np.add.at(alpha, arm_arr, values)
        np.add.at(beta, arm_arr, 1.0 - values)

    # -- persistence -------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything needed to restore the bandit, as plain JSON-serialisable values."""
        return {
            "version": STATE_VERSION,
            "arms": list(self.arms),
            "config": self.config.model_dump(),
            "segments": {
                seg: {"alpha": self._alpha[seg].tolist(), "beta": self._beta[seg].tolist()}
                for seg in self._alpha
            },
            "rng": self._rng.bit_generator.state,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ThompsonBandit:
        """The bandit that :meth:`state` described (its choice generator included, if saved)."""
        if not isinstance(state, dict):
            raise ConfigError("bandit state must be a dict")
        if state.get("version") != STATE_VERSION:
            raise ConfigError(f"bandit state version {state.get('version')!r} is not supported")
        try:
            config = BanditConfig(**state.get("config", {}))
        except (TypeError, ValidationError) as exc:
            raise ConfigError(f"bandit state: invalid config: {_first_error(exc)}") from None
        bandit = cls(state.get("arms", []), config)
        segments = state.get("segments", {})
        if not isinstance(segments, dict):
            raise ConfigError("bandit state: segments must be a dict")
        for seg, params in segments.items():
            _segment_name(seg)
            try:
                alpha = np.asarray(params["alpha"], dtype=np.float64)
                beta = np.asarray(params["beta"], dtype=np.float64)
            except (KeyError, TypeError, ValueError):
                raise ConfigError(f"bandit state: segment {seg!r} needs alpha and beta") from None
            for name, arr in (("alpha", alpha), ("beta", beta)):
                if arr.shape != (bandit.n_arms,) or not np.all(np.isfinite(arr) & (arr > 0)):
                    raise ConfigError(
                        f"bandit state: segment {seg!r} {name} must be {bandit.n_arms} "
                        "positive numbers"
                    )
            bandit._alpha[seg], bandit._beta[seg] = alpha, beta
        if "rng" in state:
            try:
                bandit._rng.bit_generator.state = state["rng"]
            except (TypeError, ValueError, KeyError, OverflowError):
                raise ConfigError("bandit state: invalid rng state") from None
        return bandit


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "config"
        return f"field '{where}': {err['msg']}"
    return " ".join(str(exc).split())


__all__ = ["MAX_ARMS", "BanditConfig", "Choice", "ThompsonBandit"]
