"""From a catalogue to unique Semantic IDs: text → embedding → tokenizer codes → suffix.

:class:`SemanticIds` is what SID models carry: the fitted embedder and tokenizer (frozen, so
a new item's text yields its ID without retraining), every item's full ID ``(c1…cL, suffix)``
and the vocabulary size of each level. The tokenizer is fitted on the items given as
``fit_items`` (in models: the items with train interactions), then encodes every item.
Suffixes go to fitted items first, so a cold item never changes a warm item's ID.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from recloop.data.types import Catalog
from recloop.errors import ConfigError, RecloopError
from recloop.semantic_ids.embed import (
    EmbedderConfig,
    ItemTextBuilder,
    TextEmbedder,
    embed_items,
    load_embedder,
    make_embedder,
)
from recloop.semantic_ids.tokenizers import (
    RQVAE,
    ResidualKMeans,
    ResidualKMeansConfig,
    RQVAEConfig,
    Tokenizer,
    add_suffix,
    make_tokenizer,
)

MANIFEST = "manifest.json"
CODES = "codes.npy"
FORMAT_VERSION = 1


class SemanticIdConfig(BaseModel):
    """Which text, embedder and tokenizer make the Semantic IDs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    text_template: str | None = Field(
        default=None,
        description="str.format template over title and catalogue attributes; None: item text.",
    )
    embedder: EmbedderConfig = Field(default_factory=EmbedderConfig)
    tokenizer: Literal["rqvae", "rkmeans"] = Field(
        default="rqvae", description="RQ-VAE or residual k-means."
    )
    rqvae: RQVAEConfig = Field(default_factory=RQVAEConfig)
    rkmeans: ResidualKMeansConfig = Field(default_factory=ResidualKMeansConfig)
    suffix_vocab: int = Field(
        default=16,
        ge=1,
        description="Least size of the suffix level's vocabulary (room for items added later).",
    )

    def tokenizer_config(self) -> RQVAEConfig | ResidualKMeansConfig:
        return self.rqvae if self.tokenizer == "rqvae" else self.rkmeans


class SemanticIds:
    """A fitted embedder and tokenizer plus every item's unique Semantic ID."""

    def __init__(
        self,
        config: SemanticIdConfig,
        embedder: TextEmbedder,
        tokenizer: Tokenizer,
        codes: np.ndarray,
        vocab: tuple[int, ...],
    ) -> None:
        self.config = config
        self.embedder = embedder
        self.tokenizer = tokenizer
        self.codes = np.asarray(codes, dtype=np.int64)
        self.vocab = vocab

    @property
    def levels(self) -> int:
        """Semantic levels (the suffix not counted)."""
        return self.codes.shape[1] - 1

    @classmethod
    def build(
        cls,
        catalog: Catalog,
        config: SemanticIdConfig,
        fit_items: np.ndarray | None = None,
        *,
        cache_dir: Path | None = None,
        progress: bool = False,
    ) -> Self:
        """Embed every item's text, fit the tokenizer on ``fit_items`` and encode them all."""
        texts = ItemTextBuilder(template=config.text_template).texts(catalog)
        n = len(texts)
        fit = np.arange(n) if fit_items is None else np.asarray(fit_items, dtype=np.int64)
        if not len(fit):
            raise ConfigError("Semantic IDs need at least one item to fit the tokenizer on")
        embedder = make_embedder(config.embedder).fit([texts[i] for i in fit])
        vectors = embed_items(texts, embedder, cache_dir=cache_dir, progress=progress)
        tokenizer = make_tokenizer(config.tokenizer_config()).fit(vectors[fit])
        semantic = tokenizer.encode(vectors)
        first = np.zeros(n, dtype=bool)
        first[fit] = True
        order = np.concatenate([np.flatnonzero(first), np.flatnonzero(~first)])
        codes = np.empty((n, semantic.shape[1] + 1), dtype=np.int64)
        codes[order] = add_suffix(semantic[order])
        k = tokenizer.codebook_size
        suffix = max(int(codes[:, -1].max(initial=0)) + 1, config.suffix_vocab)
        vocab = (k,) * tokenizer.levels + (suffix,)
        return cls(config, embedder, tokenizer, codes, vocab)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Semantic codes (without suffix) of new texts from the frozen embedder and tokenizer."""
        if not len(texts):
            return np.zeros((0, self.levels), dtype=np.int64)
        vectors = embed_items(list(texts), self.embedder)
        return self.tokenizer.encode(vectors).astype(np.int64)

    def add(self, texts: Sequence[str]) -> np.ndarray:
        """Give new items (appended after the existing ones) unique IDs; returns them."""
        semantic = self.encode_texts(texts)
        combined = add_suffix(np.concatenate([self.codes[:, :-1], semantic]))
        new = combined[len(self.codes) :]
        if len(new) and int(new[:, -1].max()) >= self.vocab[-1]:
            raise RecloopError(
                f"a new item needs collision suffix {int(new[:, -1].max())}, beyond the "
                f"{self.vocab[-1]} the model was built with; retrain with a larger "
                "semantic_ids.suffix_vocab or a finer tokenizer"
            )
        self.codes = np.concatenate([self.codes, new])
        return new

    # -- artifacts --------------------------------------------------------------------
    def save(self, path: Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        np.save(path / CODES, self.codes, allow_pickle=False)
        self.embedder.save(path / "embedder")
        self.tokenizer.save(path / "tokenizer")
        manifest = {
            "format_version": FORMAT_VERSION,
            "config": self.config.model_dump(mode="json"),
            "vocab": list(self.vocab),
        }
        (path / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Self:
        path = Path(path)
        try:
            manifest = json.loads((path / MANIFEST).read_text())
        except FileNotFoundError:
            raise RecloopError(f"{path}: no {MANIFEST}; not a Semantic-ID directory") from None
        except json.JSONDecodeError as exc:
            raise RecloopError(f"{path / MANIFEST}: invalid JSON ({exc})") from None
        if manifest.get("format_version") != FORMAT_VERSION:
            raise RecloopError(f"{path}: unsupported format_version")
        config = SemanticIdConfig(**manifest["config"])
        tokenizer_class = RQVAE if config.tokenizer == "rqvae" else ResidualKMeans
        return cls(
            config,
            load_embedder(path / "embedder"),
            tokenizer_class.load(path / "tokenizer"),
            np.load(path / CODES, allow_pickle=False),
            tuple(int(v) for v in manifest["vocab"]),
        )
