"""The TIGER network: a causal encoder over SID-embedded items, a decoder of the next item's SID.

Items enter as the sum of their Semantic-ID token embeddings (one table per level, the
collision suffix included), preceded by an optional hashed user token. The encoder is causal
over items, like SASRec, so one pass over a history serves every prefix of it: the decoder
query for "the item after position j" cross-attends to encoder states ``0..j`` only. For each
position the decoder reads ``[BOS, c1, …, c(D−1)]`` of the target item and predicts
``c1, …, cD``, each over its own level's vocabulary.

TIGER (Rajput et al., 2023) reads a history as a flat sequence of SID tokens through a
bidirectional encoder and trains on each prefix as its own sample. Item-level causal encoding
is what lets it train on every prefix in one pass on a CPU budget; the decoder, the per-level
token embeddings, the user token and constrained beam search are the paper's.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from recloop.errors import ConfigError
from recloop.training import TrainableModule

PAD = -100  # target ignored by the loss


class TigerNet(TrainableModule):
    """Encoder over item histories, decoder over the levels of the next item's Semantic ID."""

    codes: torch.Tensor  # (n_items + 1, depth) token ids with level offsets; last row = pad
    offsets: torch.Tensor  # (depth,) first token id of each level

    def __init__(
        self,
        codes: np.ndarray,
        vocab: tuple[int, ...],
        *,
        max_len: int,
        hidden: int,
        encoder_layers: int,
        decoder_layers: int,
        n_heads: int,
        feedforward: int,
        dropout: float,
        user_buckets: int,
    ) -> None:
        super().__init__()
        codes = np.asarray(codes, dtype=np.int64)
        self.depth = len(vocab)
        if codes.ndim != 2 or codes.shape[1] != self.depth:
            raise ConfigError(f"codes must be (items, {self.depth}), not {codes.shape}")
        self.vocab = tuple(int(v) for v in vocab)
        self.n_items = len(codes)
        self.max_len = max_len
        self.user_buckets = user_buckets
        offsets = np.concatenate([[0], np.cumsum(self.vocab)[:-1]]).astype(np.int64)
        n_tokens = int(sum(self.vocab))
        self.pad_token = n_tokens
        self.bos_token = n_tokens + 1
        table = np.full((self.n_items + 1, self.depth), self.pad_token, dtype=np.int64)
        table[: self.n_items] = codes + offsets
        self.register_buffer("codes", torch.from_numpy(table), persistent=False)
        self.register_buffer("offsets", torch.from_numpy(offsets), persistent=False)

        self.tokens = torch.nn.Embedding(n_tokens + 2, hidden, padding_idx=self.pad_token)
        self.levels = torch.nn.Embedding(self.depth, hidden)
        self.user = torch.nn.Embedding(user_buckets + 1, hidden) if user_buckets else None
        extra = 1 if user_buckets else 0
        self.positions = torch.nn.Embedding(max_len + extra, hidden)
        self.drop = torch.nn.Dropout(dropout)
        enc = torch.nn.TransformerEncoderLayer(
            hidden, n_heads, feedforward, dropout, "gelu", batch_first=True, norm_first=True
        )
        self.encoder = torch.nn.TransformerEncoder(
            enc, encoder_layers, norm=torch.nn.LayerNorm(hidden), enable_nested_tensor=False
        )
        self.decoder = torch.nn.ModuleList(
            DecoderLayer(hidden, n_heads, feedforward, dropout) for _ in range(decoder_layers)
        )
        self.decoder_norm = torch.nn.LayerNorm(hidden)
        self.head = torch.nn.Linear(hidden, n_tokens)
        for emb in (self.tokens, self.levels, self.positions, *([self.user] if self.user else [])):
            torch.nn.init.normal_(emb.weight, std=0.02)
        with torch.no_grad():
            self.tokens.weight[self.pad_token].zero_()

    def extend_items(self, codes: np.ndarray) -> None:
        """Append new items' codes (cold start): they can appear in histories at once."""
        codes = np.asarray(codes, dtype=np.int64)
        table = self.codes
        new = torch.from_numpy(codes).to(table.device) + self.offsets
        self.codes = torch.cat([table[:-1], new, table[-1:]])
        self.n_items += len(codes)

    # -- encoder ----------------------------------------------------------------------
    def encode(self, seq: torch.Tensor, users: torch.Tensor | None) -> torch.Tensor:
        """(batch, length) right-padded items (pad = n_items) → states (batch, T, hidden).

        With user tokens, state 0 is the user's and state ``j + 1`` follows item ``j``.
        """
        length = seq.shape[1]
        if length > self.max_len:
            raise ConfigError(f"sequence of length {length} is longer than max_len {self.max_len}")
        h = self.tokens(self.codes[seq]).sum(dim=2)  # (B, L, d)
        if self.user is not None:
            if users is None:
                raise ConfigError("this TIGER network reads user tokens; pass user buckets")
            h = torch.cat([self.user(users)[:, None, :], h], dim=1)
        steps = h.shape[1]
        h = self.drop(h + self.positions(torch.arange(steps, device=seq.device)))
        mask = torch.nn.Transformer.generate_square_subsequent_mask(steps, device=seq.device)
        out: torch.Tensor = self.encoder(h, mask=mask, is_causal=True)
        return out

    # -- decoder ----------------------------------------------------------------------
    def _decoder_inputs(self, prefix: torch.Tensor) -> torch.Tensor:
        """Embeddings of ``[BOS, prefix…]`` with level embeddings: (..., l + 1, d)."""
        bos = torch.full((*prefix.shape[:-1], 1), self.bos_token, device=prefix.device)
        tokens = torch.cat([bos, prefix], dim=-1)
        lv = torch.arange(tokens.shape[-1], device=prefix.device)
        return self.tokens(tokens) + self.levels(lv)

    def level_logits(self, hidden: torch.Tensor, level: int) -> torch.Tensor:
        """Log-probabilities over level ``level``'s tokens for decoder states (…, d)."""
        start = int(self.offsets[level])
        logits = F.linear(
            hidden,
            self.head.weight[start : start + self.vocab[level]],
            self.head.bias[start : start + self.vocab[level]],
        )
        return torch.log_softmax(logits.float(), dim=-1)

    def decode(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor | None,
        memory_pad: torch.Tensor | None,
    ) -> torch.Tensor:
        """Decoder states for inputs ``x`` (N, P, l, d): P targets per row of ``memory``."""
        for layer in self.decoder:
            x = layer(x, memory, memory_mask, memory_pad)
        out: torch.Tensor = self.decoder_norm(x)
        return out

    def decode_step(
        self, prefix: torch.Tensor, memory: torch.Tensor, memory_pad: torch.Tensor
    ) -> torch.Tensor:
        """Log-probabilities of the next level given SID prefixes (with level offsets).

        ``prefix`` (n, l), ``memory`` (n, T, d), ``memory_pad`` (n, T) True where a key is
        padding → (n, vocab[l]).
        """
        level = prefix.shape[1]
        x = self.drop(self._decoder_inputs(prefix))[:, None]  # (n, 1, l + 1, d)
        out = self.decode(x, memory, None, memory_pad)
        return self.level_logits(out[:, 0, -1], level)

    def training_step(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Cross-entropy of every level of every next item, all positions in one pass."""
        seq, target, users = batch
        memory = self.encode(seq, users if self.user is not None else None)
        n_pos = target.shape[1]
        keep = target != PAD
        codes = self.codes[torch.where(keep, target, self.n_items)]  # (B, P, D), offsets in
        d = self.depth
        x = self.drop(self._decoder_inputs(codes[..., :-1]))  # (B, P, D, h)
        shift = 1 if self.user is not None else 0
        # the query for target j (every level) sees memory states 0..j + shift
        q_pos = torch.arange(n_pos, device=seq.device).repeat_interleave(d)
        k_pos = torch.arange(memory.shape[1], device=seq.device)
        out = self.decode(x, memory, k_pos[None, :] > q_pos[:, None] + shift, None)
        out, tgt = out[keep], codes[keep]  # (n, D, h), (n, D)
        loss = out.new_zeros((), dtype=torch.float32)
        for level in range(d):
            logp = self.level_logits(out[:, level], level)
            loss = loss + F.nll_loss(logp, tgt[:, level] - self.offsets[level])
        return loss


class DecoderLayer(torch.nn.Module):
    """Pre-norm decoder block: causal self-attention within each target's levels, then
    cross-attention to the encoder states, then a feed-forward layer.

    Inputs are (N, P, l, d): P decoding problems per memory row, each l tokens long. Self-
    attention runs per problem (an l × l causal mask), cross-attention over all N·P·l queries
    at once with a (P·l, T) mask, so one history serves every target in a single pass.
    """

    def __init__(self, hidden: int, n_heads: int, feedforward: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = torch.nn.MultiheadAttention(hidden, n_heads, dropout, batch_first=True)
        self.cross_attn = torch.nn.MultiheadAttention(hidden, n_heads, dropout, batch_first=True)
        self.feedforward = torch.nn.Sequential(
            torch.nn.Linear(hidden, feedforward),
            torch.nn.GELU(),
            torch.nn.Dropout(dropout),
            torch.nn.Linear(feedforward, hidden),
        )
        self.norms = torch.nn.ModuleList(torch.nn.LayerNorm(hidden) for _ in range(3))
        self.drop = torch.nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor | None,
        memory_pad: torch.Tensor | None,
    ) -> torch.Tensor:
        n, p, length, h = x.shape
        y = self.norms[0](x).reshape(n * p, length, h)
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
        a, _ = self.self_attn(y, y, y, attn_mask=causal, need_weights=False)
        x = x + self.drop(a.reshape(n, p, length, h))
        y = self.norms[1](x).reshape(n, p * length, h)
        a, _ = self.cross_attn(
            y,
            memory,
            memory,
            attn_mask=memory_mask,
            key_padding_mask=memory_pad,
            need_weights=False,
        )
        x = x + self.drop(a.reshape(n, p, length, h))
        out: torch.Tensor = x + self.drop(self.feedforward(self.norms[2](x)))
        return out


def user_buckets(users: np.ndarray, n_buckets: int) -> np.ndarray:
    """Hashed user token per user index; unknown users (−1) share bucket ``n_buckets``."""
    users = np.asarray(users, dtype=np.int64)
    hashed = (users * 2654435761 + 97) % max(n_buckets, 1)
    return np.where(users < 0, n_buckets, hashed)
