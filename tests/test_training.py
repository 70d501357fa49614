"""The shared Trainer: determinism, early stopping with best-weight restore, clipping,
callbacks, progress and checkpoints, on a tiny regression module."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from recloop.errors import RecloopError
from recloop.models.base import ModelConfig
from recloop.training import (
    TrainableModule,
    Trainer,
    TrainerConfig,
    load_checkpoint,
    resolve_device,
    save_checkpoint,
)


class Toy(TrainableModule):
    """Linear regression with dropout, so determinism covers the global RNG too."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 1)
        self.drop = torch.nn.Dropout(0.2)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.linear(self.drop(x)).squeeze(1), y)


_X = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
_Y = _X @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1


def batches(epoch: int, generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    order = torch.randperm(len(_X), generator=generator)
    return [(_X[order[s : s + 16]], _Y[order[s : s + 16]]) for s in range(0, len(_X), 16)]


def make_toy(seed: int = 0) -> Toy:
    torch.manual_seed(seed)
    return Toy()


def config(**changes: object) -> TrainerConfig:
    base = TrainerConfig(max_epochs=5, lr=0.05, device="cpu", patience=None, seed=3)
    return base.model_copy(update=changes)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, float, float | None]] = []

    def on_epoch_end(self, epoch: int, loss: float, metric: float | None) -> None:
        self.calls.append((epoch, loss, metric))


def test_same_seed_gives_identical_weights() -> None:
    first, second = make_toy(), make_toy()
    r1 = Trainer(config(), progress=False).fit(first, batches)
    r2 = Trainer(config(), progress=False).fit(second, batches)
    assert r1.losses == r2.losses
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    other = make_toy()
    Trainer(config(seed=4), progress=False).fit(other, batches)
    assert not torch.equal(other.linear.weight, first.linear.weight)


def test_loss_decreases_and_result_without_validation() -> None:
    result = Trainer(config(max_epochs=30), progress=False).fit(make_toy(), batches)
    assert result.epochs_run == 30 and not result.stopped_early
    assert result.best_epoch == 29 and math.isnan(result.best_metric)
    assert result.losses[-1] < 0.2 * result.losses[0]
    assert result.metrics == [] and result.seconds > 0


def test_early_stopping_after_patience_restores_best_weights() -> None:
    module = make_toy()
    scripted = iter([0.1, 0.3, 0.2, 0.25, 0.2, 0.9])  # best at epoch 1, then 3 worse
    snapshots: list[torch.Tensor] = []

    def validate() -> float:
        assert not module.training  # validation runs in eval mode
        snapshots.append(module.linear.weight.detach().clone())
        return next(scripted)

    result = Trainer(config(max_epochs=20, patience=3), progress=False).fit(
        module, batches, validate
    )
    assert result.stopped_early and result.epochs_run == 5
    assert result.best_epoch == 1 and result.best_metric == pytest.approx(0.3)
    assert [epoch for epoch, _ in result.metrics] == [0, 1, 2, 3, 4]
    torch.testing.assert_close(module.linear.weight, snapshots[1], rtol=0, atol=0)
    assert not module.training


def test_eval_every_counts_patience_in_evaluations() -> None:
    result = Trainer(config(max_epochs=20, patience=2, eval_every=3), progress=False).fit(
        make_toy(), batches, lambda: 0.5
    )
    assert [epoch for epoch, _ in result.metrics] == [2, 5, 8]
    assert result.epochs_run == 9 and result.best_epoch == 2


def test_gradient_clipping_is_applied() -> None:
    norms: list[float] = []

    class Spy(Toy):
        """A huge loss, so unclipped gradients are far above the cap."""

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            return 1000.0 * super().training_step(batch)

    clipped, free = Spy(), Spy()
    clipped.load_state_dict(free.state_dict())
    before = clipped.linear.weight.detach().clone()

    def one_batch(epoch: int, generator: torch.Generator) -> list[tuple[torch.Tensor, ...]]:
        return [(_X, _Y)]

    Trainer(config(max_epochs=1, lr=1e-3, grad_clip=0.01), progress=False).fit(clipped, one_batch)
    for p in clipped.parameters():
        assert p.grad is not None
        norms.append(float(p.grad.norm()) ** 2)
    assert math.sqrt(sum(norms)) <= 0.01 + 1e-6
    Trainer(config(max_epochs=1, lr=1e-3), progress=False).fit(free, one_batch)
    total = math.sqrt(
        sum(float(p.grad.norm()) ** 2 for p in free.parameters() if p.grad is not None)
    )
    assert total > 1.0
    assert not torch.equal(clipped.linear.weight, before)


def test_callback_called_every_epoch() -> None:
    recorder = Recorder()
    metrics = iter([0.1, 0.2, 0.3, 0.4])
    Trainer(config(max_epochs=4, eval_every=2), progress=False).fit(
        make_toy(), batches, lambda: next(metrics), callbacks=[recorder]
    )
    assert [c[0] for c in recorder.calls] == [0, 1, 2, 3]
    assert [c[2] for c in recorder.calls] == [None, 0.1, None, 0.2]
    assert all(math.isfinite(c[1]) for c in recorder.calls)


def test_progress_bar_on_and_off(capsys: pytest.CaptureFixture[str]) -> None:
    for progress in (False, True):
        result = Trainer(config(max_epochs=2), progress=progress).fit(
            make_toy(), batches, lambda: 0.5
        )
        assert result.epochs_run == 2
    assert "Traceback" not in capsys.readouterr().err


def test_threads_restored_and_devices() -> None:
    before = torch.get_num_threads()
    Trainer(config(threads=1, max_epochs=1), progress=False).fit(make_toy(), batches)
    assert torch.get_num_threads() == before
    assert resolve_device("cpu").type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


def test_invalid_trainer_config_rejected() -> None:
    from pydantic import ValidationError

    for bad in ({"max_epochs": 0}, {"patience": 0}, {"lr": 0}, {"device": "tpu"}, {"x": 1}):
        with pytest.raises(ValidationError):
            TrainerConfig(**bad)  # type: ignore[arg-type]


class _ToyConfig(ModelConfig):
    width: int = 4


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    module = make_toy()
    Trainer(config(max_epochs=2), progress=False).fit(module, batches)
    save_checkpoint(tmp_path / "ckpt", module, "Toy", _ToyConfig(), {"epoch": 2})
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "manifest.json",
        "weights.safetensors",
    ]
    fresh = make_toy(seed=9)
    manifest = load_checkpoint(tmp_path / "ckpt", fresh, "Toy")
    assert manifest["epoch"] == 2 and manifest["config"] == {"width": 4}
    for a, b in zip(module.state_dict().values(), fresh.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(RecloopError):
        load_checkpoint(tmp_path / "ckpt", fresh, "Other")
