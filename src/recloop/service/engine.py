"""What answers a recommendation request: the active model and its id maps.

:class:`ServingModel` turns external ids into the model's indices and back; a history with no
item the model knows gets the model's labelled popularity answer (``source="popular"``), the
only fallback the Recommender contract allows. :class:`ModelHolder` keeps one per worker and
swaps in a newly activated version while the old one keeps answering, so no request is dropped.
Blending and re-ranking happen after the model, in :mod:`recloop.service.loop`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from recloop.data.types import Exclusions, Queries
from recloop.store.artifacts import ArtifactRegistry, LoadedModel

log = logging.getLogger("recloop.service")


@dataclass(frozen=True, slots=True)
class Candidate:
    """One proposed item: who proposed it, with what score, and whether it was generated."""

    item_id: str
    score: float
    source: str
    generated: bool = False


class ServingModel:
    """A loaded model version answering in external ids."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.version = loaded.version
        self.model = loaded.model
        self.items = loaded.items
        self.users = loaded.users
        self.n_items = len(loaded.items)

    def _indices(self, item_ids: Iterable[str]) -> np.ndarray:
        idx = self.items.index(list(item_ids), unknown="new")
        return idx[idx >= 0]

    def recommend(
        self, user_id: str, history: Sequence[str], n: int, exclude: Iterable[str]
    ) -> list[Candidate]:
        """Top ``n`` for one user from their time-ordered ``history``, never an excluded item."""
        items = self._indices(history)
        user = self.users.index([user_id], unknown="new")
        queries = Queries(user, np.array([0, len(items)]), items)
        banned = np.union1d(items, self._indices(exclude)).astype(np.int32)
        return self._top(queries, n, banned)

    def similar(self, item_id: str, n: int, exclude: Iterable[str]) -> list[Candidate] | None:
        """Items the model ranks highest for a history of just ``item_id``; None if unknown."""
        index = self._indices([item_id])
        if not len(index):
            return None
        queries = Queries(np.array([-1]), np.array([0, 1]), index)
        banned = np.union1d(index, self._indices(exclude)).astype(np.int32)
        return self._top(queries, n, banned)

    def _top(self, queries: Queries, n: int, banned: np.ndarray) -> list[Candidate]:
        exclusions = Exclusions(np.array([0, len(banned)]), banned)
        idx, scores, sources = self.model.recommend_labelled(queries, n, exclusions)
        keep = idx[0] >= 0
        ids = self.items.ids(idx[0][keep])
        return [
            Candidate(item_id, float(score), str(sources[0]))
            for item_id, score in zip(ids, scores[0][keep], strict=True)
        ]


class ModelHolder:
    """This worker's active :class:`ServingModel`, following the registry's active pointer.

    Every ``check_every_s`` a request looks at the pointer (one ``stat``); when another worker
    or the CLI activated a new version, a background thread loads it and swaps it in. Requests
    keep the model they started with, so none is dropped during a swap.
    """

    def __init__(self, registry: ArtifactRegistry, *, check_every_s: float = 1.0) -> None:
        self.registry = registry
        self.check_every_s = check_every_s
        self._model: ServingModel | None = None
        self._seen_pointer = -1
        self._next_check = 0.0
        self._loading = threading.Lock()
        self.swaps = 0

    def current(self) -> ServingModel | None:
        if self._model is None:  # nothing to serve meanwhile: wait for the first load
            return self.reload_now()
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self.check_every_s
            pointer = self.registry.pointer_mtime()
            if pointer != self._seen_pointer and self._loading.acquire(blocking=False):
                threading.Thread(target=self._reload, args=(pointer,), daemon=True).start()
        return self._model

    def reload_now(self) -> ServingModel | None:
        """Load the active version in this thread (at start-up, after an activation here)."""
        with self._loading:
            self._load(self.registry.pointer_mtime())
            self._next_check = time.monotonic() + self.check_every_s
        return self._model

    def _reload(self, pointer: int) -> None:
        try:
            self._load(pointer)
        finally:
            self._loading.release()

    def _load(self, pointer: int) -> None:
        active = self.registry.active()
        if active is None:
            self._seen_pointer = pointer
            return
        if self._model is not None and self._model.version == active:
            self._seen_pointer = pointer
            return
        try:
            loaded = ServingModel(self.registry.load(active))
        except Exception:  # a broken version must not take the worker down: keep the old one
            log.exception("could not load model version %s; keeping the current one", active)
            return
        self._model = loaded
        self._seen_pointer = pointer
        self.swaps += 1
        log.info("serving model version %s", active, extra={"model_version": active})
