"""The Recommender contract, model configs, top-k selection and artifact save/load.

Every model is built from a frozen pydantic config; learning happens in ``fit`` and learned
state lives in attributes ending in ``_``. Artifacts are a directory with ``manifest.json``
and ``weights.safetensors``; nothing is ever pickled.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import BaseModel, ConfigDict
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from recloop.data.split import Split
from recloop.data.types import Catalog, Exclusions, Interactions, Queries, Users
from recloop.errors import ConfigError, RecloopError, one_line

MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
FORMAT_VERSION = 1


class ModelConfig(BaseModel):
    """Base of every model's hyper-parameters: frozen, no unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@runtime_checkable
class Recommender(Protocol):
    """What every model provides. Orientation is always users × items."""

    @property
    def config(self) -> ModelConfig: ...

    @property
    def name(self) -> str: ...

    def fit(
        self,
        data: Split | Interactions,
        catalog: Catalog | None = None,
        users: Users | None = None,
    ) -> Self: ...

    def recommend(
        self, queries: Queries, k: int, exclude: Exclusions | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def save(self, path: Path) -> None: ...

    @classmethod
    def load(cls, path: Path) -> Self: ...


def train_interactions(data: Split | Interactions) -> Interactions:
    """The interactions a model may learn from: a split's train part, or the data itself."""
    return data.train if isinstance(data, Split) else data


def require_catalog(model: str, catalog: Catalog | None, n_items: int) -> Catalog:
    """The catalogue a text-reading model was given, checked to cover its ``n_items`` items."""
    if catalog is None:
        raise ConfigError(f"{model} reads item text: pass the catalog to fit()")
    if len(catalog) != n_items:
        raise ConfigError(f"the catalog has {len(catalog)} items, the interactions {n_items}")
    return catalog


def top_k(
    scores: np.ndarray, k: int, exclude: sp.csr_matrix | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` item indices and scores per row, best first.

    Excluded items (a queries × items CSR) and non-finite scores are never returned; short
    lists are padded with item −1 and score −inf. Ties go to the lower item index.
    """
    if k <= 0:
        raise ConfigError(f"k must be positive, not {k}")
    scores = np.array(scores, dtype=np.float32, copy=True)
    n, n_items = scores.shape
    if exclude is not None and exclude.nnz:
        ex = exclude if exclude.shape[1] == n_items else exclude[:, :n_items]
        rows = np.repeat(np.arange(n), np.diff(ex.indptr))
        scores[rows, ex.indices] = -np.inf
    scores[~np.isfinite(scores)] = -np.inf
    kk = min(k, n_items)
    full = np.tile(np.arange(n_items), (n, 1)) if kk == n_items else None
    cand = full if full is not None else _top_candidates(scores, kk)
    cand_scores = np.take_along_axis(scores, cand, axis=1)
    order = np.lexsort((cand, -cand_scores), axis=1)
    items = np.take_along_axis(cand, order, axis=1).astype(np.int64)
    top = np.take_along_axis(cand_scores, order, axis=1)
    items[~np.isfinite(top)] = -1
    if kk < k:
        items = np.pad(items, ((0, 0), (0, k - kk)), constant_values=-1)
        top = np.pad(top, ((0, 0), (0, k - kk)), constant_values=-np.inf)
    return items, top.astype(np.float32)


def _top_candidates(scores: np.ndarray, kk: int) -> np.ndarray:
    """The ``kk`` best item indices per row (unordered), ties at the cut-off to lower indices.

    torch.topk (multi-threaded) finds a candidate set; only rows where items tied with the
    k-th score straddle the cut-off are recomputed with the lowest-index rule.
    """
    values, cand_t = torch.topk(torch.from_numpy(scores), kk, dim=1, largest=True, sorted=False)
    cand = cand_t.numpy().astype(np.int64)
    kth = values.numpy().min(axis=1, keepdims=True)
    tied_in_row = (scores == kth).sum(axis=1)
    tied_chosen = (values.numpy() == kth).sum(axis=1)
    crowded = np.flatnonzero(tied_in_row > tied_chosen)
    for row in crowded:  # rare with real scores: a tie group cut in two
        above = np.flatnonzero(scores[row] > kth[row, 0])
        tied = np.flatnonzero(scores[row] == kth[row, 0])[: kk - len(above)]
        cand[row] = np.concatenate([above, tied])
    return cand


def exclusion_matrix(queries: Queries, exclude: Exclusions | None, n_items: int) -> sp.csr_matrix:
    """The CSR of items each query may not get: ``exclude`` if given, else its history.

    A given ``exclude`` is the whole set (callers that want the history excluded too build
    it with ``Exclusions.from_history(queries).union(extra)``, as evaluation does).
    """
    ex = exclude if exclude is not None else Exclusions.from_history(queries)
    if len(ex) != len(queries):
        raise ConfigError(f"{len(ex)} exclusion rows for {len(queries)} queries")
    return ex.to_csr(n_items)


def write_artifact(
    path: Path,
    model: str,
    config: ModelConfig,
    arrays: dict[str, np.ndarray],
    extra: dict[str, Any] | None = None,
) -> None:
    """Save weights as safetensors and everything else as a JSON manifest."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path / WEIGHTS))
    manifest = {
        "format_version": FORMAT_VERSION,
        "model": model,
        "config": config.model_dump(mode="json"),
        **(extra or {}),
    }
    (path / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def read_artifact(path: Path, model: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Load a manifest and weights written by :func:`write_artifact`, checking the model."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise RecloopError(f"{path}: no {MANIFEST}; not a recloop model directory") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecloopError(f"{path / MANIFEST}: unreadable ({one_line(exc)})") from None
    if not isinstance(manifest, dict):
        raise RecloopError(
            f"{path / MANIFEST}: must be a JSON object, not {type(manifest).__name__}"
        )
    if manifest.get("model") != model:
        raise RecloopError(f"{path}: holds a {manifest.get('model')!r} model, not {model!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise RecloopError(f"{path}: unsupported format_version {manifest.get('format_version')}")
    try:
        arrays = load_file(str(path / WEIGHTS))
    except FileNotFoundError:
        raise RecloopError(
            f"{path / WEIGHTS}: missing; the model directory is incomplete"
        ) from None
    except (OSError, SafetensorError) as exc:
        raise RecloopError(f"{path / WEIGHTS}: unreadable ({one_line(exc)})") from None
    return manifest, arrays


@contextmanager
def loading(path: Path) -> Iterator[None]:
    """Errors while a model is rebuilt from the files at ``path`` as one
    :class:`RecloopError` naming it: a damaged or mismatched artifact, never a traceback."""
    try:
        yield
    except RecloopError as exc:
        raise RecloopError(f"{path}: {exc}") from None
    except KeyError as exc:
        raise RecloopError(f"{path}: damaged model artifact: {exc} is missing") from None
    except (ValueError, TypeError, IndexError, RuntimeError) as exc:
        raise RecloopError(f"{path}: damaged model artifact ({one_line(exc)})") from None


POPULAR_SOURCE = "popular"


class ScoringRecommender:
    """Shared body of models that score the whole catalogue.

    Subclasses set ``config_class``, implement ``_fit`` (learn from positive train rows),
    ``_score`` (queries × items, higher is better) and the ``_state``/``_set_state`` pair that
    lists their learned arrays for save/load. This class handles exclusions, top-k, artifacts
    and the one allowed fallback: a query with an *empty history* gets train popularity,
    labelled ``source="popular"`` by :meth:`recommend_labelled`. Unknown users (−1) with a
    history are scored by the model itself, never by popularity.
    """

    config_class: ClassVar[type[ModelConfig]]
    config: ModelConfig

    def __init__(self, config: ModelConfig | None = None) -> None:
        self.config = config if config is not None else self.config_class()
        if not isinstance(self.config, self.config_class):
            raise ConfigError(
                f"{type(self).__name__} needs a {self.config_class.__name__}, "
                f"not {type(self.config).__name__}"
            )

    # -- subclass hooks -------------------------------------------------------------
    def _fit(self, train: Interactions, catalog: Catalog | None, users: Users | None) -> None:
        raise NotImplementedError

    def _score(self, queries: Queries) -> np.ndarray:
        raise NotImplementedError

    def _state(self) -> dict[str, np.ndarray]:
        return {}

    def _set_state(self, arrays: dict[str, np.ndarray], manifest: dict[str, Any]) -> None:
        return None

    def _save_extra(self, path: Path) -> None:
        """Write what does not fit the weights file (e.g. a tokenizer) under ``path``."""
        return None

    def _manifest_extra(self) -> dict[str, Any]:
        """Entries the manifest records beside the config and sizes (read in ``_set_state``)."""
        return {}

    def _load_extra(self, path: Path) -> None:
        """Read what :meth:`_save_extra` wrote; runs before :meth:`_set_state`."""
        return None

    # -- the contract -----------------------------------------------------------------
    @property
    def name(self) -> str:
        return type(self).__name__

    def fit(
        self,
        data: Split | Interactions,
        catalog: Catalog | None = None,
        users: Users | None = None,
    ) -> Self:
        train = train_interactions(data).positive()
        self.n_users_ = train.n_users
        self.n_items_ = train.n_items
        self.popularity_ = np.asarray(train.to_csr().sum(axis=0), dtype=np.float32).ravel()
        self._fit(train, catalog, users)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "n_items_"):
            raise RecloopError(f"{self.name} is not fitted; call fit() first")

    def _check_queries(self, queries: Queries) -> None:
        if len(queries.history_items) and int(queries.history_items.max()) >= self.n_items_:
            raise RecloopError(
                f"{self.name}: a query history names item index "
                f"{int(queries.history_items.max())}, beyond the {self.n_items_} items it knows"
            )

    def score(self, queries: Queries) -> np.ndarray:
        """Scores for every item (queries × items); empty histories get popularity."""
        self._check_fitted()
        self._check_queries(queries)
        scores = np.asarray(self._score(queries), dtype=np.float32)
        empty = queries.history_lengths() == 0
        if empty.any():
            scores = scores.copy() if not scores.flags.writeable else scores
            scores[empty] = self.popularity_
        return scores

    def recommend(
        self, queries: Queries, k: int, exclude: Exclusions | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        items, scores, _ = self.recommend_labelled(queries, k, exclude)
        return items, scores

    def recommend_labelled(
        self, queries: Queries, k: int, exclude: Exclusions | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Like :meth:`recommend`, plus the source of each row: the model or ``popular``."""
        items, scores = top_k(
            self.score(queries), k, exclusion_matrix(queries, exclude, self.n_items_)
        )
        source = np.where(queries.history_lengths() == 0, POPULAR_SOURCE, self.name)
        return items, scores, source.astype(object)

    def save(self, path: Path) -> None:
        self._check_fitted()
        arrays = {"popularity": self.popularity_, **self._state()}
        extra = {"n_users": self.n_users_, "n_items": self.n_items_, **self._manifest_extra()}
        write_artifact(path, self.name, self.config, arrays, extra)
        self._save_extra(Path(path))

    @classmethod
    def load(cls, path: Path) -> Self:
        """The model saved at ``path``; a damaged or mismatched artifact is a
        :class:`RecloopError` naming it, never a model that answers wrongly: the manifest's
        sizes must match the arrays, and the loaded model must score a probe query."""
        manifest, arrays = read_artifact(path, cls.__name__)
        with loading(path):
            model = cls(cls.config_class(**manifest["config"]))
            model.n_users_ = int(manifest["n_users"])
            model.n_items_ = int(manifest["n_items"])
            model.popularity_ = arrays.pop("popularity")
            model._load_extra(Path(path))
            model._set_state(arrays, manifest)
            model._probe()
        return model

    def _probe(self) -> None:
        """Score an empty and a one-item history, as the last and an unknown user: the
        arrays a damaged artifact gets wrong (sizes, per-user state) are all read."""
        if self.popularity_.shape != (self.n_items_,):
            raise RecloopError(
                f"popularity has {self.popularity_.shape[0]} items, the manifest says "
                f"{self.n_items_}"
            )
        if self.n_items_ == 0:
            return
        last = max(self.n_users_ - 1, -1)
        scores = self.score(Queries.from_lists([-1, last, -1], [[], [0], [0]]))
        if scores.shape != (3, self.n_items_):
            raise RecloopError(f"scores {scores.shape[1]} items, the manifest says {self.n_items_}")
