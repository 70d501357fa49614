"""Tokenizers that turn item embeddings into Semantic IDs: RQ-VAE and residual k-means.

A Semantic ID is a tuple of ``levels`` codes, each from a codebook of ``codebook_size``
vectors, chosen coarse to fine: level 1 quantises the item's vector, level 2 what level 1 left
over (the residual), and so on. Two tokenizers share one contract, :class:`Tokenizer`:

* :class:`RQVAE` (TIGER, Rajput et al. 2023): an MLP encoder maps the embedding to a latent,
  ``levels`` residual codebooks quantise it, an MLP decoder reconstructs the embedding from the
  sum of the chosen code vectors. Loss: reconstruction MSE plus, per level,
  ``‖sg[r] − e‖² + β‖r − sg[e]‖²``; the straight-through estimator carries the decoder's
  gradient to the encoder. The MLPs get He initialisation (unit-scale latents from the
  start), codebooks start from k-means on the untrained latents, and codes no batch chose
  during an epoch are re-seeded from random current residuals. Inputs are centred and scaled
  by one global factor, so the loss does not depend on the embedder's scale.
* :class:`ResidualKMeans`: the same residual scheme without a network; k-means (scikit-learn,
  k-means++) on the embeddings, then on the residuals. Fast and a strong baseline.

Items with identical codes collide; :func:`add_suffix` appends a last column that numbers them,
so ``add_suffix(tokenizer.encode(embeddings))`` gives every item a unique Semantic ID. Fitting
needs at least ``codebook_size`` items (a :class:`ConfigError` otherwise): the codebook size is
the vocabulary of the model that generates IDs, so it is never clipped silently. Encoding is
deterministic and frozen after ``fit``, so items added later (cold start) get codes from the
same codebooks. Artifacts are ``manifest.json`` + ``weights.safetensors``, never a pickle.
"""

from __future__ import annotations

import time
import warnings
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self, cast, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from recloop.errors import ConfigError, RecloopError
from recloop.training import limit_threads, load_numpy_state, state_to_numpy

if TYPE_CHECKING:  # recloop.models imports this module (via SID models); load it lazily
    from recloop.models.base import ModelConfig

ENCODE_BATCH = 4096  # items per forward pass when encoding or reconstructing
KMEANS_INIT_RESTARTS = 3  # k-means++ restarts when initialising RQ-VAE codebooks (cheap: latents)


class TokenizerConfig(BaseModel):
    """What every tokenizer has: levels, codebook size, seed, threads. Frozen, no unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    levels: int = Field(default=3, ge=1, description="Codes per Semantic ID (before the suffix).")
    codebook_size: int = Field(default=256, ge=2, description="Vectors per level's codebook (K).")
    seed: int = Field(default=0, description="Seeds k-means, initialisation and batching.")
    threads: int | None = Field(
        default=1, ge=1, description="CPU threads while fitting and encoding; None keeps them."
    )


class ResidualKMeansConfig(TokenizerConfig):
    """Residual k-means: k-means++ restarts and Lloyd iterations per level."""

    n_init: int = Field(default=1, ge=1, description="k-means++ restarts per level; best kept.")
    max_iter: int = Field(default=100, ge=1, description="Lloyd iterations per restart.")


class RQVAEConfig(TokenizerConfig):
    """RQ-VAE architecture, loss weight, codebook care and training schedule."""

    latent_dim: int = Field(default=32, ge=1, description="Width of the quantised latent.")
    hidden_dims: tuple[int, ...] = Field(
        default=(512, 256, 128), description="Encoder hidden widths (the decoder mirrors them)."
    )
    beta: float = Field(default=0.25, ge=0.0, description="Commitment weight β.")
    epochs: int = Field(default=200, ge=1, description="Passes over the items.")
    batch_size: int = Field(default=256, ge=1, description="Items per optimiser step.")
    lr: float = Field(default=2e-3, gt=0.0, description="AdamW learning rate.")
    weight_decay: float = Field(
        default=1e-4, ge=0.0, description="AdamW weight decay on the MLPs (not the codebooks)."
    )
    kmeans_init: bool = Field(
        default=True, description="Start each codebook from k-means on the untrained latents."
    )
    dead_code_restart: bool = Field(
        default=True, description="Re-seed codes unused for an epoch from random residuals."
    )
    progress: bool = Field(default=False, description="Show a progress bar while training.")

    @field_validator("hidden_dims")
    @classmethod
    def _positive_widths(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(width < 1 for width in value):
            raise ValueError(f"hidden widths must be positive, not {value}")
        return value


@runtime_checkable
class Tokenizer(Protocol):
    """Embeddings (n, d) → codes (n, levels); learned in ``fit``, frozen afterwards."""

    @property
    def config(self) -> TokenizerConfig: ...

    @property
    def levels(self) -> int: ...

    @property
    def codebook_size(self) -> int: ...

    def fit(self, embeddings: np.ndarray) -> Self: ...

    def encode(self, embeddings: np.ndarray) -> np.ndarray: ...

    def reconstruct(self, codes: np.ndarray, depth: int) -> np.ndarray: ...

    def save(self, path: Path) -> None: ...

    @classmethod
    def load(cls, path: Path) -> Self: ...


class _TokenizerBase:
    """Config handling, input checks and fitted-state checks shared by both tokenizers."""

    config_class: ClassVar[type[TokenizerConfig]]
    config: TokenizerConfig
    dim_: int

    def __init__(self, config: TokenizerConfig | None = None) -> None:
        self.config = config if config is not None else self.config_class()
        if not isinstance(self.config, self.config_class):
            raise ConfigError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, "
                f"not {type(self.config).__name__}"
            )

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def levels(self) -> int:
        return self.config.levels

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    def _check_fitted(self) -> None:
        if not hasattr(self, "dim_"):
            raise RecloopError(f"{self.name} is not fitted; call fit() first")

    def _fit_input(self, embeddings: np.ndarray) -> np.ndarray:
        x = check_embeddings(embeddings)
        if len(x) < self.codebook_size:
            raise ConfigError(
                f"{self.name}: fit needs at least codebook_size={self.codebook_size} items, "
                f"got {len(x)}; lower codebook_size"
            )
        return x

    def _encode_input(self, embeddings: np.ndarray) -> np.ndarray:
        self._check_fitted()
        return check_embeddings(embeddings, dim=self.dim_, allow_empty=True)

    def _reconstruct_input(self, codes: np.ndarray, depth: int) -> np.ndarray:
        self._check_fitted()
        if not 1 <= depth <= self.levels:
            raise ConfigError(f"depth must be between 1 and {self.levels}, not {depth}")
        return check_codes(codes, self.codebook_size, columns=depth)


class ResidualKMeans(_TokenizerBase):
    """Residual k-means: level ``l`` runs k-means on what levels ``1..l−1`` left over."""

    config_class: ClassVar[type[TokenizerConfig]] = ResidualKMeansConfig
    config: ResidualKMeansConfig
    codebooks_: np.ndarray  # (levels, K, d) float32

    def fit(self, embeddings: np.ndarray) -> Self:
        """Learn one codebook per level with k-means++ (seeded) on the current residuals."""
        from sklearn.cluster import KMeans  # type: ignore[import-untyped]
        from sklearn.exceptions import ConvergenceWarning  # type: ignore[import-untyped]

        cfg = self.config
        x = self._fit_input(embeddings)
        started = time.perf_counter()
        residual = x.astype(np.float64)
        codebooks = np.empty((cfg.levels, cfg.codebook_size, x.shape[1]), dtype=np.float32)
        with limit_threads(cfg.threads):
            for level in range(cfg.levels):
                kmeans = KMeans(
                    n_clusters=cfg.codebook_size,
                    n_init=cfg.n_init,
                    max_iter=cfg.max_iter,
                    random_state=cfg.seed + level,
                )
                with warnings.catch_warnings():
                    # fewer distinct residuals than K only means some codes stay unused
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    kmeans.fit(residual)
                codebooks[level] = kmeans.cluster_centers_.astype(np.float32)
                codes = _nearest(residual, codebooks[level])
                residual -= codebooks[level][codes]
        self.codebooks_ = codebooks
        self.dim_ = x.shape[1]
        self.n_fit_items_ = len(x)
        self.seconds_ = time.perf_counter() - started
        return self

    def encode(self, embeddings: np.ndarray) -> np.ndarray:
        """Codes (n, levels) int64: the nearest code vector to each level's residual."""
        x = self._encode_input(embeddings)
        codes = np.empty((len(x), self.levels), dtype=np.int64)
        with limit_threads(self.config.threads):
            for start in range(0, len(x), ENCODE_BATCH):
                residual = x[start : start + ENCODE_BATCH].astype(np.float64)
                for level, codebook in enumerate(self.codebooks_):
                    chosen = _nearest(residual, codebook)
                    codes[start : start + len(residual), level] = chosen
                    residual -= codebook[chosen]
        return codes

    def reconstruct(self, codes: np.ndarray, depth: int) -> np.ndarray:
        """Embeddings (n, d) float32: the sum of the code vectors of the first ``depth`` levels."""
        codes = self._reconstruct_input(codes, depth)
        out = np.zeros((len(codes), self.dim_), dtype=np.float32)
        for level in range(depth):
            out += self.codebooks_[level][codes[:, level]]
        return out

    def save(self, path: Path) -> None:
        self._check_fitted()
        arrays = {"codebooks": self.codebooks_}
        extra = {"dim": self.dim_, "n_fit_items": self.n_fit_items_}
        _write(path, self.name, self.config, arrays, extra)

    @classmethod
    def load(cls, path: Path) -> Self:
        manifest, arrays = _read(path, cls.__name__)
        tokenizer = cls(ResidualKMeansConfig(**manifest["config"]))
        tokenizer.codebooks_ = arrays["codebooks"]
        tokenizer.dim_ = int(manifest["dim"])
        tokenizer.n_fit_items_ = int(manifest["n_fit_items"])
        return tokenizer


class RQVAENet(torch.nn.Module):
    """Encoder MLP → ``levels`` residual codebooks → decoder MLP (ReLU between layers)."""

    def __init__(
        self,
        dim: int,
        hidden_dims: tuple[int, ...],
        latent_dim: int,
        levels: int,
        codebook_size: int,
        beta: float,
    ) -> None:
        super().__init__()
        self.encoder = _he_mlp([dim, *hidden_dims, latent_dim])
        self.decoder = _he_mlp([latent_dim, *reversed(hidden_dims), dim])
        bound = 1.0 / codebook_size  # VQ-VAE's default; replaced by k-means when asked
        self.codebooks = torch.nn.Parameter(
            torch.empty(levels, codebook_size, latent_dim).uniform_(-bound, bound)
        )
        self.beta = beta

    @staticmethod
    def _mlp(layers: torch.nn.ModuleList, h: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(layers):
            h = layer(h)
            if i < len(layers) - 1:
                h = F.relu(h)
        return h

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, dim) embeddings → (batch, latent) latents."""
        return self._mlp(self.encoder, x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(batch, latent) → (batch, dim) reconstructed embeddings."""
        return self._mlp(self.decoder, z)

    def quantise(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Codes (batch, levels), quantised latent (sum of code vectors), quantisation loss.

        The loss is ``Σ_l ‖sg[r_l] − e_l‖² + β‖r_l − sg[e_l]‖²`` (means over the batch and the
        latent); the next residual is ``r_l − sg[e_l]``, so only the encoder commits.
        """
        residual = z
        quantised = torch.zeros_like(z)
        loss = z.new_zeros(())
        codes = []
        for codebook in self.codebooks:
            chosen = nearest_code(residual.detach(), codebook.detach())
            e = codebook[chosen]
            loss = loss + F.mse_loss(e, residual.detach())
            loss = loss + self.beta * F.mse_loss(residual, e.detach())
            quantised = quantised + e
            residual = residual - e.detach()
            codes.append(chosen)
        return torch.stack(codes, dim=1), quantised, loss

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training loss (reconstruction + quantisation) and the codes of ``x``."""
        z = self.encode(x)
        codes, quantised, q_loss = self.quantise(z)
        z_q = z + (quantised - z).detach()  # straight-through estimator
        recon = F.mse_loss(self.decode(z_q), x)
        return recon + q_loss, codes

    @torch.no_grad()
    def residuals(self, z: torch.Tensor, level: int) -> torch.Tensor:
        """The residual that level ``level`` (0-based) quantises."""
        residual = z
        for codebook in self.codebooks[:level]:
            residual = residual - codebook[nearest_code(residual, codebook)]
        return residual


def _he_mlp(widths: list[int]) -> torch.nn.ModuleList:
    """Linear layers ``widths[0] → … → widths[-1]`` with He initialisation for ReLU between
    them (linear gain on the last), so latents start at unit scale, not shrunk per layer."""
    layers = [torch.nn.Linear(a, b) for a, b in pairwise(widths)]
    for i, layer in enumerate(layers):
        relu = i < len(layers) - 1
        torch.nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu" if relu else "linear")
        torch.nn.init.zeros_(layer.bias)
    return torch.nn.ModuleList(layers)


class RQVAE(_TokenizerBase):
    """Residual-quantised variational autoencoder over item embeddings (TIGER's tokenizer).

    Inputs are centred and scaled by one global factor before the encoder (so the
    reconstruction loss is on a unit scale whatever the embedder); :meth:`reconstruct` undoes it.
    """

    config_class: ClassVar[type[TokenizerConfig]] = RQVAEConfig
    config: RQVAEConfig
    net_: RQVAENet
    mean_: np.ndarray  # (d,) float32
    scale_: float

    def _build(self, dim: int) -> RQVAENet:
        cfg = self.config
        return RQVAENet(
            dim, cfg.hidden_dims, cfg.latent_dim, cfg.levels, cfg.codebook_size, cfg.beta
        )

    def fit(self, embeddings: np.ndarray) -> Self:
        """Train the network: k-means initialisation, AdamW, dead-code restarts per epoch."""
        cfg = self.config
        x_np = self._fit_input(embeddings)
        started = time.perf_counter()
        mean = x_np.mean(axis=0, dtype=np.float64)
        scale = float(np.sqrt(np.mean((x_np - mean) ** 2)))
        self.mean_ = mean.astype(np.float32)
        self.scale_ = scale if scale > 0.0 else 1.0
        with limit_threads(cfg.threads):
            torch.manual_seed(cfg.seed)  # initialisation
            generator = torch.Generator().manual_seed(cfg.seed)  # batches and restarts
            x = torch.from_numpy(self._standardise(x_np))
            net = self._build(x.shape[1])
            if cfg.kmeans_init:
                _kmeans_init(net, x, cfg.seed)
            codebook_params = [net.codebooks]
            mlp_params = [p for name, p in net.named_parameters() if name != "codebooks"]
            optimizer = torch.optim.AdamW(
                [
                    {"params": mlp_params, "weight_decay": cfg.weight_decay},
                    {"params": codebook_params, "weight_decay": 0.0},
                ],
                lr=cfg.lr,
            )
            self.losses_: list[float] = []
            self.restarts_: list[int] = []  # codes re-seeded after each epoch
            with _progress_bar(cfg.progress) as bar:
                task = bar.add_task(
                    f"training {self.name}", total=cfg.epochs, loss=np.nan, used=0.0
                )
                for epoch in range(cfg.epochs):
                    net.train()
                    usage = torch.zeros(cfg.levels, cfg.codebook_size, dtype=torch.int64)
                    total = 0.0
                    order = torch.randperm(len(x), generator=generator)
                    for start in range(0, len(x), cfg.batch_size):
                        batch = x[order[start : start + cfg.batch_size]]
                        optimizer.zero_grad(set_to_none=True)
                        loss, codes = net(batch)
                        loss.backward()
                        optimizer.step()
                        total += float(loss.detach()) * len(batch)
                        for level in range(cfg.levels):
                            usage[level] += torch.bincount(
                                codes[:, level], minlength=cfg.codebook_size
                            )
                    self.losses_.append(total / len(x))
                    restarted = 0
                    if cfg.dead_code_restart and epoch < cfg.epochs - 1:
                        restarted = _restart_dead_codes(net, x, usage, generator)
                    self.restarts_.append(restarted)
                    used = float((usage > 0).float().mean())
                    bar.update(task, advance=1, loss=self.losses_[-1], used=used)
            net.eval()
        self.net_ = net
        self.dim_ = x_np.shape[1]
        self.n_fit_items_ = len(x_np)
        self.seconds_ = time.perf_counter() - started
        return self

    def _standardise(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray((x - self.mean_) / self.scale_, dtype=np.float32)

    @torch.no_grad()
    def encode(self, embeddings: np.ndarray) -> np.ndarray:
        """Codes (n, levels) int64 of the encoder's latents: the nearest code at every level."""
        x = self._encode_input(embeddings)
        codes = np.empty((len(x), self.levels), dtype=np.int64)
        with limit_threads(self.config.threads):
            for start in range(0, len(x), ENCODE_BATCH):
                chunk = torch.from_numpy(self._standardise(x[start : start + ENCODE_BATCH]))
                chosen, _, _ = self.net_.quantise(self.net_.encode(chunk))
                codes[start : start + len(chunk)] = chosen.numpy()
        return codes

    @torch.no_grad()
    def reconstruct(self, codes: np.ndarray, depth: int) -> np.ndarray:
        """Embeddings (n, d) float32 decoded from the sum of the first ``depth`` code vectors."""
        codes = self._reconstruct_input(codes, depth)
        out = np.empty((len(codes), self.dim_), dtype=np.float32)
        books = self.net_.codebooks
        with limit_threads(self.config.threads):
            for start in range(0, len(codes), ENCODE_BATCH):
                chunk = torch.from_numpy(codes[start : start + ENCODE_BATCH])
                z = torch.zeros(len(chunk), books.shape[2])
                for level in range(depth):
                    z += books[level][chunk[:, level]]
                decoded = self.net_.decode(z).numpy()
                out[start : start + len(chunk)] = decoded * self.scale_ + self.mean_
        return out

    def save(self, path: Path) -> None:
        self._check_fitted()
        arrays = {
            "mean": self.mean_,
            **{f"net.{name}": value for name, value in state_to_numpy(self.net_).items()},
        }
        extra = {"dim": self.dim_, "n_fit_items": self.n_fit_items_, "scale": self.scale_}
        _write(path, self.name, self.config, arrays, extra)

    @classmethod
    def load(cls, path: Path) -> Self:
        manifest, arrays = _read(path, cls.__name__)
        tokenizer = cls(RQVAEConfig(**manifest["config"]))
        tokenizer.dim_ = int(manifest["dim"])
        tokenizer.n_fit_items_ = int(manifest["n_fit_items"])
        tokenizer.scale_ = float(manifest["scale"])
        tokenizer.mean_ = arrays.pop("mean")
        tokenizer.net_ = tokenizer._build(tokenizer.dim_)
        load_numpy_state(tokenizer.net_, {k.removeprefix("net."): v for k, v in arrays.items()})
        tokenizer.net_.eval()
        return tokenizer


def make_tokenizer(config: ResidualKMeansConfig | RQVAEConfig) -> Tokenizer:
    """The (unfitted) tokenizer a config describes."""
    if isinstance(config, ResidualKMeansConfig):
        return ResidualKMeans(config)
    if isinstance(config, RQVAEConfig):
        return RQVAE(config)
    raise ConfigError(
        f"no tokenizer for a {type(config).__name__}; use ResidualKMeansConfig or RQVAEConfig"
    )


def add_suffix(codes: np.ndarray) -> np.ndarray:
    """(n, L) codes → (n, L + 1) unique Semantic IDs.

    The last column is the item's rank among items with identical codes, in item-index order
    (0 for the first), so items without a collision end in 0. Encoding new items after the
    catalogue (rows appended at the end) leaves the existing items' suffixes unchanged.
    """
    codes = np.asarray(codes)
    if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
        raise ConfigError(f"codes must be a 2-D integer array, not {codes.ndim}-D {codes.dtype}")
    n = len(codes)
    if n == 0 or codes.shape[1] == 0:
        return np.zeros((n, codes.shape[1] + 1), dtype=np.int64)
    _, group = np.unique(codes, axis=0, return_inverse=True)
    group = group.reshape(-1)
    order = np.argsort(group, kind="stable")  # by group, item index within a group
    sorted_group = group[order]
    starts = np.flatnonzero(np.r_[True, sorted_group[1:] != sorted_group[:-1]])
    sizes = np.diff(np.r_[starts, n])
    suffix = np.empty(n, dtype=np.int64)
    suffix[order] = np.arange(n) - np.repeat(starts, sizes)
    return np.column_stack([codes.astype(np.int64), suffix])


def check_embeddings(
    embeddings: np.ndarray, *, dim: int | None = None, allow_empty: bool = False
) -> np.ndarray:
    """``embeddings`` as a C-contiguous float32 (n, d) array, or a :class:`ConfigError`."""
    x = np.asarray(embeddings)
    if x.ndim != 2:
        raise ConfigError(f"embeddings must be 2-D (items × dims), not of shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ConfigError(f"embeddings must be numeric, not {x.dtype}")
    if x.shape[1] == 0 or (len(x) == 0 and not allow_empty):
        raise ConfigError(f"embeddings are empty (shape {x.shape})")
    if dim is not None and x.shape[1] != dim:
        raise ConfigError(f"embeddings have {x.shape[1]} dims; the tokenizer was fit on {dim}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ConfigError(
            f"embeddings hold NaN or infinite values in {len(rows)} rows (first: row {rows[0]})"
        )
    return x


def check_codes(codes: np.ndarray, codebook_size: int, *, columns: int) -> np.ndarray:
    """The first ``columns`` columns of ``codes`` as int64, checked against ``codebook_size``."""
    c = np.asarray(codes)
    if c.ndim != 2 or not np.issubdtype(c.dtype, np.integer):
        raise ConfigError(f"codes must be a 2-D integer array, not {c.ndim}-D {c.dtype}")
    if c.shape[1] < columns:
        raise ConfigError(f"codes have {c.shape[1]} levels; {columns} are needed")
    c = np.ascontiguousarray(c[:, :columns], dtype=np.int64)
    if c.size and (c.min() < 0 or c.max() >= codebook_size):
        raise ConfigError(f"codes must lie in [0, {codebook_size}), found {c.min()}..{c.max()}")
    return c


def nearest_code(residual: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest code vector (squared Euclidean) per row; ties to the lower index."""
    distance = (codebook * codebook).sum(dim=1) - 2.0 * residual @ codebook.T
    return distance.argmin(dim=1)


def _nearest(residual: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """:func:`nearest_code` in float64 numpy."""
    book = codebook.astype(np.float64)
    distance = (book * book).sum(axis=1) - 2.0 * residual @ book.T
    return distance.argmin(axis=1).astype(np.int64)


@torch.no_grad()
def _kmeans_init(net: RQVAENet, x: torch.Tensor, seed: int) -> None:
    """Set each level's codebook to k-means centroids of that level's initial residuals."""
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    residual = net.encode(x).double().numpy()
    for level in range(net.codebooks.shape[0]):
        kmeans = KMeans(
            n_clusters=net.codebooks.shape[1],
            n_init=KMEANS_INIT_RESTARTS,
            random_state=seed + level,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            kmeans.fit(residual)
        net.codebooks[level] = torch.from_numpy(kmeans.cluster_centers_.astype(np.float32))
        residual -= kmeans.cluster_centers_[_nearest(residual, kmeans.cluster_centers_)]


@torch.no_grad()
def _restart_dead_codes(
    net: RQVAENet, x: torch.Tensor, usage: torch.Tensor, generator: torch.Generator
) -> int:
    """Re-seed codes no item chose this epoch with random current residuals; returns how many.

    Levels go in order, so a level's residuals already reflect the restarts above it.
    """
    was_training = net.training
    net.eval()
    z = net.encode(x)
    restarted = 0
    for level in range(net.codebooks.shape[0]):
        dead = torch.nonzero(usage[level] == 0).flatten()
        if len(dead):
            residual = net.residuals(z, level)
            rows = torch.randperm(len(residual), generator=generator)[: len(dead)]
            net.codebooks[level, dead] = residual[rows]
            restarted += len(dead)
    net.train(was_training)
    return restarted


def _write(
    path: Path,
    name: str,
    config: TokenizerConfig,
    arrays: dict[str, np.ndarray],
    extra: dict[str, Any],
) -> None:
    """:func:`recloop.models.base.write_artifact` (it only dumps the config)."""
    from recloop.models.base import write_artifact

    write_artifact(path, name, cast("ModelConfig", config), arrays, extra)


def _read(path: Path, name: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """:func:`recloop.models.base.read_artifact`, imported lazily."""
    from recloop.models.base import read_artifact

    return read_artifact(path, name)


def _progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("epochs  loss {task.fields[loss]:.4f}  codes used {task.fields[used]:.0%}"),
        TimeElapsedColumn(),
        transient=True,
        disable=not enabled,
    )
