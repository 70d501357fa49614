"""DiffRec: Gaussian diffusion over a user's interaction vector (Wang et al., SIGIR 2023).

The forward process corrupts a user's binary history ``x₀`` (n_items) into
``x_t = √ᾱ_t · x₀ + √(1 − ᾱ_t) · ε`` for ``t = 0 … T−1``. The noise follows the paper's
*linear* schedule, linear in the variance: ``1 − ᾱ_t = s · (α_min + (α_max − α_min)·t/(T−1))``
with noise scale ``s``, and the first β is pinned to 1e-5 as in the authors' code so that step
0 is almost clean. An MLP with a sinusoidal step embedding (tanh, input dropout) predicts ``x₀``
from ``(x_t, t)`` and is trained with the mean squared error at a uniformly drawn step,
optionally reweighted by ``SNR(t−1) − SNR(t)`` (``reweight``).

Inference corrupts the history for ``inference_steps`` steps (``T'``; 0 leaves it clean,
the setting the paper found best for recommendation, since a user's history is not noise) and
then runs the reverse process over the ``T`` steps with the posterior mean
``μ(x_t, x̂₀)`` and no sampling noise; the final ``x̂₀`` is the item scores. The inference
noise is a function of the config's seed and the history alone (see :func:`inference_noise`),
so a fitted model scores a history the same way every time, after save/load and in any batch.

L-DiffRec (the item-clustered latent variant for large catalogues) is not implemented.
"""

from __future__ import annotations

import hashlib
import math
from itertools import pairwise
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from recloop.data.types import Interactions, Queries
from recloop.models.base import ModelConfig
from recloop.models.neural import NeuralConfig, NeuralRecommender, user_vector_batches
from recloop.training import BatchFactory, TrainableModule

FIRST_BETA = 1e-5  # β₀, as the authors fix it


class DiffRecConfig(NeuralConfig):
    """Diffusion schedule, denoiser MLP and training settings of DiffRec."""

    steps: int = Field(default=5, ge=1, description="Diffusion steps T.")
    noise_scale: float = Field(default=0.01, ge=0.0, description="Noise scale s (0: none).")
    noise_min: float = Field(default=0.001, gt=0.0, lt=1.0, description="α_min of the schedule.")
    noise_max: float = Field(default=0.01, gt=0.0, lt=1.0, description="α_max of the schedule.")
    inference_steps: int = Field(
        default=0, ge=0, description="Forward steps T' applied to a history before denoising."
    )
    hidden_dims: tuple[int, ...] = Field(
        default=(1000,), description="Hidden widths of the denoiser MLP."
    )
    step_embedding: int = Field(default=10, ge=1, description="Width of the step embedding.")
    dropout: float = Field(default=0.5, ge=0.0, lt=1.0, description="Dropout on the input.")
    reweight: bool = Field(default=False, description="Weight the loss by SNR(t−1) − SNR(t).")
    lr: float = Field(default=1e-4, gt=0.0, description="Adam learning rate.")
    batch_size: int = Field(default=400, ge=1, description="Users per optimiser step.")

    @model_validator(mode="after")
    def _schedule_is_valid(self) -> DiffRecConfig:
        if self.noise_min > self.noise_max:
            raise ValueError(f"noise_min ({self.noise_min}) exceeds noise_max ({self.noise_max})")
        if self.inference_steps > self.steps:
            raise ValueError(
                f"inference_steps ({self.inference_steps}) exceeds steps ({self.steps})"
            )
        if self.noise_scale * self.noise_max >= 1.0:
            raise ValueError("noise_scale · noise_max must stay below 1")
        return self


def linear_variance_betas(steps: int, scale: float, low: float, high: float) -> np.ndarray:
    """β_t of the schedule whose variance ``1 − ᾱ_t`` rises linearly from s·low to s·high."""
    variance = scale * np.linspace(low, high, steps, dtype=np.float64)
    alpha_bar = 1.0 - variance
    betas = np.empty(steps, dtype=np.float64)
    betas[0] = variance[0]
    betas[1:] = 1.0 - alpha_bar[1:] / alpha_bar[:-1]
    betas[0] = FIRST_BETA
    return np.clip(betas, 0.0, 0.999)


def step_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding (len(t), dim) of integer steps, as in DDPM."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    return F.pad(emb, (0, dim - 2 * half))


def inference_noise(x0: torch.Tensor, seed: int) -> torch.Tensor:
    """Standard normal noise shaped like ``x0``, each row a function of ``seed`` and that row.

    Every row is drawn from a CPU :class:`torch.Generator` seeded with a SHA-256 of the seed
    and the row's non-zero entries (for a history: its item set), so the noise a history gets
    does not depend on the call, the batch it is in or the device, and torch's global RNG is
    left alone. It draws as many numbers as ``randn_like`` would, plus one hash per row.
    """
    x = x0.detach().float().cpu().numpy()
    rows, cols = np.nonzero(x)
    bounds = np.searchsorted(rows, np.arange(len(x) + 1))
    noise = torch.empty(x.shape, dtype=torch.float32)
    generator = torch.Generator()
    for row in range(len(x)):
        items = cols[bounds[row] : bounds[row + 1]]
        digest = hashlib.sha256(f"{seed}:".encode())
        digest.update(np.ascontiguousarray(items, dtype="<i8").tobytes())
        digest.update(np.ascontiguousarray(x[row, items], dtype="<f4").tobytes())
        generator.manual_seed(int.from_bytes(digest.digest()[:8], "little"))
        torch.randn(x.shape[1], generator=generator, out=noise[row])
    return noise.to(device=x0.device, dtype=x0.dtype)


class DiffRecNet(TrainableModule):
    """The x₀-predicting denoiser and the diffusion it is trained in."""

    sqrt_ab: torch.Tensor  # √ᾱ_t
    sqrt_1m_ab: torch.Tensor  # √(1 − ᾱ_t)
    snr: torch.Tensor  # ᾱ_t / (1 − ᾱ_t)
    post_c0: torch.Tensor
    post_ct: torch.Tensor

    def __init__(
        self,
        n_items: int,
        hidden_dims: tuple[int, ...],
        emb_dim: int,
        dropout: float,
        betas: np.ndarray,
        reweight: bool,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.emb_dim = emb_dim
        self.seed = seed  # of the inference noise (not state: it comes from the config)
        self.reweight = reweight
        self.step_proj = torch.nn.Linear(emb_dim, emb_dim)
        widths = [n_items + emb_dim, *hidden_dims, n_items]
        linears = [torch.nn.Linear(a, b) for a, b in pairwise(widths)]
        for layer in linears:
            torch.nn.init.xavier_normal_(layer.weight)
            torch.nn.init.normal_(layer.bias, std=0.001)
        self.layers = torch.nn.ModuleList(linears)
        self.drop = torch.nn.Dropout(dropout)
        alpha_bar = np.cumprod(1.0 - betas)
        alpha_bar_prev = np.concatenate([[1.0], alpha_bar[:-1]])
        tables = {
            "sqrt_ab": np.sqrt(alpha_bar),
            "sqrt_1m_ab": np.sqrt(1.0 - alpha_bar),
            "snr": alpha_bar / (1.0 - alpha_bar),
            # posterior q(x_{t-1} | x_t, x0) mean = c0 · x0 + ct · x_t
            "post_c0": betas * np.sqrt(alpha_bar_prev) / (1.0 - alpha_bar),
            "post_ct": (1.0 - alpha_bar_prev) * np.sqrt(1.0 - betas) / (1.0 - alpha_bar),
        }
        for name, values in tables.items():
            self.register_buffer(name, torch.tensor(values, dtype=torch.float32), persistent=False)
        self.steps = len(betas)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predicted x₀ (batch, n_items) from noisy vectors and their steps."""
        emb = self.step_proj(step_embedding(t, self.emb_dim))
        h = torch.cat([self.drop(x_t), emb], dim=1)
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = torch.tanh(h)
        return h

    def corrupt(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t drawn from q(x_t | x₀) with the given standard normal noise."""
        return self.sqrt_ab[t][:, None] * x0 + self.sqrt_1m_ab[t][:, None] * noise

    def training_step(self, batch: torch.Tensor) -> torch.Tensor:
        """(Reweighted) mean squared error of the x₀ prediction at a uniform random step."""
        t = torch.randint(self.steps, (batch.shape[0],), device=batch.device)
        x_t = self.corrupt(batch, t, torch.randn_like(batch))
        mse = (self(x_t, t).float() - batch).pow(2).mean(dim=1)
        if self.reweight:
            weight = torch.where(t == 0, 1.0, self.snr[(t - 1).clamp(min=0)] - self.snr[t])
            mse = weight * mse
        return mse.mean()

    @torch.no_grad()
    def denoise(self, x0: torch.Tensor, inference_steps: int) -> torch.Tensor:
        """Corrupt for ``inference_steps`` steps, then reverse all steps with posterior means.

        The corruption noise is :func:`inference_noise` of each row, so the result is
        deterministic.
        """
        x_t = x0
        if inference_steps > 0:
            t = torch.full((x0.shape[0],), inference_steps - 1, device=x0.device)
            x_t = self.corrupt(x0, t, inference_noise(x0, self.seed))
        for step in reversed(range(self.steps)):
            t = torch.full((x0.shape[0],), step, device=x0.device)
            x0_hat = self(x_t, t)
            x_t = self.post_c0[step] * x0_hat + self.post_ct[step] * x_t
        return x_t


class DiffRec(NeuralRecommender):
    """Diffusion recommender over interaction vectors (Wang et al. 2023)."""

    config_class: ClassVar[type[ModelConfig]] = DiffRecConfig
    config: DiffRecConfig

    def _build(self, n_items: int) -> DiffRecNet:
        cfg = self.config
        betas = linear_variance_betas(cfg.steps, cfg.noise_scale, cfg.noise_min, cfg.noise_max)
        return DiffRecNet(
            n_items,
            cfg.hidden_dims,
            cfg.step_embedding,
            cfg.dropout,
            betas,
            cfg.reweight,
            seed=cfg.seed,
        )

    def _batches(self, train: Interactions) -> BatchFactory:
        return user_vector_batches(train, self.config.batch_size)

    def _score_chunk(self, queries: Queries, device: torch.device) -> torch.Tensor:
        """The denoised interaction vector of each query's history."""
        net: DiffRecNet = self.net_  # type: ignore[assignment]
        history = torch.from_numpy(queries.history_csr(self.n_items_).toarray()).to(device)
        return net.denoise(history, self.config.inference_steps)
