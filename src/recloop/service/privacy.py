"""Erasure and consent in the running service: what the store cannot reach by itself.

:func:`erase` deletes the user's stored data and writes their tombstone (one transaction, see
:mod:`recloop.store.privacy`), then reaches what the store does not hold:

- **caches**: every entry whose key carries the user's scope (:func:`user_scope`) is deleted
  (:meth:`~recloop.store.cache.Cache.forget`): in Redis across all generations, behind a
  marker that refuses later writes of such keys, so the rest of the cache stays warm; an
  in-process cache is purged and invalidated, so every other worker drops its entries;
- **this worker's queued slates** of the user are discarded, and every worker's slate writer
  refuses slates of tombstoned users;
- **models**: a model that holds per-user state (e.g. BPR's user factors) may not use it from
  the next request on (:class:`ErasedUsers`, refreshed by every worker at least every
  ``refresh_s``); aggregate models (EASE, item embeddings) are rebuilt without the user by the
  loop's retrainer before ``erased_at + erasure_rebuild_s``, which the answer states.

The audit log records the request and its completion.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from recloop.service.schemas import ErasureOut
from recloop.store.cache import user_scope
from recloop.store.privacy import Consent, PrivacyLog


def _digest(user_id: str) -> str:
    return hashlib.sha256(user_id.encode()).hexdigest()


class ErasedUsers:
    """Which users were erased, as SHA-256 digests, refreshed from the tombstones at least
    every ``refresh_s`` (checked on every request) and at once when the cache was
    invalidated; ``listeners`` hear of each newly erased user in this worker (in-process
    per-user caches such as the ownership cache drop them)."""

    def __init__(
        self,
        log: PrivacyLog,
        cache: Any = None,
        *,
        refresh_s: float = 0.5,
        listeners: Iterable[Callable[[str], None]] = (),
    ) -> None:
        self.log = log
        self.cache = cache
        self.refresh_s = refresh_s
        self.listeners = list(listeners)  # told each newly erased user id (per-user caches)
        self._digests: set[str] = set()
        self._seen_until = float("-inf")  # erased_at of the newest tombstone read
        self._next = 0.0
        self._token: int | None = None
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Add the tombstones written since the newest one seen (they are never removed, so
        reading only the new ones keeps the per-request check cheap however many there are)."""
        token = self.cache.token() if self.cache is not None else None
        fresh = self.log.erased_since(self._seen_until)
        with self._lock:
            new = [user for user, _ in fresh if _digest(user) not in self._digests]
            self._digests.update(_digest(user) for user, _ in fresh)
            if fresh:
                self._seen_until = max(self._seen_until, fresh[-1][1])
            self._next = time.monotonic() + self.refresh_s
            self._token = token
        for user in new:
            self._tell(user)

    def add(self, user_id: str) -> None:
        with self._lock:
            self._digests.add(_digest(user_id))
        self._tell(user_id)

    def _tell(self, user_id: str) -> None:
        for listener in self.listeners:
            listener(user_id)

    def __contains__(self, user_id: object) -> bool:
        if not isinstance(user_id, str):
            return False
        stale = self.cache is not None and self.cache.token() != self._token
        if stale or time.monotonic() >= self._next:
            self.refresh()
        return _digest(user_id) in self._digests


def may_personalise(state: Any, user_id: str) -> bool:
    """Whether the user's data may shape what they are shown: not erased, and their
    personalisation consent on. Every route that reads a user's history asks this first."""
    return user_id not in state.erased and state.consent.get(user_id).personalisation


def erase(state: Any, user_id: str, actor: str) -> ErasureOut:
    """Erase ``user_id`` everywhere this worker can reach (see the module docstring)."""
    privacy: PrivacyLog = state.privacy
    from recloop.generative.review import ReviewQueue

    steps: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        steps[step] = round(1000 * (now - clock), 2)
        clock = now

    stored = privacy.erase_user(user_id, actor)
    lap("store")
    state.erased.add(user_id)
    ReviewQueue(state.store).forget_user(user_id)  # generated pieces' audiences
    dropped = state.slates.drop_user(user_id)
    lap("review_and_slates")
    # Every entry carrying the user's scope goes, and a request that read their data before
    # now cannot store what it computed afterwards (see the cache's forget); the rest of the
    # cache stays warm, and every worker reads the new tombstone within ErasedUsers.refresh_s.
    purged = state.cache.forget(user_scope(user_id))
    lap("cache_purge")
    holding = [
        version.version
        for version in state.registry.versions()
        if user_id in _version_users(state, version.version)
    ]
    lap("models")
    # without the loop updater nothing retrains: say so rather than promise a time
    updating = state.settings.loop_update_s > 0
    rebuild_by = stored.erased_at + state.settings.erasure_rebuild_s if updating else None
    completed = time.time()
    report = ErasureOut(
        user_id=user_id,
        erased_at=stored.erased_at,
        completed_at=completed,
        events=stored.events,
        slates=stored.slates,
        impressions=stored.impressions,
        profile=stored.profile,
        consent=stored.consent,
        cache_entries_purged=purged,
        queued_slates_dropped=dropped,
        model_rebuild_by=rebuild_by,
        models_holding_user=holding,
        steps_ms=steps,
    )
    privacy.record(
        actor,
        "erasure-complete",
        user_id,
        {
            "seconds": round(completed - stored.erased_at, 4),
            "cache_entries_purged": purged,
            "model_rebuild_by": rebuild_by,
            "models_holding_user": holding,
            "steps_ms": steps,
        },
    )
    return report


def _version_users(state: Any, version: str) -> set[str]:
    """The user ids a registered version was trained with (its ``ids.json``)."""
    current = state.models.current()
    if current is not None and current.version == version:
        return set(current.users.ids())
    return set(state.registry.user_ids(version))


class ConsentReader:
    """Per-request consent lookups, cached under the user's scope (purged on erasure)."""

    def __init__(self, log: PrivacyLog, cache: Any, *, ttl_s: float = 60.0) -> None:
        self.log = log
        self.cache = cache
        self.ttl_s = ttl_s

    @staticmethod
    def key(user_id: str) -> str:
        return f"consent{user_scope(user_id)}"

    def get(self, user_id: str) -> Consent:
        raw = self.cache.get(self.key(user_id))
        if raw is not None:
            p, t, g = raw.decode()
            return Consent(p == "1", t == "1", g == "1")
        token = self.cache.token()
        value = self.log.consent(user_id)
        flags = _flags(value)
        # not over a value a consent change wrote meanwhile (this read may predate it)
        self.cache.set(
            self.key(user_id), flags.encode(), ttl=self.ttl_s, token=token, if_absent=True
        )
        return value

    def set(self, user_id: str, value: Consent, actor: str) -> None:
        """Store the change, then write it through the cache for every worker; nothing else
        in the cache depends on consent (each request reads it first), so the rest stays."""
        self.log.set_consent(user_id, value, actor)
        self.cache.overwrite(self.key(user_id), _flags(value).encode(), ttl=self.ttl_s)


def _flags(value: Consent) -> str:
    """The three flags as the cached "101" string (personalisation, training, generative)."""
    return "".join(
        "1" if f else "0" for f in (value.personalisation, value.training, value.generative)
    )
