"""The shared training loop for torch models: seeded, early-stopped, clipped, checkpointed.

A model wraps its network in a :class:`TrainableModule` (an ``nn.Module`` with one extra
method, ``training_step(batch) -> loss``) and hands :meth:`Trainer.fit` a batch factory and,
optionally, a validation function returning NDCG@10. The trainer owns the optimiser (Adam),
the device, mixed precision (CUDA only), gradient clipping, early stopping with best-weight
restore, callbacks and the progress bar. On CPU with a fixed thread count a fit is bit-for-bit
repeatable: the global torch seed is set (dropout, reparameterisation noise) and batch sampling
gets its own seeded ``torch.Generator``.
"""

from __future__ import annotations

import abc
import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from recloop.errors import ConfigError, RecloopError

if TYPE_CHECKING:  # recloop.models imports this module; the artifact helpers load lazily
    from recloop.models.base import ModelConfig

BatchFactory = Callable[[int, torch.Generator], Iterable[Any]]
"""``(epoch, generator) -> batches``: the batches of one epoch, drawn with ``generator``."""
Validate = Callable[[], float]
"""``() -> metric``: the validation metric (NDCG@10), higher is better."""


class TrainerConfig(BaseModel):
    """Schedule, optimiser, early stopping, device and reproducibility of one training run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_epochs: int = Field(default=200, ge=1, description="Upper bound on passes over data.")
    patience: int | None = Field(
        default=20,
        ge=1,
        description="Stop after this many validations without improvement; None never stops.",
    )
    eval_every: int = Field(default=1, ge=1, description="Validate every this many epochs.")
    grad_clip: float | None = Field(
        default=None, gt=0.0, description="Clip the global gradient norm to this; None: off."
    )
    lr: float = Field(default=1e-3, gt=0.0, description="Adam learning rate.")
    weight_decay: float = Field(default=0.0, ge=0.0, description="Adam L2 weight decay.")
    batch_size: int = Field(default=500, ge=1, description="Examples per optimiser step.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="'auto' uses CUDA when available (not bit-reproducible)."
    )
    amp: bool = Field(default=False, description="float16 autocast + grad scaling; CUDA only.")
    seed: int = Field(default=0, description="Seeds initialisation noise and batch sampling.")
    threads: int | None = Field(
        default=1,
        ge=1,
        description="CPU threads torch uses while training (restored after); None keeps it.",
    )


class TrainableModule(torch.nn.Module, abc.ABC):
    """A network the :class:`Trainer` can train: it turns one batch into a scalar loss."""

    @abc.abstractmethod
    def training_step(self, batch: Any) -> torch.Tensor:
        """The loss of ``batch`` (already on the module's device), a 0-d tensor."""


class TrainCallback(Protocol):
    """Told about every finished epoch; ``metric`` is None when the epoch was not validated."""

    def on_epoch_end(self, epoch: int, loss: float, metric: float | None) -> None: ...


@dataclass(frozen=True)
class TrainResult:
    """What a fit did: the epoch whose weights were kept, its metric and the full history."""

    best_epoch: int  # 0-based; the last epoch when there was no validation
    best_metric: float  # NaN without validation
    epochs_run: int
    stopped_early: bool
    losses: list[float] = field(default_factory=list)  # mean loss per epoch
    metrics: list[tuple[int, float]] = field(default_factory=list)  # (epoch, metric)
    seconds: float = 0.0


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; asking for absent CUDA is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' was asked for but CUDA is not available")
    return torch.device(device)


class Trainer:
    """Runs the epochs: Adam, optional clipping and AMP, validation and early stopping."""

    def __init__(self, config: TrainerConfig | None = None, *, progress: bool = True) -> None:
        self.config = config if config is not None else TrainerConfig()
        self.progress = progress

    def fit(
        self,
        module: TrainableModule,
        train_batches: BatchFactory,
        validate: Validate | None = None,
        callbacks: Sequence[TrainCallback] = (),
        description: str = "training",
    ) -> TrainResult:
        """Train ``module`` in place; it ends in eval mode holding the best weights.

        Without ``validate`` every epoch runs and the last weights are kept. A loss that is
        not finite (NaN or infinite) raises :class:`RecloopError` naming the epoch and batch,
        before it reaches the weights; under AMP a step the gradient scaler skips is left out
        of the epoch's mean loss instead, and an epoch where it skips every step raises.
        """
        cfg = self.config
        device = resolve_device(cfg.device)
        started = time.perf_counter()
        with limit_threads(cfg.threads):
            torch.manual_seed(cfg.seed)
            generator = torch.Generator().manual_seed(cfg.seed)
            module.to(device)
            optimizer = torch.optim.Adam(
                module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
            )
            amp = cfg.amp and device.type == "cuda"
            scaler = torch.amp.GradScaler("cuda", enabled=amp)

            losses: list[float] = []
            metrics: list[tuple[int, float]] = []
            best_metric, best_epoch, best_state = -math.inf, -1, None
            stale, stopped = 0, False
            last_finite: float | None = None
            with _progress_bar(self.progress) as bar:
                task = bar.add_task(description, total=cfg.max_epochs, loss=math.nan, metric="-")
                for epoch in range(cfg.max_epochs):
                    module.train()
                    total, n_batches, n_skipped = 0.0, 0, 0
                    for index, batch in enumerate(train_batches(epoch, generator)):
                        optimizer.zero_grad(set_to_none=True)
                        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                            loss = module.training_step(to_device(batch, device))
                        value = float(loss.detach())
                        finite = math.isfinite(value)
                        if not finite and not amp:
                            raise _diverged(value, epoch, index, last_finite, cfg)
                        scale = scaler.get_scale() if not finite else math.nan  # AMP only
                        scaler.scale(loss).backward()
                        if cfg.grad_clip is not None:
                            scaler.unscale_(optimizer)
                            torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.grad_clip)
                        scaler.step(optimizer)
                        scaler.update()
                        if not finite:
                            # AMP: the scaler skips a step whose gradients overflow and lowers
                            # its scale; a non-finite loss it did not skip reached the weights.
                            if not scaler.get_scale() < scale:
                                raise _diverged(value, epoch, index, last_finite, cfg)
                            n_skipped += 1
                            continue
                        last_finite = value
                        total += value
                        n_batches += 1
                    if n_skipped and not n_batches:
                        raise RecloopError(
                            f"training diverged: every one of the {n_skipped} batches of epoch "
                            f"{epoch + 1} gave a non-finite loss under mixed precision (AMP); "
                            "lower the learning rate, set grad_clip, or turn amp off"
                        )
                    losses.append(total / max(n_batches, 1))

                    metric: float | None = None
                    if validate is not None and (
                        (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.max_epochs
                    ):
                        module.eval()
                        with torch.no_grad():
                            metric = float(validate())
                        metrics.append((epoch, metric))
                        if metric > best_metric:
                            best_metric, best_epoch, stale = metric, epoch, 0
                            best_state = _state_copy(module)
                        else:
                            stale += 1
                    for callback in callbacks:
                        callback.on_epoch_end(epoch, losses[-1], metric)
                    shown = f"{best_metric:.4f}" if best_state is not None else "-"
                    bar.update(task, advance=1, loss=losses[-1], metric=shown)
                    if cfg.patience is not None and stale >= cfg.patience:
                        stopped = True
                        break

            if best_state is not None:
                module.load_state_dict(best_state)
            else:
                best_epoch, best_metric = len(losses) - 1, math.nan
            module.eval()
        return TrainResult(
            best_epoch=best_epoch,
            best_metric=best_metric,
            epochs_run=len(losses),
            stopped_early=stopped,
            losses=losses,
            metrics=metrics,
            seconds=time.perf_counter() - started,
        )


def _diverged(
    value: float, epoch: int, index: int, last_finite: float | None, cfg: TrainerConfig
) -> RecloopError:
    """The error for a non-finite training loss; ``epoch`` and ``index`` are 0-based."""
    before = f"{last_finite:.6g}" if last_finite is not None else "none: it was the first batch"
    return RecloopError(
        f"training diverged: the loss is {value} at epoch {epoch + 1}, batch {index + 1} "
        f"(last finite loss {before}); lower the learning rate (lr={cfg.lr:g}) or set grad_clip"
    )


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor in it (also inside tuples, lists, dicts) on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, tuple | list):
        return type(batch)(to_device(value, device) for value in batch)
    return batch


def _state_copy(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached, cloned copy of the module's state, kept on its device."""
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


@contextmanager
def limit_threads(threads: int | None) -> Iterator[None]:
    """Limit torch and the BLAS/OpenMP pools (NumPy, scikit-learn) to ``threads``, then restore.

    ``None`` leaves every pool as it is.
    """
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        torch.set_num_threads(previous)


def _progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("epochs  loss {task.fields[loss]:.4f}  best NDCG@10 {task.fields[metric]}"),
        TimeElapsedColumn(),
        transient=True,
        disable=not enabled,
    )


# -- checkpoints -------------------------------------------------------------------------


def state_to_numpy(module: torch.nn.Module) -> dict[str, np.ndarray]:
    """The module's state_dict as CPU numpy arrays (bfloat16 widened to float32)."""
    out: dict[str, np.ndarray] = {}
    for name, value in module.state_dict().items():
        tensor = value.detach().cpu()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        out[name] = copy.deepcopy(tensor.numpy())
    return out


def load_numpy_state(module: torch.nn.Module, arrays: Mapping[str, np.ndarray]) -> None:
    """Load arrays written by :func:`state_to_numpy` into ``module`` (strict: names must match)."""
    module.load_state_dict({name: torch.from_numpy(np.array(v)) for name, v in arrays.items()})


def save_checkpoint(
    path: Path,
    module: torch.nn.Module,
    name: str,
    config: ModelConfig,
    extra: dict[str, Any] | None = None,
) -> None:
    """Save ``module``'s weights as safetensors plus a JSON manifest naming ``name``/``config``."""
    from recloop.models.base import write_artifact

    write_artifact(path, name, config, state_to_numpy(module), extra)


def load_checkpoint(path: Path, module: torch.nn.Module, name: str) -> dict[str, Any]:
    """Load weights saved by :func:`save_checkpoint` into ``module``; returns the manifest."""
    from recloop.models.base import read_artifact

    manifest, arrays = read_artifact(path, name)
    load_numpy_state(module, arrays)
    return manifest
