"""Which client application acts for each user, as the routes check it.

A client key acts for its application (the key's ``owner``) and only for that application's
users: the first client key to write for an unowned user (events, consent, preferences,
profile, onboarding likes) claims them, and from then on keys of other applications get 403 on
everything about that user. Users nobody has claimed (imported ones, say) stay open to every
client until one writes for them. Admin keys are never checked and never claim.

The routes check through :class:`UserOwners`, an in-process cache, so a check costs a dict
lookup; the event route checks its whole batch in its own transaction instead
(:meth:`EventStore.add_events` with ``owner``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from recloop.service.auth import Principal
from recloop.store.events import EventStore, ForeignUserError

OWNED_TTL_S = 60.0
"""How long a worker trusts a known owner: owners change only by an admin's reassignment or
an erasure, and both invalidate the cache in every worker at once."""

# A cache entry: (expires_at on the cache clock, the owner or None for an unowned user).
_Entry = tuple[float, str | None]


class UserOwners:
    """Per-request ownership checks over a bounded in-process cache of ``user -> owner``.

    Known owners are kept :data:`OWNED_TTL_S`; "nobody owns this user" only
    ``unowned_ttl_s``, since another worker may claim the user without telling anyone (so for
    that long after a claim elsewhere, this worker may still let another client read the
    user; a write for a user it thinks unowned claims in the store, which tells the truth).
    Everything is dropped when the shared cache is invalidated, which reassignments and
    erasures do. Reads take no lock; writes do.
    """

    def __init__(
        self,
        store: EventStore,
        cache: Any = None,
        *,
        unowned_ttl_s: float = 5.0,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if unowned_ttl_s < 0:
            raise ValueError(f"unowned_ttl_s must be >= 0, got {unowned_ttl_s}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.store = store
        self.cache = cache
        self.unowned_ttl_s = float(unowned_ttl_s)
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._token: int | None = None
        self._lock = threading.Lock()

    def check(self, principal: Principal, user_id: str, *, claim: bool = False) -> None:
        """Raise :class:`ForeignUserError` (403) unless ``principal`` may act for the user;
        with ``claim`` (the request writes for them), an unowned user becomes its
        application's, atomically."""
        if principal.role == "admin":
            return
        owner, token = self._owner(user_id)
        if owner is None and claim:
            owner = self.store.claim_users([user_id], principal.owner).get(user_id)
            self._put(user_id, owner, token, overwrite=True)
        if owner is not None and owner != principal.owner:
            raise ForeignUserError([user_id])

    def owner(self, user_id: str) -> str | None:
        """The user's owner (None: unowned), from the cache or else the store."""
        return self._owner(user_id)[0]

    def claimed(self, user_ids: Iterable[str], owner: str) -> None:
        """``owner`` now holds these users (an event batch's, claimed in its transaction):
        correct the ones cached as unowned, without filling the cache with the rest."""
        token = self._sync()
        entries = self._entries
        for user_id in user_ids:
            entry = entries.get(user_id)
            if entry is not None and entry[1] is None:
                self._put(user_id, owner, token, overwrite=True)

    def forget(self, user_id: str) -> None:
        with self._lock:
            self._entries.pop(user_id, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def _owner(self, user_id: str) -> tuple[str | None, int | None]:
        """The owner, and the cache token taken before it was read (see :meth:`_put`)."""
        token = self._sync()
        entry = self._entries.get(user_id)  # atomic; no lock on the hot path
        if entry is not None and entry[0] > self._clock():
            return entry[1], token
        owner = self.store.user_owners([user_id]).get(user_id)
        self._put(user_id, owner, token, overwrite=False)
        return owner, token

    def _sync(self) -> int | None:
        """Drop every entry once the shared cache was invalidated (in any worker); the token."""
        if self.cache is None:
            return None
        token: int = self.cache.token()
        if token != self._token:
            with self._lock:
                if token != self._token:
                    self._entries.clear()
                    self._token = token
        return token

    def _put(self, user_id: str, owner: str | None, token: int | None, *, overwrite: bool) -> None:
        """Cache what was read after ``token`` was taken: not if the cache was invalidated
        since (the read may predate a reassignment), nor, unless ``overwrite``, over a fresh
        entry (a lookup that raced a claim must not put "unowned" back over it)."""
        ttl = OWNED_TTL_S if owner is not None else self.unowned_ttl_s
        now = self._clock()
        with self._lock:
            entries = self._entries
            if token != self._token:
                return
            held = entries.get(user_id)
            if not overwrite and held is not None and held[0] > now:
                return
            entries.pop(user_id, None)  # re-insert at the end: the dict stays oldest-first
            if ttl <= 0:
                return
            while len(entries) >= self.max_entries:
                del entries[next(iter(entries))]
            entries[user_id] = (now + ttl, owner)
