"""Mult-VAE and Mult-DAE: autoencoders over a user's whole history with a multinomial likelihood.

Liang et al. (2018), "Variational Autoencoders for Collaborative Filtering". A user's binary
history ``x`` (n_items) is L2-normalised, dropped out (p = 0.5) and encoded by a tanh MLP
``[n_items → 600 → 200]``; the decoder mirrors it back to ``n_items`` logits and the loss is the
multinomial log-likelihood ``−Σ_i x_i · log_softmax(logits)_i``. Mult-VAE encodes a Gaussian
``q(z|x) = N(μ, σ²)`` and adds ``β · KL(q ‖ N(0, I))`` with β annealed linearly to
``anneal_cap`` over ``total_anneal_steps`` optimiser steps; Mult-DAE keeps a deterministic
latent and no KL. At inference the mean latent is decoded, so any query with a history, also
an unknown user (−1), is scored by the network itself. Training uses
:class:`recloop.training.Trainer`
with early stopping on validation NDCG@10 when ``fit`` is given a :class:`Split`.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from typing import Any, ClassVar, Literal, Self

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from pydantic import Field

from recloop.data.split import Split
from recloop.data.types import Catalog, Interactions, Queries, Users
from recloop.models.base import ModelConfig, ScoringRecommender
from recloop.training import (
    TrainableModule,
    Trainer,
    TrainerConfig,
    TrainResult,
    load_numpy_state,
    resolve_device,
    state_to_numpy,
)

_SCORE_BATCH = 1024  # queries per inference batch


class MultDAEConfig(ModelConfig):
    """Architecture, input dropout, optimiser and training schedule of Mult-DAE."""

    hidden_dims: tuple[int, ...] = Field(
        default=(600,), description="Encoder hidden widths (the decoder mirrors them)."
    )
    latent_dim: int = Field(default=200, ge=1, description="Width of the latent code.")
    dropout: float = Field(default=0.5, ge=0.0, lt=1.0, description="Dropout on the input.")
    lr: float = Field(default=1e-3, gt=0.0, description="Adam learning rate.")
    weight_decay: float = Field(default=0.0, ge=0.0, description="Adam L2 weight decay.")
    batch_size: int = Field(default=500, ge=1, description="Users per optimiser step.")
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

    def trainer(self) -> TrainerConfig:
        """The :class:`TrainerConfig` this model trains with."""
        return TrainerConfig(
            max_epochs=self.max_epochs,
            patience=self.patience,
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


class MultVAEConfig(MultDAEConfig):
    """Mult-DAE's settings plus the KL annealing schedule."""

    anneal_cap: float = Field(default=0.2, ge=0.0, description="Largest KL weight β.")
    total_anneal_steps: int = Field(
        default=200_000, ge=1, description="Optimiser steps over which β rises from 0 to 1."
    )


class AutoencoderNet(TrainableModule):
    """The encoder–decoder MLP; ``variational`` switches between Mult-VAE and Mult-DAE."""

    def __init__(
        self,
        n_items: int,
        hidden_dims: tuple[int, ...],
        latent_dim: int,
        dropout: float,
        variational: bool,
        anneal_cap: float = 0.0,
        total_anneal_steps: int = 1,
    ) -> None:
        super().__init__()
        self.variational = variational
        self.anneal_cap = anneal_cap
        self.total_anneal_steps = total_anneal_steps
        self.steps = 0  # optimiser steps taken, for the β schedule
        code = 2 * latent_dim if variational else latent_dim  # μ and log σ² side by side
        enc = [n_items, *hidden_dims, code]
        dec = [latent_dim, *reversed(hidden_dims), n_items]
        self.encoder = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in pairwise(enc))
        self.decoder = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in pairwise(dec))
        self.drop = torch.nn.Dropout(dropout)
        self.latent_dim = latent_dim
        for layer in [*self.encoder, *self.decoder]:  # as in the authors' code
            torch.nn.init.xavier_uniform_(layer.weight)
            torch.nn.init.normal_(layer.bias, std=0.001)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(batch, n_items) histories → μ (batch, latent) and log σ² (None for the DAE)."""
        h = self.drop(F.normalize(x, dim=1))
        for i, layer in enumerate(self.encoder):
            h = layer(h)
            if i < len(self.encoder) - 1:
                h = torch.tanh(h)
        if not self.variational:
            return h, None
        return h[:, : self.latent_dim], h[:, self.latent_dim :]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(batch, latent) codes → (batch, n_items) logits."""
        h = z
        for i, layer in enumerate(self.decoder):
            h = layer(h)
            if i < len(self.decoder) - 1:
                h = torch.tanh(h)
        return h

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Logits (batch, n_items), μ and log σ²; z is sampled only in training mode."""
        mu, logvar = self.encode(x)
        z = mu
        if logvar is not None and self.training:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(z), mu, logvar

    def beta(self) -> float:
        """The current KL weight: linear in steps, capped at ``anneal_cap``."""
        return min(self.anneal_cap, self.steps / self.total_anneal_steps)

    def training_step(self, batch: torch.Tensor) -> torch.Tensor:
        """Negative multinomial log-likelihood (+ β·KL for the VAE), averaged over users."""
        logits, mu, logvar = self(batch)
        nll = -(F.log_softmax(logits.float(), dim=1) * batch).sum(dim=1).mean()
        if logvar is None:
            return nll
        kl = 0.5 * (logvar.exp() + mu.pow(2) - 1.0 - logvar).sum(dim=1).mean()
        loss = nll + self.beta() * kl
        self.steps += 1
        return loss


class MultDAE(ScoringRecommender):
    """Denoising autoencoder with a multinomial likelihood (Liang et al. 2018)."""

    config_class: ClassVar[type[ModelConfig]] = MultDAEConfig
    config: MultDAEConfig
    variational = False

    def _build(self, n_items: int) -> AutoencoderNet:
        cfg = self.config
        extra: dict[str, Any] = {}
        if isinstance(cfg, MultVAEConfig):
            extra = {"anneal_cap": cfg.anneal_cap, "total_anneal_steps": cfg.total_anneal_steps}
        return AutoencoderNet(
            n_items, cfg.hidden_dims, cfg.latent_dim, cfg.dropout, self.variational, **extra
        )

    def fit(
        self,
        data: Split | Interactions,
        catalog: Catalog | None = None,
        users: Users | None = None,
    ) -> Self:
        self._split: Split | None = (
            data if isinstance(data, Split) else None
        )  # read by _fit for validation
        try:
            return super().fit(data, catalog, users)
        finally:
            del self._split

    def _fit(self, train: Interactions, catalog: Catalog | None, users: Users | None) -> None:
        cfg = self.config
        x = train.to_csr().astype(np.float32)
        x.sum_duplicates()
        x.data[:] = 1.0
        rows = np.flatnonzero(np.diff(x.indptr) > 0)  # users with at least one train item

        torch.manual_seed(cfg.seed)  # initialisation
        self.net_ = self._build(x.shape[1])

        def batches(epoch: int, generator: torch.Generator) -> list[torch.Tensor]:
            order = rows[torch.randperm(len(rows), generator=generator).numpy()]
            return [
                torch.from_numpy(x[order[s : s + cfg.batch_size]].toarray())
                for s in range(0, len(order), cfg.batch_size)
            ]

        validate: Callable[[], float] | None = None
        split = self._split
        if cfg.early_stopping and split is not None and len(split.valid):
            from recloop.eval.evaluate import evaluate

            valid = split.evaluation_set("valid")

            def ndcg_at_10() -> float:
                result = evaluate(self, valid, (10,), progress=False, n_items=self.n_items_)
                return float(result.metrics["ndcg@10"])

            validate = ndcg_at_10

        trainer = Trainer(
            cfg.trainer().model_copy(
                update={"patience": cfg.patience if validate is not None else None}
            ),
            progress=cfg.progress,
        )
        self.result_: TrainResult = trainer.fit(
            self.net_, batches, validate, description=f"training {self.name}"
        )

    @torch.no_grad()
    def _score(self, queries: Queries) -> np.ndarray:
        """Decoder logits of the mean latent for each query's history (queries × items)."""
        history: sp.csr_matrix = queries.history_csr(self.n_items_)
        net = self.net_
        was_training = net.training
        net.eval()
        device = next(net.parameters()).device
        out = np.empty(history.shape, dtype=np.float32)
        for start in range(0, history.shape[0], _SCORE_BATCH):
            chunk = torch.from_numpy(history[start : start + _SCORE_BATCH].toarray()).to(device)
            logits, _, _ = net(chunk)
            out[start : start + _SCORE_BATCH] = logits.float().cpu().numpy()
        net.train(was_training)
        return out

    def _state(self) -> dict[str, np.ndarray]:
        return {f"net.{name}": value for name, value in state_to_numpy(self.net_).items()}

    def _set_state(self, arrays: dict[str, np.ndarray], manifest: dict[str, Any]) -> None:
        self.net_ = self._build(self.n_items_)
        load_numpy_state(self.net_, {k.removeprefix("net."): v for k, v in arrays.items()})
        self.net_.to(resolve_device("cpu")).eval()


class MultVAE(MultDAE):
    """Variational autoencoder with a multinomial likelihood and annealed KL (Liang et al. 2018)."""

    config_class: ClassVar[type[ModelConfig]] = MultVAEConfig
    config: MultVAEConfig
    variational = True
