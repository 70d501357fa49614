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
keeps the learning rate's meaning. The sampling of pairs, negatives and initial factors, the
optimiser, scoring and fold-in are BPR's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from recloop.data.types import Catalog, Interactions, Users
from recloop.errors import ConfigError
from recloop.models.bpr import BPR, BPRConfig, history_fingerprint

_NEGATIVE_REDRAWS = 100  # as BPR: rounds of redrawing negatives that hit a consumed item


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

    def _fit(self, train: Interactions, catalog: Catalog | None, users: Users | None) -> None:
        previous = torch.get_num_threads()
        if self.config.threads is not None:
            torch.set_num_threads(self.config.threads)
        try:
            self._train_weighted(train)
        finally:
            torch.set_num_threads(previous)

    def _train_weighted(self, train: Interactions) -> None:
        cfg = self.config
        device = _device(cfg.device)
        x = train.to_csr()
        n_users, n_items = x.shape
        gen = torch.Generator().manual_seed(cfg.seed)

        pos_user = torch.from_numpy(np.repeat(np.arange(n_users), np.diff(x.indptr)))
        pos_item = torch.from_numpy(x.indices.astype(np.int64))
        consumed = pos_user * n_items + pos_item
        counts = np.asarray(x.sum(axis=0)).ravel()
        self.propensity_ = propensities(counts, cfg.propensity_exponent, cfg.min_propensity).astype(
            np.float32
        )
        inverse = 1.0 / self.propensity_.astype(np.float64)
        pair_weight = inverse[x.indices]
        if len(pair_weight):
            pair_weight /= pair_weight.mean()
        weight_all = torch.from_numpy(pair_weight.astype(np.float32))

        user_f = (torch.randn(n_users, cfg.factors, generator=gen) * cfg.init_std).to(device)
        item_f = (torch.randn(n_items, cfg.factors, generator=gen) * cfg.init_std).to(device)
        bias = torch.zeros(n_items, device=device)
        params = [user_f, item_f, bias] if cfg.item_bias else [user_f, item_f]
        optimizer = _optimizer(cfg.optimizer, params, cfg.lr)

        n_pos = len(pos_item)
        self.loss_history_: list[float] = []  # weighted ranking loss per pair and epoch
        for _ in range(cfg.epochs if n_pos else 0):
            order = torch.randperm(n_pos, generator=gen)
            u_all, i_all, w_all = pos_user[order], pos_item[order], weight_all[order]
            j_all = _sample_negatives(u_all, consumed, n_items, gen)
            total = 0.0
            for start in range(0, n_pos, cfg.batch_size):
                batch = slice(start, start + cfg.batch_size)
                u, i, j = u_all[batch].to(device), i_all[batch].to(device), j_all[batch].to(device)
                w = w_all[batch].to(device)
                total += _set_weighted_gradients(
                    user_f, item_f, bias if cfg.item_bias else None, u, i, j, w, cfg.reg
                )
                optimizer.step()
            self.loss_history_.append(total / n_pos)

        self.user_factors_ = user_f.cpu().numpy().astype(np.float32)
        self.item_factors_ = item_f.cpu().numpy().astype(np.float32)
        self.item_bias_ = bias.cpu().numpy().astype(np.float32)
        self.train_fingerprint_ = history_fingerprint(x)
        self.fold_in_map_ = self._fit_fold_in_map(x)

    def _state(self) -> dict[str, np.ndarray]:
        return {**super()._state(), "propensity": self.propensity_}

    def _set_state(self, arrays: dict[str, np.ndarray], manifest: dict[str, Any]) -> None:
        super()._set_state(arrays, manifest)
        self.propensity_ = arrays["propensity"]


@torch.no_grad()
def _set_weighted_gradients(
    user_f: torch.Tensor,
    item_f: torch.Tensor,
    bias: torch.Tensor | None,
    u: torch.Tensor,
    i: torch.Tensor,
    j: torch.Tensor,
    w: torch.Tensor,
    reg: float,
) -> float:
    """Store the gradient of ``mean w·softplus(−x_uij) + reg·mean(‖θ‖²)``; return Σ w·loss.

    ``x_uij = p_u · (q_i − q_j) [+ b_i − b_j]``; the same hand-written gradient as BPR's with
    each pair's ranking term scaled by its weight (the penalty is not weighted).
    """
    n = len(u)
    pu = user_f.index_select(0, u)
    qi, qj = item_f.index_select(0, i), item_f.index_select(0, j)
    q_diff = qi - qj
    x = (pu * q_diff).sum(dim=1)
    if bias is not None:
        bi, bj = bias.index_select(0, i), bias.index_select(0, j)
        x += bi - bj
    g = ((torch.sigmoid(x) - 1.0) * w / n).unsqueeze(1)
    r = 2.0 * reg / n
    g_pu = g * pu
    user_f.grad = torch.zeros_like(user_f).index_add_(0, u, torch.addcmul(r * pu, g, q_diff))
    item_grad = torch.zeros_like(item_f).index_add_(0, i, r * qi + g_pu)
    item_f.grad = item_grad.index_add_(0, j, r * qj - g_pu)
    if bias is not None:
        g_b = g.squeeze(1)
        bias_grad = torch.zeros_like(bias).index_add_(0, i, r * bi + g_b)
        bias.grad = bias_grad.index_add_(0, j, r * bj - g_b)
    return float((w * F.softplus(-x)).sum())


def _sample_negatives(
    user: torch.Tensor, consumed: torch.Tensor, n_items: int, gen: torch.Generator
) -> torch.Tensor:
    """Uniform items, redrawn where the user consumed them (``consumed``: sorted u·n + i)."""
    neg = torch.randint(n_items, user.shape, generator=gen)
    if len(consumed) == 0:
        return neg
    redraw = torch.arange(len(user))
    for _ in range(_NEGATIVE_REDRAWS):
        key = user[redraw] * n_items + neg[redraw]
        pos = torch.searchsorted(consumed, key).clamp_(max=len(consumed) - 1)
        redraw = redraw[consumed[pos] == key]
        if len(redraw) == 0:
            break
        neg[redraw] = torch.randint(n_items, (len(redraw),), generator=gen)
    return neg


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("IPSBPRConfig(device='cuda') but CUDA is not available here")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _optimizer(name: str, params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr)
    return torch.optim.SGD(params, lr=lr)
