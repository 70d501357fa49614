"""DiffRec: the shared contract, the noise schedule, the loss and the reverse process."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from recloop.models.base import ModelConfig
from recloop.models.diffrec import (
    FIRST_BETA,
    DiffRec,
    DiffRecConfig,
    DiffRecNet,
    inference_noise,
    linear_variance_betas,
    step_embedding,
)

from .contract import ModelContract, planted

FAST: dict[str, object] = {
    "steps": 5,
    "noise_scale": 0.05,
    "hidden_dims": (64,),
    "lr": 0.005,
    "batch_size": 32,
    "max_epochs": 80,
    "early_stopping": False,
    "device": "cpu",
}


class TestDiffRecContract(ModelContract):
    model_class = DiffRec
    invalid_configs: ClassVar = [
        {"steps": 0},
        {"noise_scale": -0.1},
        {"noise_min": 0.0},
        {"noise_min": 0.02, "noise_max": 0.01},
        {"steps": 5, "inference_steps": 6},
        {"noise_scale": 200.0, "noise_max": 0.01},
        {"dropout": 1.0},
        {"step_embedding": 0},
    ]

    def make_config(self) -> ModelConfig:
        return DiffRecConfig(**FAST)  # type: ignore[arg-type]


def test_schedule_is_linear_in_the_variance() -> None:
    betas = linear_variance_betas(10, 0.1, 0.001, 0.02)
    variance = 0.1 * np.linspace(0.001, 0.02, 10)  # 1 − ᾱ_t on the line
    assert betas[0] == FIRST_BETA  # pinned, as in the authors' code
    # every later step takes ᾱ from one point of the line to the next
    np.testing.assert_allclose(betas[1:], 1.0 - (1.0 - variance[1:]) / (1.0 - variance[:-1]))
    assert (betas > 0).all() and (betas < 1).all()


def test_step_embedding_shape_and_distinct_steps() -> None:
    emb = step_embedding(torch.tensor([0, 1, 7]), 9)
    assert emb.shape == (3, 9)
    assert not torch.allclose(emb[1], emb[2])


def _net(steps: int = 4, reweight: bool = False) -> DiffRecNet:
    torch.manual_seed(0)
    return DiffRecNet(12, (8,), 6, 0.0, linear_variance_betas(steps, 0.1, 0.01, 0.1), reweight)


def _loss_and_replay(net: DiffRecNet) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A training loss and, replayed by hand with the same noise, its steps and per-row MSE."""
    x0 = (torch.rand(5, 12) < 0.3).float()
    torch.manual_seed(1)
    loss = net.training_step(x0)
    torch.manual_seed(1)
    t = torch.randint(net.steps, (5,))
    x_t = net.corrupt(x0, t, torch.randn_like(x0))
    return loss, t, (net(x_t, t) - x0).pow(2).mean(dim=1)


def test_loss_is_mse_of_the_x0_prediction() -> None:
    loss, _, mse = _loss_and_replay(_net())
    torch.testing.assert_close(loss, mse.mean())


def test_reweighted_loss_uses_snr_differences() -> None:
    net = _net(reweight=True)
    loss, t, mse = _loss_and_replay(net)
    weight = torch.tensor(
        [1.0 if s == 0 else float(net.snr[s - 1] - net.snr[s]) for s in t.tolist()]
    )
    torch.testing.assert_close(loss, (weight * mse).mean())


def test_reverse_process_ends_with_the_x0_prediction() -> None:
    net = _net().eval()
    # at step 0 the posterior mean is the x0 prediction itself
    assert float(net.post_c0[0]) == pytest.approx(1.0)
    assert float(net.post_ct[0]) == pytest.approx(0.0, abs=1e-6)
    x0 = (torch.rand(3, 12) < 0.3).float()
    out = net.denoise(x0, inference_steps=0)
    # replay the loop by hand
    x_t = x0
    for step in reversed(range(net.steps)):
        t = torch.full((3,), step)
        x_t = net.post_c0[step] * net(x_t, t) + net.post_ct[step] * x_t
    torch.testing.assert_close(out, x_t)


def test_inference_without_noise_is_deterministic() -> None:
    net = _net().eval()
    x0 = (torch.rand(3, 12) < 0.3).float()
    torch.testing.assert_close(net.denoise(x0, 0), net.denoise(x0, 0))


def test_zero_noise_scale_is_finite() -> None:
    model = DiffRec(DiffRecConfig(**{**FAST, "noise_scale": 0.0, "max_epochs": 2}))  # type: ignore[arg-type]
    model.fit(planted().train)
    assert np.isfinite(model.score(planted().queries)).all()


@pytest.fixture(scope="module")
def noisy() -> DiffRec:
    """A DiffRec that corrupts histories before denoising them (inference_steps > 0)."""
    config = DiffRecConfig(**{**FAST, "inference_steps": 2, "max_epochs": 3})  # type: ignore[arg-type]
    return DiffRec(config).fit(planted().train)


def test_inference_noise_is_fixed_per_history() -> None:
    x = (torch.rand(6, 30, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    noise = inference_noise(x, seed=3)
    assert noise.shape == x.shape and float(noise.std()) == pytest.approx(1.0, abs=0.2)
    torch.testing.assert_close(inference_noise(x, seed=3), noise, rtol=0, atol=0)
    # a row's noise does not depend on the rows beside it, and the seed changes it
    torch.testing.assert_close(inference_noise(x[[4, 1]], seed=3), noise[[4, 1]], rtol=0, atol=0)
    assert not torch.equal(inference_noise(x, seed=4), noise)


def test_noisy_inference_is_deterministic(noisy: DiffRec) -> None:
    queries = planted().queries
    scores = noisy.score(queries)
    np.testing.assert_array_equal(noisy.score(queries), scores)
    rows = np.array([5, 0, 40])
    np.testing.assert_allclose(noisy.score(queries.take(rows)), scores[rows], rtol=0, atol=1e-6)


def test_noisy_inference_survives_save_and_load(noisy: DiffRec, tmp_path: Path) -> None:
    queries = planted().queries
    noisy.save(tmp_path / "model")
    loaded = DiffRec.load(tmp_path / "model")
    np.testing.assert_array_equal(loaded.score(queries), noisy.score(queries))


def test_scoring_leaves_the_global_rng_alone(noisy: DiffRec) -> None:
    state = torch.get_rng_state()
    noisy.score(planted().queries)
    assert torch.equal(torch.get_rng_state(), state)
