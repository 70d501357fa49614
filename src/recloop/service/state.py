"""What one service worker holds: the stores, the active model, keys, limits and counters."""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from recloop.generative.budget import ExplainSettings
from recloop.service.auth import KeyCache
from recloop.service.engine import ModelHolder
from recloop.service.loop import LiveLoop, LoopUpdater, Retrainer, loop_config_from
from recloop.service.observability import register_stats
from recloop.service.owners import UserOwners
from recloop.service.pregeneration import COUNTERS, GAUGES, METRIC_PREFIX, Pregenerator
from recloop.service.prices import PriceHolder
from recloop.service.privacy import ConsentReader, ErasedUsers
from recloop.service.ratelimit import RateLimiter
from recloop.service.settings import ServiceSettings
from recloop.store.artifacts import ArtifactRegistry
from recloop.store.cache import Cache, open_cache
from recloop.store.events import EventStore
from recloop.store.privacy import PrivacyLog
from recloop.store.slates import SlateLog, SlateWriter


@dataclass
class ServiceState:
    """What one worker holds: the stores, the active model, keys, limits and counters."""

    settings: ServiceSettings
    store: EventStore
    registry: ArtifactRegistry
    cache: Cache
    models: ModelHolder
    keys: KeyCache
    limiter: RateLimiter
    metrics: CollectorRegistry
    slates: SlateWriter
    loop: LiveLoop
    updater: LoopUpdater
    privacy: PrivacyLog
    erased: ErasedUsers
    consent: ConsentReader
    owners: UserOwners
    pregenerator: Pregenerator
    prices: PriceHolder
    counters: dict[str, Counter] = field(default_factory=dict)
    # Components other modules attach by name (the loop, the generative module), built once.
    extensions: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, settings: ServiceSettings) -> ServiceState:
        _pin_threads(settings.torch_threads)
        settings.home.mkdir(parents=True, exist_ok=True)
        store = EventStore(settings.db_url)
        registry = ArtifactRegistry(settings.models_dir)
        metrics = CollectorRegistry()
        counters = {
            "unknown_fields": Counter(
                "recloop_events_unknown_fields_dropped",
                "Event fields no schema knows, dropped",
                registry=metrics,
            ),
            "events": Counter(
                "recloop_events_stored", "Events stored (new, committed)", registry=metrics
            ),
            "rejected": Counter(
                "recloop_events_rejected", "Events rejected for bad fields", registry=metrics
            ),
            "priced": Counter(
                "recloop_exposure_priced_slates",
                "Personalised slates re-ranked with the active version's exposure prices",
                registry=metrics,
            ),
        }
        loop = LiveLoop(store, loop_config_from(settings.loop_config))
        retrain = Retrainer(  # always: erasures trigger a rebuild even without a schedule
            store,
            registry,
            every_s=settings.retrain_every_s,
            min_events=settings.retrain_min_events,
            model=settings.retrain_model,
            prices_dir=settings.prices_dir,
        )
        cache = open_cache(
            settings.cache_url,
            namespace=settings.cache_namespace,
            generation_file=settings.generation_file,
        )
        privacy = PrivacyLog(store)
        owners = UserOwners(store, cache, refresh_s=settings.owner_refresh_s)
        explain = ExplainSettings.from_env()  # RECLOOP_EXPLAIN_*: a bad value fails the start
        state = cls(
            settings=settings,
            store=store,
            registry=registry,
            cache=cache,
            models=ModelHolder(registry, check_every_s=settings.model_check_s),
            keys=KeyCache(store.key_by_hash, ttl_s=settings.key_cache_s),
            limiter=RateLimiter(settings.rate_limit, settings.rate_burst),
            metrics=metrics,
            slates=SlateWriter(SlateLog(store), flush_s=settings.slate_flush_s),
            loop=loop,
            updater=LoopUpdater(
                loop,
                every_s=settings.loop_update_s,
                retrain=retrain,
                purge=partial(
                    privacy.purge_expired,
                    settings.retention_s,
                    settings.slate_retention_days * 86400.0,
                ),
            ),
            privacy=privacy,
            erased=ErasedUsers(privacy, cache, listeners=[owners.forget]),
            consent=ConsentReader(privacy, cache),
            owners=owners,
            pregenerator=Pregenerator(
                positions=explain.pregenerate, max_queue=explain.pregenerate_queue
            ),
            prices=PriceHolder(settings.prices_dir, check_every_s=settings.model_check_s),
            counters=counters,
        )
        # read through the state at every scrape: whichever pregenerator it holds then
        register_stats(metrics, METRIC_PREFIX, lambda: state.pregenerator.stats(), COUNTERS, GAUGES)
        return state

    def close(self) -> None:
        self.pregenerator.close()
        self.updater.stop()
        self.slates.close()
        self.cache.close()
        self.store.close()


def warm_up(state: ServiceState) -> None:
    """Before the worker takes requests: load the active model, then move everything loaded so
    far out of the garbage collector's sight, so its passes stay short under load."""
    state.models.reload_now()
    if state.settings.loop:
        state.loop.catalog()  # build the arrays before the first request needs them
    state.slates.start()
    state.updater.start()
    state.pregenerator.start(state)
    gc.collect()
    gc.freeze()


def _pin_threads(threads: int) -> None:
    """Cap torch and BLAS threads for this worker's lifetime: workers, not ops, share cores."""
    import torch
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    torch.set_num_threads(threads)
    threadpool_limits(limits=threads)
