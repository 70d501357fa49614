"""API keys and roles for the HTTP service.

A key looks like ``rlk_<key_id>_<secret>``: the 12-hex-digit ``key_id`` is public (it names the
key in logs and admin listings), the rest is a random secret. The store keeps only the SHA-256 of
the whole key, so a leaked database does not leak usable keys. Rotating a key means issuing a new
one and revoking the old one (``revoked_at``); a revocation reaches every worker within the
:class:`KeyCache` TTL.

Roles: ``client`` keys read recommendations, explanations and similar items, write events,
converse, and manage their own users' preferences and consent; ``admin`` keys do everything.
Every key acts for a client application, its ``owner`` (by default its name): a client key
reads and writes only the users its application owns or nobody has claimed yet
(:mod:`recloop.service.owners`), and keys with the same owner share those users, so rotating
a key keeps them.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for typing: the store may import this module to mint keys
    from recloop.store.events import KeyRecord

__all__ = [
    "KEY_PREFIX",
    "ROLES",
    "AuthError",
    "KeyCache",
    "Principal",
    "authenticate",
    "hash_key",
    "key_id_of",
    "new_key",
    "require_role",
]

ROLES = ("client", "admin")
KEY_PREFIX = "rlk_"

_KEY_ID_HEX = 12
# rlk_ + 12 lowercase hex + _ + a non-empty url-safe secret (token_urlsafe may itself hold '_').
_KEY_RE = re.compile(rf"{KEY_PREFIX}([0-9a-f]{{{_KEY_ID_HEX}}})_[A-Za-z0-9_-]{{16,256}}")


class AuthError(Exception):
    """A request without a valid key (401) or whose key's role does not allow it (403).

    ``message`` never contains the key itself, so it is safe to return and to log.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    @property
    def headers(self) -> dict[str, str]:
        """Response headers the error calls for: RFC 6750 asks 401s to name the scheme."""
        return {"WWW-Authenticate": "Bearer"} if self.status == 401 else {}


def new_key() -> tuple[str, str, str]:
    """A new key as ``(key_id, secret_key, key_hash)``: show the key once, store its hash."""
    key_id = secrets.token_hex(_KEY_ID_HEX // 2)
    secret_key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    return key_id, secret_key, hash_key(secret_key)


def hash_key(secret_key: str) -> str:
    """The SHA-256 hex digest under which a key is stored and looked up."""
    return hashlib.sha256(secret_key.encode("utf-8")).hexdigest()


def key_id_of(secret_key: str) -> str | None:
    """The public id inside a well-formed key, or None when ``secret_key`` is not one of ours."""
    match = _KEY_RE.fullmatch(secret_key)
    return match.group(1) if match else None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key's id, its human name, its role and the client application it
    acts for (``owner``; empty: its name)."""

    key_id: str
    name: str
    role: str
    owner: str = ""

    def __post_init__(self) -> None:
        if not self.owner:
            object.__setattr__(self, "owner", self.name)

    def can(self, role: str) -> bool:
        """Whether this principal may do what ``role`` may: admins may do everything."""
        return self.role == "admin" or (self.role == role and role in ROLES)


# A cache entry: (expires_at on the cache clock, principal or None, revoked_at wall time or None).
_Entry = tuple[float, Principal | None, float | None]


class KeyCache:
    """Caches key-hash lookups so that authenticating a request costs one SHA-256 and a dict get.

    Entries, known or unknown (negative cache), expire after ``ttl_s`` so that a revoked or
    rotated key stops working within ``ttl_s`` in every worker, while a flood of bad keys costs
    the database at most one lookup per distinct key per ``ttl_s``. Malformed keys are rejected
    without hashing or lookup. The cache holds at most ``max_entries`` entries (oldest dropped
    first). A ``revoked_at`` in the future (a rotation grace period) is honoured at that time.
    Thread-safe: reads take no lock; writes and evictions do.
    """

    def __init__(
        self,
        lookup: Callable[[str], KeyRecord | None],
        *,
        ttl_s: float = 5.0,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if ttl_s < 0:
            raise ValueError(f"ttl_s must be >= 0, got {ttl_s}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self._lookup = lookup
        self._ttl_s = float(ttl_s)
        self._max_entries = max_entries
        self._clock = clock
        self._wall_clock = wall_clock
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def principal(self, secret_key: str) -> Principal | None:
        """The principal for ``secret_key``; None when it is malformed, unknown or revoked."""
        if key_id_of(secret_key) is None:
            return None
        key_hash = hash_key(secret_key)
        now = self._clock()
        entry = self._entries.get(key_hash)  # atomic; no lock on the hot path
        if entry is None or entry[0] <= now:
            entry = self._load(key_hash, now)
        _, found, revoked_at = entry
        if found is not None and revoked_at is not None and revoked_at <= self._wall_clock():
            return None
        return found

    def clear(self) -> None:
        """Forget every cached entry (after revoking a key in this process, say)."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def _load(self, key_hash: str, now: float) -> _Entry:
        """Look the hash up in the store (outside the lock) and cache the answer."""
        record = self._lookup(key_hash)
        found: Principal | None = None
        revoked_at: float | None = None
        if (
            record is not None
            and hmac.compare_digest(record.key_hash, key_hash)
            and record.role in ROLES
        ):
            found = Principal(record.key_id, record.name, record.role, record.owner)
            revoked_at = record.revoked_at
        entry: _Entry = (now + self._ttl_s, found, revoked_at)
        with self._lock:
            entries = self._entries
            entries.pop(key_hash, None)  # re-insert at the end: the dict stays oldest-first
            if len(entries) >= self._max_entries:
                self._evict(now)
            entries[key_hash] = entry
        return entry

    def _evict(self, now: float) -> None:
        """Drop expired entries from the front, then the oldest ones until there is room."""
        entries = self._entries
        while entries:
            oldest = next(iter(entries))
            if entries[oldest][0] > now and len(entries) < self._max_entries:
                break
            del entries[oldest]


def _presented_key(headers: Mapping[str, str]) -> str | None:
    """The key from ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, if any."""
    auth = headers.get("authorization") or headers.get("Authorization")
    if auth:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    api_key = headers.get("x-api-key") or headers.get("X-API-Key")
    if api_key and api_key.strip():
        return api_key.strip()
    return None


def authenticate(request_headers: Mapping[str, str], keys: KeyCache) -> Principal:
    """The principal behind a request's key; :class:`AuthError` (401) when there is none.

    The error message never echoes the key, so it can go back to the client and into logs.
    """
    secret_key = _presented_key(request_headers)
    if secret_key is None:
        raise AuthError(401, "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key'")
    principal = keys.principal(secret_key)
    if principal is None:
        raise AuthError(401, "invalid or revoked API key")
    return principal


def require_role(principal: Principal, role: str) -> None:
    """Raise :class:`AuthError` (403) unless ``principal`` may act as ``role``."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    if not principal.can(role):
        raise AuthError(
            403, f"this endpoint needs the '{role}' role; this key has '{principal.role}'"
        )
