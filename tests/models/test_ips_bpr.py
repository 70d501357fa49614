"""IPSBPR: the shared contract, η = 0 is plain BPR, and the weights discount popular items."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from recloop.data import Queries, SyntheticConfig, generate
from recloop.eval import average_popularity, item_popularity
from recloop.models.base import ModelConfig
from recloop.models.bpr import BPR, BPRConfig, _set_bpr_gradients
from recloop.models.ips_bpr import IPSBPR, IPSBPRConfig, propensities
from recloop.models.registry import build_model

from .contract import ModelContract, planted

FAST = dict(factors=8, lr=0.05, reg=1e-3, epochs=20, batch_size=256, device="cpu")


class TestIPSBPRContract(ModelContract):
    model_class = IPSBPR
    invalid_configs: ClassVar = [
        {"propensity_exponent": -0.1},
        {"propensity_exponent": 3.0},
        {"min_propensity": 0.0},
        {"min_propensity": 1.5},
        {"factors": 0},
    ]

    def make_config(self) -> ModelConfig:
        return IPSBPRConfig(**FAST, propensity_exponent=0.5)  # type: ignore[arg-type]


def test_propensities_follow_the_power_law_and_the_clip() -> None:
    counts = np.array([100, 25, 1, 0])
    theta = propensities(counts, 0.5, 0.05)
    np.testing.assert_allclose(theta, [1.0, 0.5, 0.1, 0.05])
    np.testing.assert_array_equal(propensities(counts, 0.0, 0.05), np.ones(4))
    np.testing.assert_array_equal(propensities(np.zeros(3), 1.0, 0.05), np.ones(3))


def test_exponent_zero_is_plain_bpr_bit_for_bit() -> None:
    train = planted().train
    plain = BPR(BPRConfig(**FAST)).fit(train)  # type: ignore[arg-type]
    ips = IPSBPR(IPSBPRConfig(**FAST, propensity_exponent=0.0)).fit(train)  # type: ignore[arg-type]
    np.testing.assert_array_equal(ips.user_factors_, plain.user_factors_)
    np.testing.assert_array_equal(ips.item_factors_, plain.item_factors_)
    np.testing.assert_array_equal(ips.item_bias_, plain.item_bias_)
    np.testing.assert_array_equal(ips.score(planted().queries), plain.score(planted().queries))


def test_weighted_gradient_matches_autograd() -> None:
    gen = torch.Generator().manual_seed(0)
    user_f = torch.randn(5, 3, generator=gen)
    item_f = torch.randn(7, 3, generator=gen)
    bias = torch.randn(7, generator=gen)
    u, i, j = torch.tensor([0, 1, 4, 1]), torch.tensor([2, 3, 3, 6]), torch.tensor([5, 0, 1, 2])
    w = torch.tensor([0.5, 2.0, 1.0, 0.25])
    reg = 0.1
    _set_bpr_gradients(user_f, item_f, bias, u, i, j, reg, w)
    grads = [user_f.grad.clone(), item_f.grad.clone(), bias.grad.clone()]  # type: ignore[union-attr]
    params = [p.detach().clone().requires_grad_(True) for p in (user_f, item_f, bias)]
    pu, qi, qj = params[0][u], params[1][i], params[1][j]
    x = (pu * (qi - qj)).sum(1) + params[2][i] - params[2][j]
    penalty = (
        (pu**2).sum(1) + (qi**2).sum(1) + (qj**2).sum(1) + params[2][i] ** 2 + params[2][j] ** 2
    )
    loss = (w * torch.nn.functional.softplus(-x)).mean() + reg * penalty.mean()
    loss.backward()
    for mine, param in zip(grads, params, strict=True):
        torch.testing.assert_close(mine, param.grad)


def test_ips_recommends_less_popular_items() -> None:
    """On Zipf-skewed data, a larger η lowers the mean popularity of the top-10 lists."""
    data = generate(SyntheticConfig(n_users=300, n_items=200, n_interactions=6000, seed=1))
    train = data.dataset.interactions
    indptr, history = train.histories()
    queries = Queries(np.arange(train.n_users), indptr, history)
    popularity = item_popularity(train)
    config = dict(FAST, factors=16, lr=0.01, epochs=30, batch_size=512)
    shown = []
    for eta in (0.0, 0.5, 1.0):
        model = IPSBPR(IPSBPRConfig(**config, propensity_exponent=eta)).fit(train)  # type: ignore[arg-type]
        items, _ = model.recommend(queries, 10)
        shown.append(float(np.nanmean(average_popularity(items, popularity))))
        weights = 1.0 / model.propensity_
        assert weights.max() / weights.min() <= 1 / 0.05 + 1e-6  # the clip bounds the spread
    assert shown[0] > shown[1] > shown[2]
    assert shown[2] < 0.8 * shown[0]


def test_registered() -> None:
    built = build_model("IPSBPR", {"propensity_exponent": 0.25, "epochs": 3})
    assert isinstance(built, IPSBPR) and built.config.propensity_exponent == 0.25
