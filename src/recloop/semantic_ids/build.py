"""From a catalogue to unique Semantic IDs: text → embedding → tokenizer codes → suffix.

:class:`SemanticIds` is what SID models carry: the fitted embedder and tokenizer (frozen, so
a new item's text yields its ID without retraining), every item's full ID ``(c1…cL, suffix)``
and the vocabulary size of each level. The tokenizer is fitted on the items given as
``fit_items`` (in models: the items with train interactions), then encodes every item.
Suffixes go to fitted items first, so a cold item never changes a warm item's ID.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from recloop.data.types import Catalog
from recloop.errors import ConfigError, RecloopError, one_line
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

    @field_validator("embedder", "rqvae", "rkmeans")
    @classmethod
    def _seed_not_negative(
        cls, value: EmbedderConfig | RQVAEConfig | ResidualKMeansConfig
    ) -> EmbedderConfig | RQVAEConfig | ResidualKMeansConfig:
        if value.seed < 0:  # NumPy and scikit-learn refuse negative seeds
            raise PydanticCustomError(
                "seed", "seed must be 0 or more, not {seed}", {"seed": value.seed}
            )
        return value

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
        """The Semantic IDs saved at ``path``; a damaged folder is a :class:`RecloopError`
        naming the file, never a traceback nor IDs that do not match their vocabulary."""
        path = Path(path)
        where = path / MANIFEST
        try:
            manifest = json.loads(where.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RecloopError(f"{path}: no {MANIFEST}; not a Semantic-ID directory") from None
        except (OSError, ValueError) as exc:
            raise RecloopError(f"{where}: unreadable ({one_line(exc)})") from None
        if not isinstance(manifest, dict):
            raise RecloopError(f"{where}: must be a JSON object")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise RecloopError(f"{path}: unsupported format_version")
        for key in ("config", "vocab"):
            if key not in manifest:
                raise RecloopError(f"{where}: no {key!r} field; rebuild the Semantic IDs")
        try:
            config = SemanticIdConfig.model_validate(manifest["config"])
            vocab = tuple(int(v) for v in manifest["vocab"])
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(("config", *(str(p) for p in err["loc"])))
            raise RecloopError(f"{where}: field '{field}': {err['msg']}") from None
        except (TypeError, ValueError) as exc:
            raise RecloopError(f"{where}: field 'vocab': {one_line(exc)}") from None
        try:
            codes = np.load(path / CODES, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise RecloopError(f"{path / CODES}: unreadable ({one_line(exc)})") from None
        if (
            codes.ndim != 2
            or codes.shape[1] != len(vocab)
            or not np.issubdtype(codes.dtype, np.integer)
        ):
            raise RecloopError(
                f"{path / CODES}: expected integer codes of shape (items, {len(vocab)}), "
                f"found {codes.dtype} {codes.shape}"
            )
        tokenizer_class = RQVAE if config.tokenizer == "rqvae" else ResidualKMeans
        try:
            embedder = load_embedder(path / "embedder")
            tokenizer = tokenizer_class.load(path / "tokenizer")
        except RecloopError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RecloopError(f"{path}: damaged embedder or tokenizer ({one_line(exc)})") from None
        return cls(config, embedder, tokenizer, codes, vocab)


# ------------------------------------------------------------ the Semantic IDs a model holds
SEMANTIC_IDS_DIR = "semantic_ids"  # the folder a model keeps its Semantic IDs in
SEMANTIC_IDS_KEY = "semantic_id_codes"  # manifest entry: {"count": …, "sha256": …}


def semantic_ids_record(sids: SemanticIds) -> dict[str, Any]:
    """The manifest entry that ties a model to its Semantic IDs: code count and SHA-256.

    The hash is over the codes as row-major little-endian int64, so it does not depend on how
    the array was stored.
    """
    codes = np.ascontiguousarray(sids.codes, dtype="<i8")
    return {"count": len(codes), "sha256": hashlib.sha256(codes.tobytes()).hexdigest()}


def check_semantic_ids(sids: SemanticIds, n_items: int, record: dict[str, Any] | None) -> None:
    """Refuse Semantic IDs that are not the ones the model was saved with: their count must
    be ``n_items``, and their hash the manifest's ``record`` when it has one (artifacts saved
    before the hash was recorded carry none). The error names the codes file inside the model
    directory; the model's ``load`` prefixes the directory."""
    codes = f"{SEMANTIC_IDS_DIR}/{CODES}"
    if len(sids.codes) != n_items:
        raise RecloopError(
            f"{codes}: Semantic IDs for {len(sids.codes)} items, the model has {n_items}; "
            f"the {SEMANTIC_IDS_DIR}/ folder belongs to another model"
        )
    if record is None:
        return
    expected = semantic_ids_record(sids)
    if record != expected:
        recorded = record.get("sha256") if isinstance(record, dict) else record
        raise RecloopError(
            f"{codes}: not the Semantic IDs the model was saved with (SHA-256 "
            f"{expected['sha256'][:12]}, the manifest records {str(recorded)[:12]}); the "
            f"{SEMANTIC_IDS_DIR}/ folder belongs to another fit"
        )
