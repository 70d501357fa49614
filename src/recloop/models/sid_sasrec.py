"""SID-SASRec: SASRec whose items are the sum of their Semantic-ID token embeddings.

The same causal transformer and full-softmax training as :class:`recloop.models.sasrec.SASRec`,
but an item's input and output vector is built from its Semantic ID: one embedding per
(level, token), summed over the item's levels and collision suffix, plus, with
``item_id=True``, a per-item ID embedding. This is the memorisation/generalisation trade-off
studied in industrial work on Semantic IDs (Singh et al., 2023): ID embeddings memorise
popular items; shared SID tokens generalise to rare and new ones.

Cold start: an item with no train interactions (or added with :meth:`SIDSASRec.add_items`)
gets its vector from its tokens alone; its ID embedding is held at zero, so it is scored by
what it shares with known items, not by an untrained ID vector.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field

from recloop.data.types import Catalog, Interactions, Users
from recloop.models.base import ModelConfig, require_catalog
from recloop.models.sasrec import SASRec, SASRecConfig, SASRecNet
from recloop.semantic_ids.build import (
    SEMANTIC_IDS_DIR,
    SEMANTIC_IDS_KEY,
    SemanticIdConfig,
    SemanticIds,
    check_semantic_ids,
    semantic_ids_record,
)


class SIDSASRecConfig(SASRecConfig):
    """SASRec's settings plus the Semantic IDs and whether items also get an ID embedding."""

    semantic_ids: SemanticIdConfig = Field(
        default_factory=SemanticIdConfig, description="How item text becomes Semantic IDs."
    )
    item_id: bool = Field(
        default=False, description="Add a per-item ID embedding to the SID token sum."
    )


class SIDSASRecNet(SASRecNet):
    """SASRec with item vectors composed from Semantic-ID tokens (+ optional ID embedding)."""

    codes: torch.Tensor  # (n_items + 1, depth) token ids with level offsets; last row = pad
    offsets: torch.Tensor  # (depth,) first token id of each level
    known: torch.Tensor  # (n_items + 1, 1) 1 for items whose ID embedding is trained

    def __init__(
        self,
        codes: np.ndarray,
        vocab: tuple[int, ...],
        known: np.ndarray,
        item_id: bool,
        **sasrec: Any,
    ) -> None:
        n_items = len(codes)
        super().__init__(n_items, **sasrec)
        hidden = self.positions.embedding_dim
        if not item_id:
            del self.items  # the ID table is not used
        self.item_id = item_id
        offsets = np.concatenate([[0], np.cumsum(vocab)[:-1]]).astype(np.int64)
        self.pad_token = int(sum(vocab))
        table = np.full((n_items + 1, len(vocab)), self.pad_token, dtype=np.int64)
        table[:n_items] = np.asarray(codes, dtype=np.int64) + offsets
        self.register_buffer("offsets", torch.from_numpy(offsets), persistent=False)
        self.register_buffer("codes", torch.from_numpy(table), persistent=False)
        mask = np.zeros((n_items + 1, 1), dtype=np.float32)
        mask[:n_items, 0] = np.asarray(known, dtype=np.float32)
        self.register_buffer("known", torch.from_numpy(mask), persistent=False)
        self.tokens = torch.nn.Embedding(self.pad_token + 1, hidden, padding_idx=self.pad_token)
        torch.nn.init.normal_(self.tokens.weight, std=0.02)
        with torch.no_grad():
            self.tokens.weight[self.pad_token].zero_()

    def item_table(self) -> torch.Tensor:
        table = self.tokens(self.codes).sum(dim=1)
        if self.item_id:
            table = table + self.items.weight * self.known
        return table

    def extend_items(self, codes: np.ndarray) -> None:
        """Append new (cold) items: SID tokens only, their ID embedding stays zero."""
        new = torch.from_numpy(np.asarray(codes, dtype=np.int64)).to(self.codes.device)
        self.codes = torch.cat([self.codes[:-1], new + self.offsets, self.codes[-1:]])
        zeros = torch.zeros((len(codes), 1), device=self.known.device)
        self.known = torch.cat([self.known[:-1], zeros, self.known[-1:]])
        if self.item_id:
            old = self.items.weight.data
            grown = torch.zeros((old.shape[0] + len(codes), old.shape[1]), device=old.device)
            grown[: old.shape[0] - 1] = old[:-1]
            self.items = torch.nn.Embedding.from_pretrained(grown, freeze=True)
        self.n_items += len(codes)


class SIDSASRec(SASRec):
    """SASRec over Semantic-ID token embeddings, able to score items it never saw in training."""

    config_class: ClassVar[type[ModelConfig]] = SIDSASRecConfig
    config: SIDSASRecConfig

    def _fit(self, train: Interactions, catalog: Catalog | None, users: Users | None) -> None:
        catalog = require_catalog(self.name, catalog, train.n_items)
        self.known_ = self.popularity_ > 0
        self.sids_ = SemanticIds.build(
            catalog, self.config.semantic_ids, fit_items=np.flatnonzero(self.known_)
        )
        super()._fit(train, catalog, users)

    def _build(self, n_items: int) -> SIDSASRecNet:
        cfg = self.config
        return SIDSASRecNet(
            self.sids_.codes,
            self.sids_.vocab,
            self.known_,
            cfg.item_id,
            max_len=cfg.max_len,
            hidden=cfg.hidden,
            n_layers=cfg.n_layers,
            n_heads=cfg.n_heads,
            dropout=cfg.dropout,
            loss=cfg.loss,
            n_negatives=cfg.n_negatives,
        )

    def add_items(self, texts: Sequence[str]) -> np.ndarray:
        """Make new items scorable at once from their text alone; returns their indices."""
        self._check_fitted()
        new_codes = self.sids_.add(texts)
        new = np.arange(self.n_items_, self.n_items_ + len(texts))
        net: SIDSASRecNet = self.net_  # type: ignore[assignment]
        net.extend_items(new_codes)
        self.n_items_ += len(texts)
        self.known_ = np.concatenate([self.known_, np.zeros(len(texts), dtype=bool)])
        self.popularity_ = np.concatenate(
            [self.popularity_, np.zeros(len(texts), dtype=np.float32)]
        )
        return new

    def _state(self) -> dict[str, np.ndarray]:
        return {"known": self.known_.astype(np.uint8), **super()._state()}

    def _set_state(self, arrays: dict[str, np.ndarray], manifest: dict[str, Any]) -> None:
        # the Semantic IDs read by _load_extra must be the ones the model was saved with
        check_semantic_ids(self.sids_, self.n_items_, manifest.get(SEMANTIC_IDS_KEY))
        self.known_ = arrays.pop("known").astype(bool)
        super()._set_state(arrays, manifest)

    def _manifest_extra(self) -> dict[str, Any]:
        return {SEMANTIC_IDS_KEY: semantic_ids_record(self.sids_)}

    def _save_extra(self, path: Path) -> None:
        self.sids_.save(path / SEMANTIC_IDS_DIR)

    def _load_extra(self, path: Path) -> None:
        self.sids_ = SemanticIds.load(path / SEMANTIC_IDS_DIR)
