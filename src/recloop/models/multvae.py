"""Mult-VAE and Mult-DAE: autoencoders over a user's whole history with a multinomial likelihood.

Liang et al. (2018), "Variational Autoencoders for Collaborative Filtering". A user's binary
history ``x`` (n_items) is L2-normalised, dropped out (p = 0.5) and encoded by a tanh MLP
``[n_items → 600 → 200]``; the decoder mirrors it back to ``n_items`` logits and the loss is the
multinomial log-likelihood ``−Σ_i x_i · log_softmax(logits)_i``. Mult-VAE encodes a Gaussian
``q(z|x) = N(μ, σ²)`` and adds ``β · KL(q ‖ N(0, I))`` with β annealed linearly to
``anneal_cap`` over ``total_anneal_steps`` optimiser steps; Mult-DAE keeps a deterministic
latent and no KL. At inference the mean latent is decoded, so any query with a history, also
an unknown user (−1), is scored by the network itself. Training runs through
:class:`recloop.models.neural.NeuralRecommender` (early stopping on validation NDCG@10 when
``fit`` is given a :class:`Split`).
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field

from recloop.data.types import Interactions, Queries
from recloop.models.base import ModelConfig
from recloop.models.neural import NeuralConfig, NeuralRecommender, user_vector_batches
from recloop.training import BatchFactory, TrainableModule


class MultDAEConfig(NeuralConfig):
    """Architecture and input dropout of Mult-DAE, plus the shared training settings."""

    hidden_dims: tuple[int, ...] = Field(
        default=(600,), description="Encoder hidden widths (the decoder mirrors them)."
    )
    latent_dim: int = Field(default=200, ge=1, description="Width of the latent code.")
    dropout: float = Field(default=0.5, ge=0.0, lt=1.0, description="Dropout on the input.")


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


class MultDAE(NeuralRecommender):
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

    def _batches(self, train: Interactions) -> BatchFactory:
        return user_vector_batches(train, self.config.batch_size)

    def _score_chunk(self, queries: Queries, device: torch.device) -> torch.Tensor:
        """Decoder logits of the mean latent for each query's history."""
        history = torch.from_numpy(queries.history_csr(self.n_items_).toarray()).to(device)
        logits, _, _ = self.net_(history)
        return logits


class MultVAE(MultDAE):
    """Variational autoencoder with a multinomial likelihood and annealed KL (Liang et al. 2018)."""

    config_class: ClassVar[type[ModelConfig]] = MultVAEConfig
    config: MultVAEConfig
    variational = True
