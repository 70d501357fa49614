"""The feedback loop in the running service: sources, blending, the bandit, learning, retraining.

Per request (:meth:`LiveLoop.answer`), on top of the active model's candidates:

1. **Sources**: the model's top candidates; content similarity (the user's recent items'
   mean text embedding against every item's); popularity over the trend window; approved
   generated items when the generative module supplies them (``generated_source``).
2. **Bandit**: the user's segment (by number of positive events) picks an arm, a blend-weight
   setting, by Thompson sampling with ε exploration; the arm's probability (the propensity) is
   logged with the slate.
3. **Blend and re-rank** with :class:`recloop.engine.blend.Blender` under the arm's weights and
   the user's own controls (excluded genres, diversity, share of generated items); every shown
   item keeps the source that produced it.

Off the request path, each worker's :class:`LoopUpdater` thread recomputes the posteriors from
the logged slates whose attribution window has closed (the database counts; the computation is
idempotent, so workers may overlap) and checks the retraining triggers (schedule, data volume);
one worker claims a retraining run, trains in a child process and activates the new version,
which every worker's :class:`~recloop.service.engine.ModelHolder` swaps in without dropping
a request.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recloop.engine.bandit import Choice, ThompsonBandit
from recloop.engine.blend import BlendConfig, Blender, SourceCandidates, UserControls
from recloop.engine.loop import (
    LoopConfig,
    bandit_from_posteriors,
    learning_window,
    posteriors_from_counts,
    segment_of,
)
from recloop.errors import ConfigError
from recloop.service.engine import Candidate
from recloop.store.events import EventStore, ItemRecord
from recloop.store.privacy import PrivacyLog
from recloop.store.slates import SlateLog

log = logging.getLogger("recloop.service.loop")
GeneratedSourceFn = Callable[[str, str, int, set[str]], Sequence[Candidate]]
EMBEDDING_DIM = 32
PROFILE_ITEMS = 20  # the user's most recent items that make up their content profile


@dataclass(frozen=True)
class CatalogView:
    """The store's catalogue as arrays: ids, text embeddings, genres and popularity."""

    item_ids: tuple[str, ...]
    index: dict[str, int]
    embeddings: np.ndarray | None
    popularity: np.ndarray  # positive events in the trend window, plus one
    popular_order: np.ndarray  # item indices, most popular first
    blender: Blender
    built_at: float

    @classmethod
    def build(cls, store: EventStore, trend_window_s: float, config: BlendConfig) -> CatalogView:
        records = store.all_items()
        ids = tuple(r.item_id for r in records)
        counts = store.item_counts(since=time.time() - trend_window_s)
        popularity = np.asarray([counts.get(i, 0) + 1.0 for i in ids], dtype=np.float64)
        embeddings = _text_embeddings(records)
        genres = [_genres(r) for r in records]
        blender = Blender(
            config,
            embeddings=embeddings,
            popularity=popularity if len(ids) else None,
            attributes={"genres": genres},
        )
        return cls(
            item_ids=ids,
            index={item: i for i, item in enumerate(ids)},
            embeddings=blender.embeddings,
            popularity=popularity,
            popular_order=np.argsort(-popularity, kind="stable"),
            blender=blender,
            built_at=time.time(),
        )

    def indices(self, item_ids: Sequence[str] | set[str]) -> np.ndarray:
        """The known items' indices (unknown ids dropped)."""
        index = self.index
        return np.fromiter((index[i] for i in item_ids if i in index), dtype=np.int64)


def _genres(record: ItemRecord) -> list[str]:
    value = record.attributes.get("genres")
    if isinstance(value, str):
        return [g for g in value.replace("|", " ").split() if g]
    if isinstance(value, list):
        return [str(g) for g in value]
    return []


def _text_embeddings(records: Sequence[ItemRecord]) -> np.ndarray | None:
    """TF-IDF of title, text and genres reduced by SVD: cheap, dependency-light item vectors
    for content similarity and MMR (None for catalogues too small to reduce)."""
    if len(records) < 3:
        return None
    from sklearn.decomposition import TruncatedSVD  # type: ignore[import-untyped]
    from sklearn.feature_extraction.text import TfidfVectorizer  # type: ignore[import-untyped]

    texts = [" ".join([r.title, r.text, *(f"genre_{g}" for g in _genres(r))]) for r in records]
    try:
        tfidf = TfidfVectorizer(min_df=1, sublinear_tf=True).fit_transform(texts)
    except ValueError:  # no words at all
        return None
    dim = min(EMBEDDING_DIM, tfidf.shape[1] - 1, len(records) - 1)
    if dim < 1:
        return None
    vectors = TruncatedSVD(n_components=dim, random_state=0).fit_transform(tfidf)
    return np.asarray(vectors, dtype=np.float32)


@dataclass(frozen=True)
class LoopAnswer:
    """The final slate and what chose it."""

    items: list[Candidate]
    segment: str
    choice: Choice


class LiveLoop:
    """One worker's view of the loop: the catalogue arrays, the bandit, and the blending."""

    def __init__(
        self,
        store: EventStore,
        config: LoopConfig,
        *,
        blend: BlendConfig | None = None,
        refresh_s: float = 5.0,
        catalog_refresh_s: float = 60.0,
        trend_window_s: float = 30 * 86400.0,
        generated_source: GeneratedSourceFn | None = None,
    ) -> None:
        self.store = store
        self.log = SlateLog(store)
        self.config = config
        self.blend_config = blend or BlendConfig(max_generated_share=config.max_generated_share)
        self.refresh_s = refresh_s
        self.catalog_refresh_s = catalog_refresh_s
        self.trend_window_s = trend_window_s
        self.generated_source = generated_source
        self._catalog: CatalogView | None = None
        self._catalog_items = -1
        self._next_catalog_check = 0.0
        self._catalog_lock = threading.Lock()
        self._bandit = config.bandit()
        self._next_bandit = 0.0
        self._rng = np.random.default_rng()  # each worker explores on its own draws

    # -- state kept fresh ----------------------------------------------------------------
    def catalog(self) -> CatalogView:
        """The catalogue arrays, rebuilt in the background when the item count changes."""
        now = time.monotonic()
        if self._catalog is None:
            with self._catalog_lock:
                if self._catalog is None:
                    self._rebuild()
        elif now >= self._next_catalog_check:
            self._next_catalog_check = now + self.catalog_refresh_s
            stale = time.time() - self._catalog.built_at > self.catalog_refresh_s
            if (stale or self.store.count_items() != self._catalog_items) and (
                self._catalog_lock.acquire(blocking=False)
            ):
                threading.Thread(target=self._rebuild_locked, daemon=True).start()
        assert self._catalog is not None
        return self._catalog

    def _rebuild_locked(self) -> None:
        try:
            self._rebuild()
        except Exception:  # keep serving the old arrays
            log.exception("rebuilding the loop's catalogue failed; keeping the old one")
        finally:
            self._catalog_lock.release()

    def _rebuild(self) -> None:
        count = self.store.count_items()
        self._catalog = CatalogView.build(self.store, self.trend_window_s, self.blend_config)
        self._catalog_items = count
        self._next_catalog_check = time.monotonic() + self.catalog_refresh_s

    def bandit(self) -> ThompsonBandit:
        """The bandit at the stored posteriors (re-read every ``refresh_s``)."""
        now = time.monotonic()
        if now >= self._next_bandit:
            self._next_bandit = now + self.refresh_s
            self._bandit = bandit_from_posteriors(self.config, self.log.arms())
        return self._bandit

    # -- the request path ----------------------------------------------------------------
    def answer(
        self,
        user_id: str,
        model_candidates: Sequence[Candidate],
        history: Sequence[str],
        n: int,
        excluded: set[str],
        preferences: dict[str, Any],
    ) -> LoopAnswer:
        """The user's final ``n`` items: sources, the bandit's blend weights, re-ranking."""
        catalog = self.catalog()
        segment = segment_of(len(history), self.config)
        choice = self.bandit().choose(segment, self._rng)
        arm = self.config.arms[choice.arm]
        k = self.config.candidates_per_source
        banned = catalog.indices(excluded)
        sources = [self._from_candidates("model", model_candidates, catalog)]
        weights = dict(arm.weights)
        if weights.get("content", 0.0) > 0:
            sources.append(self._content(history, catalog, banned, k))
        if weights.get("popular", 0.0) > 0:
            sources.append(self._popular(catalog, banned, k))
        if self.generated_source is not None and self.config.generated_weight > 0:
            found = self.generated_source(user_id, segment, k, excluded)
            sources.append(self._from_candidates("generated", found, catalog, generated=True))
            weights["generated"] = self.config.generated_weight
        blended = catalog.blender.blend(
            sources,
            n,
            weights=weights,
            controls=UserControls.from_preferences(preferences),
            exclude=set(banned.tolist()),
        )
        # The model source keeps the label the model gave each item (its name, or "popular"
        # for its fallback); the others are named by their source.
        labels = {c.item_id: c.source for c in model_candidates}
        items = []
        for i, s, src, g in zip(
            blended.items, blended.scores, blended.sources, blended.generated, strict=True
        ):
            item_id = catalog.item_ids[int(i)]
            label = labels.get(item_id, src) if src == "model" else src
            items.append(Candidate(item_id, float(s), label, bool(g)))
        return LoopAnswer(items, segment, choice)

    @staticmethod
    def _from_candidates(
        name: str, found: Sequence[Candidate], catalog: CatalogView, *, generated: bool = False
    ) -> SourceCandidates:
        index = catalog.index
        known = [(index[c.item_id], c.score) for c in found if c.item_id in index]
        items = np.asarray([i for i, _ in known], dtype=np.int64)
        scores = np.asarray([s for _, s in known], dtype=np.float64)
        return SourceCandidates(name, items, scores, generated=generated)

    @staticmethod
    def _content(
        history: Sequence[str], catalog: CatalogView, banned: np.ndarray, k: int
    ) -> SourceCandidates:
        emb = catalog.embeddings
        recent = catalog.indices(list(history[-PROFILE_ITEMS:]))
        if emb is None or not len(recent):
            return SourceCandidates("content", np.zeros(0, np.int64), np.zeros(0))
        scores = emb @ emb[recent].mean(axis=0)
        scores[banned] = -np.inf
        top = np.argpartition(-scores, min(k, len(scores) - 1))[:k]
        top = top[np.isfinite(scores[top])]
        top = top[np.argsort(-scores[top], kind="stable")]
        return SourceCandidates("content", top.astype(np.int64), scores[top].astype(np.float64))

    @staticmethod
    def _popular(catalog: CatalogView, banned: np.ndarray, k: int) -> SourceCandidates:
        order = catalog.popular_order
        if len(banned):
            order = order[~np.isin(order, banned)]
        top = order[:k]
        return SourceCandidates("popular", top, np.log(catalog.popularity[top]))


class LoopUpdater:
    """Background learning: posteriors from the logs, and retraining when it is due."""

    def __init__(
        self,
        loop: LiveLoop,
        *,
        every_s: float,
        retrain: Retrainer | None = None,
        purge: Callable[[float], Any] | None = None,
    ) -> None:
        self.loop = loop
        self.every_s = every_s
        self.retrain = retrain
        self.purge = purge
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.updates = 0

    def update(self, now: float | None = None) -> dict[tuple[str, int], tuple[float, float]]:
        """Recompute and store the posteriors (idempotent); then the retraining check."""
        now = time.time() if now is None else now
        since, until = learning_window(self.loop.config, now)
        counts = self.loop.log.arm_counts(since, until, self.loop.config.attribution_s)
        posteriors = posteriors_from_counts(counts, self.loop.config)
        self.loop.log.set_arms(posteriors)
        bandit = bandit_from_posteriors(self.loop.config, posteriors)
        names = [arm.name for arm in self.loop.config.arms]
        self.loop.log.add_policy_snapshot(
            now,
            {
                segment: dict(zip(names, bandit.probabilities(segment).tolist(), strict=True))
                for segment in sorted({*self.loop.config.segments, *bandit.segments})
            },
        )
        self.loop._next_bandit = 0.0  # this worker reads them at its next request
        self.updates += 1
        if self.purge is not None:
            self.purge(now)
        if self.retrain is not None:
            self.retrain.check(now)
        return posteriors

    def start(self) -> None:
        if self.every_s <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="loop-updater", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        jitter = np.random.default_rng().uniform(0.0, 0.2 * self.every_s)
        while not self._stop.wait(self.every_s + jitter):
            try:
                self.update()
            except Exception:  # the store was unreachable: try again next time
                log.exception("loop update failed")


class Retrainer:
    """Retrains after an erasure, by data volume or on a schedule; one worker at a time claims
    the run."""

    def __init__(
        self,
        store: EventStore,
        registry: Any,
        *,
        every_s: float = 0.0,
        min_events: int = 0,
        model: str | None = None,
        stale_s: float = 3600.0,
        prices_dir: Path | None = None,
        retry_s: float = 120.0,
    ) -> None:
        self.store = store
        self.retry_s = retry_s
        self.prices_dir = prices_dir
        self.log = SlateLog(store)
        self.privacy = PrivacyLog(store)
        self.registry = registry
        self.every_s = every_s
        self.min_events = min_events
        self.model = model
        self.stale_s = stale_s

    def due(self, now: float) -> str | None:
        """``"erasure"``, ``"volume"``, ``"schedule"`` or None.

        Erasure first: a user erased after the active version's training data was read
        (``data_as_of``; erasures during its fit count too) is still inside it, so the next
        check rebuilds. Volume and schedule count from the last successful run (or the
        active version when there was none). After a failed run, nothing is due for
        ``retry_s``, then every trigger is tried again.
        """
        active = self.registry.active()
        if active is None:
            return None
        info = self.registry.info(active)
        history = self.log.retrain_history(20)
        if history and history[0].status == "failed" and now - history[0].started_at < self.retry_s:
            return None
        as_of = float(info.metadata.get("data_as_of", info.created_at))
        if self.privacy.erased_since(as_of):
            return "erasure"
        if self.every_s <= 0 and self.min_events <= 0:
            return None
        done = next((run for run in history if run.status == "done"), None)
        if done is not None:
            since, seen = done.started_at, done.events
        else:
            since, seen = info.created_at, int(info.metadata.get("events", 0))
        if self.min_events > 0 and self.store.count_events() - seen >= self.min_events:
            return "volume"
        if self.every_s > 0 and now - since >= self.every_s:
            return "schedule"
        return None

    def check(self, now: float) -> str | None:
        """Retrain when due and no other worker is already at it; the new version or None."""
        trigger = self.due(now)
        if trigger is None:
            return None
        seq = self.log.claim_retrain(trigger, self.store.count_events(), self.stale_s)
        if seq is None:
            return None
        return self.run(seq)

    def run(self, seq: int) -> str | None:
        """Train in a child process (the worker keeps serving), activate, record the outcome."""
        active = self.registry.active()
        name = self.model or (self.registry.info(active).model if active else "EASE")
        config = self.registry.info(active).metadata.get("config") if active else None
        if self.model and active and self.registry.info(active).model != self.model:
            config = None  # another model's config would not fit
        context = multiprocessing.get_context("spawn")
        try:
            with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
                version = pool.submit(
                    _train_and_activate,
                    self.store.url_with_password,
                    str(self.registry.root),
                    name,
                    config,
                    None if self.prices_dir is None else str(self.prices_dir),
                ).result()
        except Exception as exc:
            self.log.finish_retrain(seq, status="failed", detail=f"{type(exc).__name__}: {exc}")
            log.exception("retraining %s failed", name)
            return None
        self.log.finish_retrain(seq, status="done", version=version)
        log.info("retrained %s as %s", name, version, extra={"model_version": version})
        return version


def _train_and_activate(
    db_url: str, models_dir: str, name: str, config: Any, prices_dir: str | None = None
) -> str:
    """In the child process: fit on every stored event, register, activate.

    When the replaced version had exposure prices, the new one gets prices fitted with the same
    settings before it is activated, so the service never serves it unpriced; a failed fit is
    logged and the new version activated without them (a rebuild after erasure must go on).
    """
    from recloop.service.bootstrap import train_version
    from recloop.service.prices import fit_prices, load_prices
    from recloop.store.artifacts import ArtifactRegistry

    registry = ArtifactRegistry(Path(models_dir))
    with EventStore(db_url) as store:
        previous = registry.active()
        kept = None
        if prices_dir is not None and previous is not None:
            try:
                kept = load_prices(Path(prices_dir), previous)
            except ConfigError:
                log.exception("cannot read the exposure prices of %s to refit them", previous)
        version = train_version(store, registry, name, config, activate=kept is None)
        if kept is None or prices_dir is None:
            return version
        try:
            fit_prices(
                store, registry, Path(prices_dir), version, kept.strength,
                candidates=kept.candidates, k=int(kept.manifest["k"]),
                max_users=kept.manifest.get("max_users"), seed=int(kept.manifest["seed"]),
            )  # fmt: skip
        except Exception:
            log.exception("could not refit exposure prices for %s; activating without", version)
        registry.activate(version)
        return version


def loop_config_from(path: Path | None) -> LoopConfig:
    """The loop config in a JSON file, or the defaults."""
    if path is None:
        return LoopConfig()
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read loop config {path}: {exc.strerror}") from None
    return LoopConfig.from_json(text, str(path))
