"""The shared body of torch models: training settings, fit with validation, scoring, state.

A neural model subclasses :class:`NeuralRecommender` and supplies three things: the network
(:meth:`NeuralRecommender._build`, a :class:`recloop.training.TrainableModule`), the batches
of one epoch (:meth:`NeuralRecommender._batches`) and the scores of a chunk of queries
(:meth:`NeuralRecommender._score_chunk`). Everything else—seeding, the
:class:`recloop.training.Trainer` with early stopping on the split's validation NDCG@10,
batched inference and safetensors state—lives here once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Self

import numpy as np
import torch
from pydantic import Field

from recloop.data.split import Split
from recloop.data.types import Catalog, Interactions, Queries, Users
from recloop.models.base import ModelConfig, ScoringRecommender
from recloop.training import (
    BatchFactory,
    TrainableModule,
    Trainer,
    TrainerConfig,
    TrainResult,
    load_numpy_state,
    resolve_device,
    state_to_numpy,
)

SCORE_BATCH = 256  # queries per inference batch


class NeuralConfig(ModelConfig):
    """Optimiser, schedule, early stopping, device and reproducibility of a torch model."""

    lr: float = Field(default=1e-3, gt=0.0, description="Adam learning rate.")
    weight_decay: float = Field(default=0.0, ge=0.0, description="Adam L2 weight decay.")
    batch_size: int = Field(default=500, ge=1, description="Examples per optimiser step.")
    max_epochs: int = Field(default=200, ge=1, description="Upper bound on epochs.")
    patience: int = Field(
        default=20, ge=1, description="Validations without NDCG@10 gain before stopping."
    )
    eval_every: int = Field(default=1, ge=1, description="Validate every this many epochs.")
    early_stopping: bool = Field(
        default=True,
        description="Given a Split, stop on its validation NDCG@10 and keep the best epoch.",
    )
    grad_clip: float | None = Field(default=None, gt=0.0, description="Gradient norm cap.")
    seed: int = Field(default=0, description="Seeds initialisation, dropout and batching.")
    threads: int | None = Field(default=1, ge=1, description="CPU threads while training.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="'auto' uses CUDA when available (not bit-reproducible)."
    )
    amp: bool = Field(default=False, description="Mixed precision (CUDA only).")
    progress: bool = Field(default=False, description="Show the training progress bar.")

    def trainer(self, *, validated: bool) -> TrainerConfig:
        """The :class:`TrainerConfig` this model trains with (no patience without validation)."""
        return TrainerConfig(
            max_epochs=self.max_epochs,
            patience=self.patience if validated else None,
            eval_every=self.eval_every,
            grad_clip=self.grad_clip,
            lr=self.lr,
            weight_decay=self.weight_decay,
            batch_size=self.batch_size,
            device=self.device,
            amp=self.amp,
            seed=self.seed,
            threads=self.threads,
        )


class NeuralRecommender(ScoringRecommender):
    """A :class:`ScoringRecommender` whose learned state is one torch network, ``net_``."""

    config: NeuralConfig
    net_: TrainableModule

    # -- subclass hooks -------------------------------------------------------------
    def _build(self, n_items: int) -> TrainableModule:
        """A freshly initialised network for ``n_items`` items."""
        raise NotImplementedError

    def _batches(self, train: Interactions) -> BatchFactory:
        """The epoch → batches factory over the positive train interactions."""
        raise NotImplementedError

    def _score_chunk(self, queries: Queries, device: torch.device) -> torch.Tensor:
        """Scores (len(queries) × n_items) of at most :data:`SCORE_BATCH` queries."""
        raise NotImplementedError

    # -- shared body ----------------------------------------------------------------
    def fit(
        self,
        data: Split | Interactions,
        catalog: Catalog | None = None,
        users: Users | None = None,
    ) -> Self:
        self._split: Split | None = data if isinstance(data, Split) else None  # for _fit
        try:
            return super().fit(data, catalog, users)
        finally:
            del self._split

    def _fit(self, train: Interactions, catalog: Catalog | None, users: Users | None) -> None:
        torch.manual_seed(self.config.seed)  # initialisation
        self.net_ = self._build(train.n_items)
        self.result_: TrainResult = train_network(
            self, self.net_, self._batches(train), self._split
        )

    @torch.no_grad()
    def _score(self, queries: Queries) -> np.ndarray:
        net = self.net_
        was_training = net.training
        if was_training:  # eval() walks every submodule: skip it when already evaluating
            net.eval()
        device = next(net.parameters()).device
        out = np.empty((len(queries), self.n_items_), dtype=np.float32)
        for start in range(0, len(queries), SCORE_BATCH):
            rows = np.arange(start, min(start + SCORE_BATCH, len(queries)))
            out[rows] = self._score_chunk(queries.take(rows), device).float().cpu().numpy()
        if was_training:
            net.train()
        return out

    def _state(self) -> dict[str, np.ndarray]:
        return {f"net.{name}": value for name, value in state_to_numpy(self.net_).items()}

    def _set_state(self, arrays: dict[str, np.ndarray], manifest: dict[str, Any]) -> None:
        self.net_ = self._build(self.n_items_)
        load_numpy_state(self.net_, {k.removeprefix("net."): v for k, v in arrays.items()})
        self.net_.to(resolve_device("cpu")).eval()


def train_network(
    model: Any, net: TrainableModule, batches: BatchFactory, split: Split | None
) -> TrainResult:
    """Train ``net`` for ``model`` (whose config is a :class:`NeuralConfig`) with the shared
    :class:`recloop.training.Trainer`, early-stopped on ``split``'s validation NDCG@10 when
    the config asks for it and the split has a validation part."""
    cfg: NeuralConfig = model.config
    validate = validation_ndcg(model, split if cfg.early_stopping else None)
    trainer = Trainer(cfg.trainer(validated=validate is not None), progress=cfg.progress)
    return trainer.fit(net, batches, validate, description=f"training {model.name}")


def validation_ndcg(model: Any, split: Split | None) -> Callable[[], float] | None:
    """A function returning ``model``'s NDCG@10 on ``split``'s validation part (None if empty).

    Used as the :class:`recloop.training.Trainer`'s early-stopping metric.
    """
    if split is None or not len(split.valid):
        return None
    from recloop.eval.evaluate import evaluate

    valid = split.evaluation_set("valid")

    def ndcg_at_10() -> float:
        result = evaluate(model, valid, (10,), progress=False, n_items=model.n_items_)
        return float(result.metrics["ndcg@10"])

    return ndcg_at_10


def user_vector_batches(train: Interactions, batch_size: int) -> BatchFactory:
    """Epochs of shuffled dense binary user rows (users with at least one train item)."""
    x = train.to_csr().astype(np.float32)
    x.sum_duplicates()
    x.data[:] = 1.0
    rows = np.flatnonzero(np.diff(x.indptr) > 0)

    def batches(epoch: int, generator: torch.Generator) -> list[torch.Tensor]:
        order = rows[torch.randperm(len(rows), generator=generator).numpy()]
        return [
            torch.from_numpy(x[order[s : s + batch_size]].toarray())
            for s in range(0, len(order), batch_size)
        ]

    return batches
