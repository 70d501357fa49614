"""SASRec: causal self-attention over a user's most recent items (Kang & McAuley, 2018).

A history is cut to its last ``max_len`` items, embedded (item embedding + learned position
embedding), passed through ``n_layers`` pre-norm transformer blocks with a causal mask, and
the hidden state at position ``j`` scores every item by a dot product with the (shared) item
embeddings: it predicts item ``j + 1``. Sequences are *right*-padded, so a real position only
ever attends to itself and earlier real positions; position ``j``'s output depends on items
``0..j`` alone (the causality the tests check).

Training computes the loss at every position of a sequence in one causal pass instead of
materialising each prefix as its own sample. ``loss="softmax"`` is the full cross-entropy over
the catalogue, the loss Klenitskiy & Vasilev (2023) and Petrov & Macdonald (2023) found
decisive for SASRec's accuracy; ``loss="sampled_softmax"`` replaces the catalogue with
``n_negatives`` uniformly drawn items shared by the batch, for catalogues too large for a full
softmax. ``windows="all"`` trains on every ``max_len``-long chunk of long histories (more
targets per epoch); ``"last"`` on each user's most recent chunk only, as the original did.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from recloop.data.types import Interactions, Queries
from recloop.errors import ConfigError
from recloop.models.base import ModelConfig
from recloop.models.neural import NeuralConfig, NeuralRecommender
from recloop.training import BatchFactory, TrainableModule

PAD = -100  # target index ignored by the loss


class SASRecConfig(NeuralConfig):
    """Architecture, loss and training windows of SASRec, plus the shared training settings."""

    max_len: int = Field(default=50, ge=2, description="Most recent items the model reads.")
    hidden: int = Field(default=64, ge=1, description="Embedding and hidden width.")
    n_layers: int = Field(default=2, ge=1, description="Transformer blocks.")
    n_heads: int = Field(default=1, ge=1, description="Attention heads (must divide hidden).")
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0, description="Dropout everywhere.")
    loss: Literal["softmax", "sampled_softmax"] = Field(
        default="softmax", description="Full cross-entropy, or against sampled negatives."
    )
    n_negatives: int = Field(
        default=256, ge=1, description="Uniform negatives per batch for 'sampled_softmax'."
    )
    windows: Literal["last", "all"] = Field(
        default="all", description="Train on each user's last max_len items or on every chunk."
    )
    batch_size: int = Field(default=128, ge=1, description="Sequences per optimiser step.")

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> SASRecConfig:
        if self.hidden % self.n_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must divide hidden ({self.hidden})")
        return self


class SASRecNet(TrainableModule):
    """Item + position embeddings, causal pre-norm transformer, dot-product item scores."""

    causal: torch.Tensor  # (max_len, max_len) additive mask, −inf above the diagonal

    def __init__(
        self,
        n_items: int,
        max_len: int,
        hidden: int,
        n_layers: int,
        n_heads: int,
        dropout: float,
        loss: str = "softmax",
        n_negatives: int = 256,
    ) -> None:
        super().__init__()
        self.n_items = n_items
        self.max_len = max_len
        self.loss = loss
        self.n_negatives = n_negatives
        self.items = torch.nn.Embedding(n_items + 1, hidden, padding_idx=n_items)  # last = pad
        self.positions = torch.nn.Embedding(max_len, hidden)
        self.drop = torch.nn.Dropout(dropout)
        layer = torch.nn.TransformerEncoderLayer(
            hidden,
            n_heads,
            dim_feedforward=hidden,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.blocks = torch.nn.TransformerEncoder(
            layer, n_layers, norm=torch.nn.LayerNorm(hidden), enable_nested_tensor=False
        )
        self.register_buffer(
            "causal",
            torch.nn.Transformer.generate_square_subsequent_mask(max_len),
            persistent=False,
        )
        torch.nn.init.normal_(self.items.weight, std=0.02)
        torch.nn.init.normal_(self.positions.weight, std=0.02)
        with torch.no_grad():
            self.items.weight[n_items].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """(batch, length) right-padded item indices (pad = n_items) → hidden (batch, L, d)."""
        length = seq.shape[1]
        if length > self.max_len:
            raise ConfigError(f"sequence of length {length} is longer than max_len {self.max_len}")
        pos = torch.arange(length, device=seq.device)
        scale = self.positions.embedding_dim**0.5
        h = self.drop(self.item_table()[seq] * scale + self.positions(pos))
        mask = self.causal[:length, :length]
        out: torch.Tensor = self.blocks(h, mask=mask, is_causal=True)
        return out

    def item_table(self) -> torch.Tensor:
        """Every item's input/output embedding (n_items + 1, d); the last row is padding."""
        return self.items.weight

    def item_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores of every real item (…, n_items) for hidden states (…, d)."""
        return hidden @ self.item_table()[: self.n_items].T

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Cross-entropy of the next item at every non-pad position, in one causal pass."""
        seq, target = batch
        hidden = self(seq)
        keep = target != PAD
        h, y = hidden[keep], target[keep]  # (n, d), (n,)
        if self.loss == "softmax":
            return F.cross_entropy(self.item_logits(h).float(), y)
        negatives = torch.randint(self.n_items, (self.n_negatives,), device=h.device)
        table = self.item_table()
        pos = (h * table[y]).sum(dim=1, keepdim=True)
        neg = h @ table[negatives].T
        neg = neg.masked_fill(negatives[None, :] == y[:, None], float("-inf"))  # not the target
        logits = torch.cat([pos, neg], dim=1).float()
        return F.cross_entropy(logits, torch.zeros(len(y), dtype=torch.long, device=h.device))


def training_windows(
    indptr: np.ndarray, items: np.ndarray, max_len: int, n_items: int, every_chunk: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded (inputs, targets) of shape (windows, max_len) from CSR item sequences.

    A sequence ``s`` of length n yields inputs ``s[a:b-1]`` and targets ``s[a+1:b]`` for the
    chunk ending at ``b = n`` and, with ``every_chunk``, at ``n - max_len``, ``n - 2·max_len``…
    Inputs are padded with ``n_items``, targets with :data:`PAD`.
    """
    inputs, targets, _ = owned_training_windows(indptr, items, max_len, n_items, every_chunk)
    return inputs, targets


def owned_training_windows(
    indptr: np.ndarray, items: np.ndarray, max_len: int, n_items: int, every_chunk: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`training_windows` plus the user (CSR row) each window comes from."""
    inputs, targets, owners = [], [], []
    for u in range(len(indptr) - 1):
        seq = items[indptr[u] : indptr[u + 1]]
        end = len(seq)
        while end >= 2:
            start = max(0, end - 1 - max_len)
            x, y = seq[start : end - 1], seq[start + 1 : end]
            row_x = np.full(max_len, n_items, dtype=np.int64)
            row_y = np.full(max_len, PAD, dtype=np.int64)
            row_x[: len(x)], row_y[: len(y)] = x, y
            inputs.append(row_x)
            targets.append(row_y)
            owners.append(u)
            if not every_chunk:
                break
            end -= max_len
    if not inputs:
        raise ConfigError("training needs at least one user with two or more train interactions")
    return np.stack(inputs), np.stack(targets), np.asarray(owners, dtype=np.int64)


def last_items(queries: Queries, max_len: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query's last ``max_len`` history items, right-padded, and its last position."""
    lengths = np.minimum(queries.history_lengths(), max_len)
    width = max(int(lengths.max(initial=0)), 1)
    seq = np.full((len(queries), width), n_items, dtype=np.int64)
    for row, n in enumerate(lengths):
        if n:
            seq[row, :n] = queries.history(row)[-n:]
    return seq, np.maximum(lengths - 1, 0)


class SASRec(NeuralRecommender):
    """Self-attentive sequential recommendation with full (or sampled) softmax training."""

    config_class: ClassVar[type[ModelConfig]] = SASRecConfig
    config: SASRecConfig

    def _build(self, n_items: int) -> SASRecNet:
        cfg = self.config
        return SASRecNet(
            n_items,
            cfg.max_len,
            cfg.hidden,
            cfg.n_layers,
            cfg.n_heads,
            cfg.dropout,
            loss=cfg.loss,
            n_negatives=cfg.n_negatives,
        )

    def _batches(self, train: Interactions) -> BatchFactory:
        cfg = self.config
        indptr, items = train.histories()
        inputs, targets = training_windows(
            indptr, items, cfg.max_len, train.n_items, every_chunk=cfg.windows == "all"
        )
        x, y = torch.from_numpy(inputs), torch.from_numpy(targets)
        size = cfg.batch_size

        def batches(epoch: int, generator: torch.Generator) -> list[tuple[torch.Tensor, ...]]:
            order = torch.randperm(len(x), generator=generator)
            return [(x[idx], y[idx]) for idx in order.split(size)]

        return batches

    def _score_chunk(self, queries: Queries, device: torch.device) -> torch.Tensor:
        """Item scores from the hidden state at each query's most recent item."""
        net: SASRecNet = self.net_  # type: ignore[assignment]
        seq, last = last_items(queries, self.config.max_len, self.n_items_)
        hidden = net(torch.from_numpy(seq).to(device))
        at_last = hidden[torch.arange(len(seq), device=device), torch.from_numpy(last).to(device)]
        return net.item_logits(at_last)
