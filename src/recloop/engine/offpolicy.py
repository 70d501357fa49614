"""Off-policy estimates of arm-selection policies from logged (segment, arm, propensity, reward).

A policy that was never run can be scored from the logs of one that was, as long as the
logging policy gave every arm the target might pick a non-zero probability and that
probability was logged (:class:`recloop.engine.bandit.Choice`). ``ips`` is unbiased; ``snips``
trades a small bias for much less variance when the importance weights are uneven.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from numpy.typing import ArrayLike

from recloop.errors import ConfigError


@dataclass(frozen=True)
class Estimate:
    """A policy value with its confidence interval (95 % unless asked otherwise)."""

    value: float
    low: float
    high: float
    n: int  # logged rows
    effective_n: float  # Kish effective sample size of the importance weights
    method: str  # "ips" or "snips"


def _vector(values: ArrayLike, name: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be numbers") from None
    if arr.ndim != 1:
        raise ConfigError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ConfigError(f"{name} must be finite")
    return arr


def _inputs(
    rewards: ArrayLike,
    logged_propensity: ArrayLike,
    target_probability: ArrayLike,
    confidence: float,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Validated (rewards, importance weights, z) for the estimators."""
    r = _vector(rewards, "rewards")
    p = _vector(logged_propensity, "logged_propensity")
    t = _vector(target_probability, "target_probability")
    if not (len(r) == len(p) == len(t)):
        raise ConfigError(
            f"rewards, logged_propensity and target_probability must have equal lengths, "
            f"got {len(r)}, {len(p)}, {len(t)}"
        )
    if len(r) == 0:
        raise ConfigError("rewards is empty: nothing to estimate from")
    if np.any(p <= 0.0) or np.any(p > 1.0):
        raise ConfigError("logged_propensity must lie in (0, 1]")
    if np.any(t < 0.0) or np.any(t > 1.0):
        raise ConfigError("target_probability must lie in [0, 1]")
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must lie in (0, 1), not {confidence!r}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    return r, t / p, z


def _effective_n(w: np.ndarray) -> float:
    """Kish's (Σw)² / Σw², 0 when every weight is 0."""
    sq = float(np.sum(w * w))
    return float(np.sum(w)) ** 2 / sq if sq > 0.0 else 0.0


def _estimate(value: float, se: float, z: float, w: np.ndarray, method: str) -> Estimate:
    return Estimate(
        value=value,
        low=value - z * se,
        high=value + z * se,
        n=len(w),
        effective_n=_effective_n(w),
        method=method,
    )


def ips(
    rewards: ArrayLike,
    logged_propensity: ArrayLike,
    target_probability: ArrayLike,
    *,
    confidence: float = 0.95,
) -> Estimate:
    """Inverse propensity scoring: mean of w·r, w = target / logged.

    Normal-approximation interval from the sample standard deviation (n - 1) of w·r; with a
    single row the interval is infinite.
    """
    r, w, z = _inputs(rewards, logged_propensity, target_probability, confidence)
    x = w * r
    se = float(np.std(x, ddof=1)) / np.sqrt(len(x)) if len(x) > 1 else np.inf
    return _estimate(float(np.mean(x)), float(se), z, w, "ips")


def snips(
    rewards: ArrayLike,
    logged_propensity: ArrayLike,
    target_probability: ArrayLike,
    *,
    confidence: float = 0.95,
) -> Estimate:
    """Self-normalised IPS: Σ w·r / Σ w, interval by the delta method.

    Var ≈ var(w·(r - V̂)) / mean(w)² / n, with the sample variance (n - 1); with a single row
    the interval is infinite. Undefined (ConfigError) when the target gives every logged arm
    probability 0.
    """
    r, w, z = _inputs(rewards, logged_propensity, target_probability, confidence)
    total = float(np.sum(w))
    if total <= 0.0:
        raise ConfigError("target_probability is 0 on every logged row: SNIPS is undefined")
    value = float(np.sum(w * r)) / total
    n = len(w)
    if n > 1:
        mean_w = total / n
        se = float(np.sqrt(np.var(w * (r - value), ddof=1) / mean_w**2 / n))
    else:
        se = float(np.inf)
    return _estimate(value, se, z, w, "snips")


def target_probabilities(
    policy: Callable[[str], np.ndarray], segments: Sequence[str], arms: ArrayLike
) -> np.ndarray:
    """Row by row, the probability ``policy`` gives the logged arm in the logged segment.

    ``policy(segment)`` returns a distribution over arms; it is called once per distinct
    segment.
    """
    arm_arr = np.asarray(arms)
    if arm_arr.ndim != 1 or len(arm_arr) != len(segments):
        raise ConfigError(
            f"segments and arms must have equal lengths, got {len(segments)} and "
            f"{arm_arr.shape[0] if arm_arr.ndim else 'a scalar'}"
        )
    if len(arm_arr) and not np.issubdtype(arm_arr.dtype, np.integer):
        raise ConfigError(f"arms must be integer indices, not {arm_arr.dtype}")
    out = np.empty(len(arm_arr), dtype=np.float64)
    rows: dict[str, list[int]] = {}
    for i, seg in enumerate(segments):
        rows.setdefault(seg, []).append(i)
    for seg, idx in rows.items():
        dist = _vector(policy(seg), f"policy({seg!r})")
        if np.any(dist < 0.0) or np.any(dist > 1.0) or abs(float(dist.sum()) - 1.0) > 1e-6:
            raise ConfigError(f"policy({seg!r}) must be probabilities in [0, 1] summing to 1")
        chosen = arm_arr[idx]
        if chosen.min() < 0 or chosen.max() >= len(dist):
            raise ConfigError(f"arms out of range for policy({seg!r}) with {len(dist)} arms")
        out[idx] = dist[chosen]
    return out


__all__ = ["Estimate", "ips", "snips", "target_probabilities"]
