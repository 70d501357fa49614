"""A training loss that stops being finite is an error naming where, never a silent NaN model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recloop.data import SyntheticConfig, generate
from recloop.errors import RecloopError
from recloop.training import TrainableModule, Trainer, TrainerConfig, TrainResult

# AMP runs on CUDA only: these are deselected by default and run on a GPU machine with -m gpu
cuda = pytest.mark.gpu


class Scaled(TrainableModule):
    """Loss ``sum(w * batch)``: a batch holding NaN or inf makes the loss (and gradient) so."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(2))

    def training_step(self, batch: torch.Tensor) -> torch.Tensor:
        return (self.w * batch).sum()


class Offset(TrainableModule):
    """Loss ``sum(w) + batch``: a non-finite batch spoils the loss but not the gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(2))

    def training_step(self, batch: torch.Tensor) -> torch.Tensor:
        return self.w.sum() + batch.sum()


def fit(
    module: TrainableModule, epochs: list[list[torch.Tensor]], **changes: object
) -> TrainResult:
    cfg = TrainerConfig(max_epochs=len(epochs), device="cpu", patience=None, lr=0.01)
    trainer = Trainer(cfg.model_copy(update=changes), progress=False)
    return trainer.fit(module, lambda epoch, generator: epochs[epoch])


def test_nan_loss_raises_naming_epoch_batch_and_last_finite_loss() -> None:
    good, bad = torch.tensor([1.0, 2.0]), torch.tensor([1.0, math.nan])
    module = Scaled()
    with pytest.raises(RecloopError) as info:
        fit(module, [[good, good], [good, good, bad, good]])
    text = str(info.value)
    assert "loss is nan at epoch 2, batch 3" in text
    assert "last finite loss 2.91)" in text and "lr=0.01" in text and "\n" not in text
    assert torch.isfinite(module.w).all()  # raised before the bad step reached the weights


def test_infinite_loss_on_the_first_batch_raises() -> None:
    with pytest.raises(
        RecloopError, match=r"loss is inf at epoch 1, batch 1 \(last finite loss none"
    ):
        fit(Offset(), [[torch.tensor([math.inf, 0.0])]])


def test_finite_losses_train_as_before() -> None:
    module = Scaled()
    result = fit(module, [[torch.tensor([1.0, 2.0])]] * 3)
    assert [round(x, 4) for x in result.losses] == [3.0, 2.97, 2.94]


def test_diverging_multdae_raises_instead_of_returning_nan_weights() -> None:
    from recloop.models.multvae import MultDAE, MultDAEConfig

    data = generate(SyntheticConfig(n_users=200, n_items=100, n_interactions=4000, seed=1))
    config = MultDAEConfig(max_epochs=20, lr=1e36, device="cpu", hidden_dims=(32,), latent_dim=8)
    with pytest.raises(RecloopError, match=r"training diverged: the loss is (nan|inf) at epoch"):
        MultDAE(config).fit(data.dataset.interactions)


@cuda
def test_amp_skipped_steps_are_left_out_not_raised() -> None:
    good, bad = torch.tensor([1.0, 2.0]), torch.tensor([1.0, math.nan])
    module = Scaled()
    result = fit(module, [[good, bad, good]], device="cuda", amp=True)
    assert np.isfinite(result.losses).all()
    assert torch.isfinite(module.w).all()


@cuda
def test_amp_raises_when_every_step_of_an_epoch_is_skipped() -> None:
    bad = torch.tensor([1.0, math.nan])
    with pytest.raises(RecloopError, match="every one of the 2 batches of epoch 1"):
        fit(Scaled(), [[bad, bad]], device="cuda", amp=True)


@cuda
def test_amp_raises_for_a_non_finite_loss_the_scaler_does_not_skip() -> None:
    with pytest.raises(RecloopError, match="loss is inf at epoch 1, batch 2"):
        fit(
            Offset(),
            [[torch.tensor([1.0, 0.0]), torch.tensor([math.inf, 0.0])]],
            device="cuda",
            amp=True,
        )
