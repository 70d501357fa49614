"""ContentKNN: items ranked by text similarity to what the user has consumed.

The content baseline for cold start: every item's text is embedded (the same embedders as
the Semantic IDs, :mod:`recloop.semantic_ids.embed`); a user's profile is the mean of the
L2-normalised embeddings of their most recent ``max_len`` (50) items, and an item's score is its
cosine similarity to that profile. It needs no interactions to score an item, so it reaches
cold items exactly as well as warm ones—the bar SID models must clear on ``cold_items``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from recloop.data.types import Catalog, Interactions, Queries, Users
from recloop.models.base import ModelConfig, ScoringRecommender, require_catalog
from recloop.semantic_ids.embed import (
    EmbedderConfig,
    ItemTextBuilder,
    TextEmbedder,
    embed_items,
    load_embedder,
    make_embedder,
)


class ContentKNNConfig(ModelConfig):
    """Which text and embedder, and how much of the history forms the profile."""

    text_template: str | None = Field(
        default=None,
        description="str.format template over title and catalogue attributes; None: item text.",
    )
    embedder: EmbedderConfig = Field(default_factory=EmbedderConfig)
    max_len: int | None = Field(
        default=50, ge=1, description="Most recent items in the profile; None: all."
    )


class ContentKNN(ScoringRecommender):
    """Cosine similarity between item text embeddings and the user's mean history embedding."""

    config_class: ClassVar[type[ModelConfig]] = ContentKNNConfig
    config: ContentKNNConfig

    def _fit(self, train: Interactions, catalog: Catalog | None, users: Users | None) -> None:
        catalog = require_catalog(self.name, catalog, train.n_items)
        texts = ItemTextBuilder(template=self.config.text_template).texts(catalog)
        self.embedder_: TextEmbedder = make_embedder(self.config.embedder).fit(texts)
        self.vectors_ = _unit(embed_items(texts, self.embedder_))

    def _score(self, queries: Queries) -> np.ndarray:
        lengths = queries.history_lengths()
        keep = lengths if self.config.max_len is None else np.minimum(lengths, self.config.max_len)
        ends = queries.history_indptr[1:]
        starts = ends - keep
        profile = np.zeros((len(queries), self.vectors_.shape[1]), dtype=np.float32)
        rows = np.repeat(np.arange(len(queries)), keep)
        idx = np.repeat(starts - np.r_[0, np.cumsum(keep)[:-1]], keep) + np.arange(keep.sum())
        np.add.at(profile, rows, self.vectors_[queries.history_items[idx]])
        return _unit(profile) @ self.vectors_.T

    def add_items(self, texts: Sequence[str]) -> np.ndarray:
        """Make new items scorable at once from their text; returns their indices."""
        self._check_fitted()
        new = np.arange(self.n_items_, self.n_items_ + len(texts))
        self.vectors_ = np.concatenate([self.vectors_, _unit(embed_items(texts, self.embedder_))])
        self.popularity_ = np.concatenate([self.popularity_, np.zeros(len(texts), np.float32)])
        self.n_items_ += len(texts)
        return new

    def _state(self) -> dict[str, np.ndarray]:
        return {"vectors": self.vectors_}

    def _save_extra(self, path: Path) -> None:
        self.embedder_.save(path / "embedder")

    def _load_extra(self, path: Path) -> None:
        self.embedder_ = load_embedder(path / "embedder")

    def _set_state(self, arrays: dict[str, np.ndarray], manifest: dict[str, Any]) -> None:
        self.vectors_ = arrays["vectors"]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)
