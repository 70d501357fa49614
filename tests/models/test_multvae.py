"""Mult-VAE and Mult-DAE: the shared contract, the loss, β annealing and split validation."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch

from recloop.data import Interactions, Split
from recloop.models.base import ModelConfig
from recloop.models.multvae import (
    AutoencoderNet,
    MultDAE,
    MultDAEConfig,
    MultVAE,
    MultVAEConfig,
)

from .contract import ModelContract, planted

FAST: dict[str, object] = {
    "hidden_dims": (32,),
    "latent_dim": 16,
    "lr": 0.01,
    "batch_size": 32,
    "max_epochs": 60,
    "early_stopping": False,
    "device": "cpu",
}
INVALID: list[dict[str, object]] = [
    {"latent_dim": 0},
    {"dropout": 1.0},
    {"dropout": -0.1},
    {"lr": 0.0},
    {"batch_size": 0},
    {"max_epochs": 0},
    {"patience": 0},
    {"threads": 0},
    {"device": "tpu"},
]


class TestMultDAEContract(ModelContract):
    model_class = MultDAE
    invalid_configs: ClassVar = INVALID

    def make_config(self) -> ModelConfig:
        return MultDAEConfig(**FAST)  # type: ignore[arg-type]


class TestMultVAEContract(ModelContract):
    model_class = MultVAE
    invalid_configs: ClassVar = [*INVALID, {"anneal_cap": -0.1}, {"total_anneal_steps": 0}]

    def make_config(self) -> ModelConfig:
        return MultVAEConfig(**FAST, total_anneal_steps=200)  # type: ignore[arg-type]


def test_shapes_and_deterministic_inference() -> None:
    net = AutoencoderNet(30, (8,), 4, 0.5, variational=True)
    x = (torch.rand(5, 30) < 0.3).float()
    net.eval()
    logits, mu, logvar = net(x)
    assert logits.shape == (5, 30) and mu.shape == (5, 4)
    assert logvar is not None and logvar.shape == (5, 4)
    torch.testing.assert_close(net(x)[0], logits)  # mean latent, no dropout at inference


def test_dae_loss_is_multinomial_nll() -> None:
    net = AutoencoderNet(6, (), 3, 0.0, variational=False)
    x = torch.tensor([[1.0, 0, 1, 0, 0, 0], [0, 1, 0, 0, 0, 1]])
    logits, _, logvar = net(x)
    assert logvar is None
    expected = -(torch.log_softmax(logits, dim=1) * x).sum(dim=1).mean()
    torch.testing.assert_close(net.training_step(x), expected)


def test_beta_annealed_linearly_up_to_the_cap() -> None:
    net = AutoencoderNet(6, (4,), 2, 0.0, variational=True, anneal_cap=0.2, total_anneal_steps=10)
    x = torch.ones(2, 6)
    betas = []
    for _ in range(4):
        betas.append(net.beta())
        net.training_step(x)
    assert betas == pytest.approx([0.0, 0.1, 0.2, 0.2])


def test_fit_on_split_early_stops_on_validation() -> None:
    data = planted()
    rng = np.random.default_rng(0)
    n = data.train.n_users
    valid = Interactions.from_arrays(
        np.arange(n), data.heldout, users=data.train.users, items=data.train.items
    )
    other = Interactions.from_arrays(
        np.arange(n),
        rng.integers(data.n_items, size=n),
        users=data.train.users,
        items=data.train.items,
    )
    config = MultDAEConfig(**{**FAST, "early_stopping": True, "patience": 3})  # type: ignore[arg-type]
    model = MultDAE(config).fit(Split("ratio", 0, data.train, valid, other))
    result = model.result_
    assert result.metrics, "a Split with validation data must be validated"
    assert result.best_metric == max(m for _, m in result.metrics)
    assert result.best_metric > 0.5
    plain = MultDAE(config).fit(data.train)
    assert plain.result_.metrics == [] and plain.result_.epochs_run == config.max_epochs
