"""IPSBPR: BPR trained with inverse-propensity weights on the observed (positive) pairs.

Feedback is missing not at random: popular items are more likely to be *seen*, so plain BPR
learns exposure as much as preference. Following the unbiased pairwise estimator of Saito
(2020, "Unbiased Pairwise Learning from Biased Implicit Feedback"), each train pair ``(u, i)``
with its sampled negative ``j`` is weighted by ``1/θ_i``, the inverse of the chance that item
``i`` was observed:

    loss = Σ w_i · softplus(−x_uij) / batch  +  reg · (the batch's factors)²
    θ_i = max((n_i / max_j n_j)^η, min_propensity),   w_i = (1/θ_i) / mean over train pairs

with ``n_i`` the users with a positive train row on ``i``. ``η`` (``propensity_exponent``)
sets how strongly popularity is discounted (0 is plain BPR, bit for bit), the clip
``min_propensity`` bounds the weights' variance (the largest weight is at most
``1/min_propensity`` times the smallest before normalisation), and normalising to a mean of 1
keeps the learning rate's meaning. Everything else (the training loop, sampling of pairs,
negatives and initial factors, the optimiser, scoring and fold-in) is BPR's: IPSBPR only
supplies the pair weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from recloop.models.bpr import BPR, BPRConfig


class IPSBPRConfig(BPRConfig):
    """BPR's settings plus the propensity model."""

    propensity_exponent: float = Field(
        default=0.5,
        ge=0.0,
        le=2.0,
        allow_inf_nan=False,
        description="η in θ_i = (n_i / max n)^η; 0 is plain BPR.",
    )
    min_propensity: float = Field(
        default=0.05,
        gt=0.0,
        le=1.0,
        description="Clip θ_i from below, bounding the inverse-propensity weights.",
    )


def propensities(counts: np.ndarray, exponent: float, floor: float) -> np.ndarray:
    """``θ_i = max((n_i / max n)^η, floor)`` per item (1 everywhere when no item has rows)."""
    counts = np.asarray(counts, dtype=np.float64)
    top = counts.max(initial=0.0)
    if top <= 0:
        return np.ones(len(counts))
    return np.maximum((counts / top) ** exponent, floor)


class IPSBPR(BPR):
    """BPR with inverse-propensity-weighted positives (Saito 2020's unbiased pairwise loss)."""

    config_class = IPSBPRConfig
    config: IPSBPRConfig

    def _pair_weights(self, x: Any) -> np.ndarray:
        """``w_i = (1/θ_i)`` per train pair, normalised to a mean of 1 (module docstring)."""
        cfg = self.config
        counts = np.asarray(x.sum(axis=0)).ravel()
        self.propensity_ = propensities(counts, cfg.propensity_exponent, cfg.min_propensity).astype(
            np.float32
        )
        pair_weight = 1.0 / self.propensity_.astype(np.float64)[x.indices]
        if len(pair_weight):
            pair_weight /= pair_weight.mean()
        return pair_weight

    def _state(self) -> dict[str, np.ndarray]:
        return {**super()._state(), "propensity": self.propensity_}

    def _set_state(self, arrays: dict[str, np.ndarray], manifest: dict[str, Any]) -> None:
        super()._set_state(arrays, manifest)
        self.propensity_ = arrays["propensity"]
