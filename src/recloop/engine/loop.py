"""The live feedback loop's logic, independent of the service: arms, segments, learning from logs.

- :class:`LoopConfig`: the candidate sources, the arms (blend weights over the sources, at most
  16), how users are segmented, the bandit's exploration, and the windows that bound learning.
- :func:`segment_of`: a user's segment from their number of positive events (new / regular /
  heavy), computable per request from the history already read.
- :func:`posteriors_from_counts`: Beta posteriors per (segment, arm) recomputed from the
  logged slates whose attribution window has closed (counted by the database). A full
  recomputation over a bounded window is idempotent, so any number of workers may run it at
  once and agree.
- :func:`attribution`: impressions, clicks and click-through by source and by position.
- :func:`offpolicy_report`: IPS and SNIPS estimates (with intervals) of alternative
  arm-selection policies from the logged propensities.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from recloop.engine.bandit import MAX_ARMS, BanditConfig, ThompsonBandit
from recloop.engine.offpolicy import ips, snips, target_probabilities
from recloop.errors import ConfigError

SOURCES = ("model", "content", "popular", "generated")


class Arm(BaseModel):
    """One blend setting the bandit can choose: a weight per candidate source."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    weights: dict[str, float]

    @model_validator(mode="after")
    def _check(self) -> Arm:
        unknown = sorted(set(self.weights) - set(SOURCES))
        if unknown:
            raise ValueError(f"unknown sources {unknown}; known: {', '.join(SOURCES)}")
        if any(w < 0 or not np.isfinite(w) for w in self.weights.values()):
            raise ValueError("weights must be finite and non-negative")
        if not any(w > 0 for w in self.weights.values()):
            raise ValueError("at least one weight must be positive")
        return self


def _default_arms() -> list[Arm]:
    return [
        Arm(name="model", weights={"model": 1.0}),
        Arm(name="model+content", weights={"model": 1.0, "content": 0.35}),
        Arm(name="model+popular", weights={"model": 1.0, "popular": 0.35}),
        Arm(name="balanced", weights={"model": 1.0, "content": 0.35, "popular": 0.35}),
        Arm(name="content-led", weights={"model": 0.5, "content": 1.0}),
        Arm(name="popular-led", weights={"model": 0.5, "popular": 1.0}),
    ]


class LoopConfig(BaseModel):
    """What the live loop blends, how it explores, and what it learns from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    arms: list[Arm] = Field(default_factory=_default_arms, min_length=1, max_length=MAX_ARMS)
    segment_bands: tuple[int, ...] = Field(
        default=(5, 50),
        description="Positive-event counts that start the next segment: new < 5 ≤ regular "
        "< 50 ≤ heavy by default.",
    )
    epsilon: float = Field(default=0.05, ge=0.0, lt=1.0)
    draws: int = Field(default=1000, ge=1000)
    seed: int = 0
    candidates_per_source: int = Field(default=100, ge=1, le=1000)
    generated_weight: float = Field(
        default=0.3,
        ge=0.0,
        description="Weight of approved generated items in every arm (0: not shown).",
    )
    max_generated_share: float = Field(
        default=0.2,
        ge=0.0,
        le=1.0,
        description="Most of a slate that may be generated items (users may ask for less).",
    )
    window_s: float = Field(
        default=7 * 86400.0, gt=0, description="Slates older than this are not learned from."
    )
    attribution_s: float = Field(
        default=1800.0,
        ge=0,
        description="Outcomes count within this time after the slate; a slate is learned "
        "from once it has passed.",
    )

    @model_validator(mode="after")
    def _check(self) -> LoopConfig:
        names = [arm.name for arm in self.arms]
        if len(set(names)) != len(names):
            raise ValueError("arm names must be unique")
        if list(self.segment_bands) != sorted(set(self.segment_bands)) or any(
            b < 1 for b in self.segment_bands
        ):
            raise ValueError("segment_bands must be increasing positive counts")
        return self

    @property
    def segments(self) -> tuple[str, ...]:
        names = ("new", "regular", "heavy")
        if len(self.segment_bands) == 2:
            return names
        return tuple(f"band{i}" for i in range(len(self.segment_bands) + 1))

    def bandit(self) -> ThompsonBandit:
        return ThompsonBandit(
            [arm.name for arm in self.arms],
            BanditConfig(epsilon=self.epsilon, draws=self.draws, seed=self.seed),
        )

    @classmethod
    def from_json(cls, text: str, where: str) -> LoopConfig:
        """Parse a JSON loop config; errors name ``where`` and the field."""
        from pydantic import ValidationError

        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "config"
            raise ConfigError(f"{where}: {field}: {err['msg']}") from None


def segment_of(n_positive: int, config: LoopConfig) -> str:
    """The segment of a user with ``n_positive`` positive events."""
    band = int(np.searchsorted(np.asarray(config.segment_bands), n_positive, side="right"))
    return config.segments[band]


def learning_window(config: LoopConfig, now: float) -> tuple[float, float]:
    """``(since, until)``: slates inside the learning window whose attribution has closed."""
    return now - config.window_s, now - config.attribution_s


def posteriors_from_counts(
    counts: Sequence[tuple[str, int, int, int]], config: LoopConfig
) -> dict[tuple[str, int], tuple[float, float]]:
    """Beta(α, β) per (segment, arm) from ``(segment, arm, slates, rewarded)`` counts."""
    bandit = config.bandit()
    n_arms = len(config.arms)
    for segment, arm, shown, rewarded in counts:
        if not 0 <= arm < n_arms or shown <= 0:  # logged under another arm set: skip
            continue
        arms = np.full(shown, arm, dtype=np.int64)
        rewards = np.zeros(shown)
        rewards[:rewarded] = 1.0
        bandit.update_many(segment, arms, rewards)
    out: dict[tuple[str, int], tuple[float, float]] = {}
    for segment in bandit.segments:
        alpha, beta = bandit.posterior(segment)
        for arm in range(n_arms):
            out[(segment, arm)] = (float(alpha[arm]), float(beta[arm]))
    return out


def bandit_from_posteriors(
    config: LoopConfig, posteriors: Mapping[tuple[str, int], tuple[float, float]]
) -> ThompsonBandit:
    """A bandit whose segments start from the stored posteriors."""
    bandit = config.bandit()
    state = bandit.state()
    segments: dict[str, dict[str, list[float]]] = {}
    n_arms = len(config.arms)
    prior_a, prior_b = bandit.config.prior_alpha, bandit.config.prior_beta
    for (segment, arm), (alpha, beta) in posteriors.items():
        if not 0 <= arm < n_arms:
            continue
        entry = segments.setdefault(
            segment, {"alpha": [prior_a] * n_arms, "beta": [prior_b] * n_arms}
        )
        entry["alpha"][arm], entry["beta"][arm] = alpha, beta
    state["segments"] = segments
    return ThompsonBandit.from_state(state)


@dataclass(frozen=True)
class SourceStats:
    """How one source (or one position) did: shown, clicked, click-through rate."""

    impressions: int
    clicks: int

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions else 0.0


def attribution(
    counts: Mapping[str, Mapping[str, tuple[int, int]]],
) -> dict[str, dict[str, SourceStats]]:
    """Impression and outcome counts (as :meth:`SlateLog.impression_counts` gives them) as
    per-source and per-position statistics."""
    return {
        group: {key: SourceStats(*pair) for key, pair in table.items()}
        for group, table in counts.items()
    }


def offpolicy_report(
    rows: Sequence[tuple[str, int, float | None, float]],
    config: LoopConfig,
    bandit: ThompsonBandit,
) -> dict[str, Any]:
    """IPS and SNIPS values (slate reward rate, 95% intervals) of alternative policies from
    logged ``(segment, arm, propensity, reward)`` rows.

    Alternatives: uniform over arms, each fixed arm, and the greedy policy (per segment the
    arm with the highest posterior mean). The logging policy's own value is the observed mean.
    """
    n_arms = len(config.arms)
    rows = [r for r in rows if r[2] and 0 <= r[1] < n_arms]
    if not rows:
        return {"slates": 0, "logged_value": None, "policies": {}}
    segments = [r[0] for r in rows]
    arms = np.asarray([r[1] for r in rows], dtype=np.int64)
    propensity = np.asarray([r[2] for r in rows], dtype=np.float64)
    rewards = np.asarray([r[3] for r in rows], dtype=np.float64)

    def greedy(segment: str) -> np.ndarray:
        alpha, beta = bandit.posterior(segment)
        return np.eye(n_arms)[int(np.argmax(alpha / (alpha + beta)))]

    policies: dict[str, Callable[[str], np.ndarray]] = {
        "uniform": lambda _s: np.full(n_arms, 1.0 / n_arms),
        "greedy": greedy,
    }
    fixed = {f"fixed:{arm.name}": index for index, arm in enumerate(config.arms)}
    out: dict[str, Any] = {}
    for name in [*policies, *fixed]:
        if name in fixed:
            chosen = np.eye(n_arms)[fixed[name]]
            target = target_probabilities(lambda _s: chosen, segments, arms)  # noqa: B023
        else:
            target = target_probabilities(policies[name], segments, arms)
        entry: dict[str, Any] = {}
        for method in (ips, snips):
            try:
                est = method(rewards, propensity, target)
            except ConfigError:  # SNIPS is undefined when the target never matches the logs
                continue
            entry[est.method] = {
                "value": est.value,
                "ci_low": est.low,
                "ci_high": est.high,
                "effective_n": est.effective_n,
            }
        out[name] = entry
    return {"slates": len(rows), "logged_value": float(rewards.mean()), "policies": out}
