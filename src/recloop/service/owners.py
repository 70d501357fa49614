"""Which client application acts for each user, as the routes check it.

A client key acts for its application (the key's ``owner``) and only for that application's
users: the first client key to write for an unowned user (events, consent, preferences,
profile, onboarding likes) claims them, and from then on keys of other applications get 403 on
everything about that user. Users nobody has claimed (imported ones, say) stay open to every
client until one writes for them. Admin keys are never checked and never claim.

Each worker mirrors the ``user_owners`` table in memory (:class:`UserOwners`): a check is a
dict lookup, never a store read on the request path; new claims are read incrementally (by
``claimed_at``) at most every ``refresh_s``; a reassignment or release invalidates the shared
cache, which makes every worker reload the table; an erased user is forgotten when the worker
reads their tombstone. The event route checks its whole batch in its own transaction instead
(:meth:`EventStore.add_events` with ``owner``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from recloop.service.auth import Principal
from recloop.store.events import EventStore, ForeignUserError

CLOCK_SKEW_S = 5.0
"""Each incremental read starts this long before the newest claim seen, so a claim stamped
by a worker whose clock lags, or committed a little after it was stamped, is not missed."""


class UserOwners:
    """Per-request ownership checks over an in-process mirror of ``user -> owner``.

    The mirror reads the claims made since its newest one at most every ``refresh_s`` (so a
    claim made in another worker reaches this one within that time; a write for a user this
    worker still thinks unowned claims in the store, which tells the truth), reloads
    everything when the shared cache was invalidated (reassignments and releases do that),
    and forgets erased users (:meth:`forget`, called by the worker's ``ErasedUsers``). It
    holds one entry per owned user. Reads take no lock; writes do.
    """

    def __init__(
        self,
        store: EventStore,
        cache: Any = None,
        *,
        refresh_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if refresh_s < 0:
            raise ValueError(f"refresh_s must be >= 0, got {refresh_s}")
        self.store = store
        self.cache = cache
        self.refresh_s = float(refresh_s)
        self._clock = clock
        self._owners: dict[str, str] = {}
        self._seen_until = float("-inf")  # claimed_at of the newest claim read
        self._next = float("-inf")
        self._token: int | None = None
        self._lock = threading.Lock()

    def check(self, principal: Principal, user_id: str, *, claim: bool = False) -> None:
        """Raise :class:`ForeignUserError` (403) unless ``principal`` may act for the user;
        with ``claim`` (the request writes for them), an unowned user becomes its
        application's, atomically."""
        if principal.role == "admin":
            return
        owner = self.owner(user_id)
        if owner is None and claim:
            owner = self.store.claim_users([user_id], principal.owner).get(user_id)
            if owner is not None:
                self.claimed([user_id], owner)
        if owner is not None and owner != principal.owner:
            raise ForeignUserError([user_id])

    def owner(self, user_id: str) -> str | None:
        """The user's owner (None: unowned), from the mirror."""
        self._sync()
        return self._owners.get(user_id)

    def claimed(self, user_ids: Iterable[str], owner: str) -> None:
        """``owner`` now holds these users (claimed in this worker's transaction)."""
        with self._lock:
            self._owners.update((user_id, owner) for user_id in user_ids)

    def forget(self, user_id: str) -> None:
        with self._lock:
            self._owners.pop(user_id, None)

    def clear(self) -> None:
        """Reload everything at the next check."""
        with self._lock:
            self._owners.clear()
            self._seen_until = float("-inf")
            self._next = float("-inf")

    def __len__(self) -> int:
        return len(self._owners)

    def _sync(self) -> None:
        """Reload after an invalidation of the shared cache, else read new claims when due."""
        token = self.cache.token() if self.cache is not None else None
        if token == self._token and self._clock() < self._next:
            return
        with self._lock:
            if token != self._token:
                self._owners.clear()
                self._seen_until = float("-inf")
            since = self._seen_until - CLOCK_SKEW_S
            fresh = self.store.owners_claimed_since(since)
            for user_id, owner, claimed_at in fresh:
                self._owners[user_id] = owner
                self._seen_until = max(self._seen_until, claimed_at)
            self._token = token
            self._next = self._clock() + self.refresh_s
