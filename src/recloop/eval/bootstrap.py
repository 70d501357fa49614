"""Paired bootstrap over users: is model A's mean metric really above model B's?

Users are resampled with replacement and the mean per-user difference A − B is recomputed for
each resample; the interval is the percentile interval of those means. Resample indices are
drawn in chunks so memory stays bounded for any number of users.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from recloop.eval.evaluate import EvalResult


@dataclass(frozen=True)
class BootstrapResult:
    """Mean difference A − B with its percentile confidence interval.

    ``p_value`` is the share of resampled mean differences ≤ 0: a one-sided estimate of how
    often A would not beat B.
    """

    mean_difference: float
    ci_low: float
    ci_high: float
    p_value: float
    n_users: int
    n_resamples: int
    confidence: float
    seed: int
    metric: str | None = None

    @property
    def significant(self) -> bool:
        """Whether the interval excludes zero."""
        return self.ci_low > 0 or self.ci_high < 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    max_cells: int = 1 << 22,
    metric: str | None = None,
) -> BootstrapResult:
    """Paired bootstrap CI of ``mean(a − b)``; ``a[u]`` and ``b[u]`` belong to the same user.

    Each chunk draws at most ``max_cells`` indices, and the chunks consume one seeded stream,
    so the result does not depend on ``max_cells``.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"paired arrays must be 1-D and of equal length, not {a.shape}, {b.shape}")
    if len(a) == 0:
        raise ValueError("paired bootstrap needs at least one user")
    if np.isnan(a).any() or np.isnan(b).any():
        raise ValueError("paired bootstrap got NaN values; drop undefined users first")
    if n_resamples < 1:
        raise ValueError("n_resamples must be positive")
    if not 0 < confidence < 1:
        raise ValueError("confidence must be in (0, 1)")
    diff = a - b
    n = len(diff)
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples, dtype=np.float64)
    step = max(1, max_cells // n)
    for start in range(0, n_resamples, step):
        stop = min(start + step, n_resamples)
        index = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = diff[index].mean(axis=1)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return BootstrapResult(
        mean_difference=float(diff.mean()),
        ci_low=float(low),
        ci_high=float(high),
        p_value=float((means <= 0).mean()),
        n_users=n,
        n_resamples=n_resamples,
        confidence=confidence,
        seed=seed,
        metric=metric,
    )


def compare(
    a: EvalResult,
    b: EvalResult,
    metric: str = "ndcg@10",
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapResult:
    """Paired bootstrap of ``metric`` between two evaluations of the same users, same order."""
    if not np.array_equal(a.users, b.users):
        raise ValueError("the two results evaluated different users; pair them on one EvalSet")
    for result, name in ((a, "first"), (b, "second")):
        if metric not in result.per_user:
            known = ", ".join(sorted(result.per_user))
            raise KeyError(f"the {name} result has no per-user {metric!r} (known: {known})")
    return paired_bootstrap(
        a.per_user[metric],
        b.per_user[metric],
        n_resamples=n_resamples,
        confidence=confidence,
        seed=seed,
        metric=metric,
    )
