"""The cache for precomputed candidates: in-process by default, Redis by URL.

Both kinds invalidate across worker processes, because a new model or new data makes every
cached list stale at once: the in-process cache through a generation file that each process
stats on every read, Redis through a generation counter that is part of every key (old keys
are never read again and expire by their TTL) plus a pub/sub message that tells the other
processes to pick up the new counter at once.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

import redis

from recloop.errors import RecloopError, one_line

DEFAULT_MAX_ENTRIES = 100_000
DEFAULT_TTL_S = 3600.0
"""Redis entries always expire: entries of older generations are never deleted explicitly."""


class CacheError(RecloopError):
    """A cache that cannot be opened or invalidated (one line, passwords masked)."""


@runtime_checkable
class Cache(Protocol):
    """What the service needs from a cache; ``invalidate`` reaches every worker process.

    A value computed from data read after :meth:`token` is stored with ``set(..., token=t)``:
    if the cache was invalidated in between, it is dropped, so a computation that raced an
    invalidation can never put its stale result back.

    A key whose source changes in place (a consent flag) is kept fresh without invalidating
    everything: the writer changes the source, then writes the new value with
    :meth:`overwrite`; readers that miss store what they read with
    ``set(..., if_absent=True)``, so a reader that read the old source before the change
    cannot replace the writer's value.
    """

    def get(self, key: str) -> bytes | None: ...

    def token(self) -> int: ...

    def set(
        self,
        key: str,
        value: bytes,
        ttl: float | None = None,
        *,
        token: int | None = None,
        if_absent: bool = False,
    ) -> None: ...

    def overwrite(self, key: str, value: bytes, ttl: float | None = None) -> None: ...

    def delete(self, key: str) -> None: ...

    def purge(self, fragment: str) -> int: ...

    def forget(self, scope: str) -> int: ...

    def invalidate(self) -> None: ...

    def close(self) -> None: ...


SCOPE_PATTERN = re.compile(r"\|u=[0-9a-f]{24}\|")
"""Where a key carries a user's scope (:func:`user_scope`)."""
FORGET_HOLD_S = 300.0
"""How long a forgotten scope's writes are refused (any request that read the user's data
before their erasure has long finished by then, and every worker knows the tombstone)."""
FORGET_GRACE_S = 0.1
"""In-process caches: in-flight requests of other processes finish their writes within this."""


def user_scope(user_id: str) -> str:
    """The fragment every key of an entry derived from one user's data must carry: erasing
    the user purges every entry whose key holds it (:meth:`Cache.purge`). A digest of the id,
    so cache keys never hold user ids themselves."""
    return f"|u={hashlib.sha256(user_id.encode()).hexdigest()[:24]}|"


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, fit for messages and logs."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable URL>"
    if not password:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def _one_line(exc: BaseException, secret: str | None = None) -> str:
    text = one_line(exc)
    return text.replace(secret, "***") if secret else text


FileStamp = tuple[int, int]
"""(inode, mtime in ns) of the generation file; (0, 0) while it does not exist."""


class InProcessCache:
    """A thread-safe LRU with per-entry TTL, private to one process.

    With ``generation_file``, :meth:`invalidate` rewrites that file (tmp + ``os.replace``) and
    every process sharing it drops its entries on its next read, which costs one ``os.stat``.
    """

    def __init__(
        self, *, max_entries: int = DEFAULT_MAX_ENTRIES, generation_file: Path | None = None
    ) -> None:
        if max_entries < 1:
            raise CacheError(f"max_entries must be positive, not {max_entries}")
        self.max_entries = max_entries
        self.generation_file = Path(generation_file) if generation_file is not None else None
        self.errors = 0  # for parity with RedisCache: a local cache never fails a read
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._seen = self._stamp()
        self._epoch = 0  # counts the times the entries were dropped by an invalidation

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def entry_keys(self) -> list[str]:
        """The keys held now, least recently used first (for inspection and tests)."""
        with self._lock:
            return list(self._entries)

    def _stamp(self) -> FileStamp:
        if self.generation_file is None:
            return (0, 0)
        try:
            st = os.stat(self.generation_file)
        except OSError:
            return (0, 0)
        return (st.st_ino, st.st_mtime_ns)

    def _sync(self) -> None:
        """Drop every entry if another process invalidated since we last looked (lock held)."""
        if self.generation_file is None:
            return
        stamp = self._stamp()
        if stamp != self._seen:
            self._entries.clear()
            self._seen = stamp
            self._epoch += 1

    def token(self) -> int:
        """The invalidation epoch now (see :class:`Cache`)."""
        with self._lock:
            self._sync()
            return self._epoch

    def get(self, key: str) -> bytes | None:
        with self._lock:
            self._sync()
            entry = self._entries.get(key)
            if entry is None:
                return None
            value, expires = entry
            if expires <= time.monotonic():
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return value

    def set(
        self,
        key: str,
        value: bytes,
        ttl: float | None = None,
        *,
        token: int | None = None,
        if_absent: bool = False,
    ) -> None:
        """Store ``value``; ``ttl`` in seconds (None: until evicted or invalidated); not when
        ``token`` is given and the cache was invalidated since it was taken, nor, with
        ``if_absent``, when the key holds a live value."""
        now = time.monotonic()
        expires = float("inf") if ttl is None else now + ttl
        with self._lock:
            self._sync()
            if token is not None and token != self._epoch:
                return
            held = self._entries.get(key)
            if if_absent and held is not None and held[1] > now:
                return
            if ttl is not None and ttl <= 0:
                self._entries.pop(key, None)
                return
            self._entries[key] = (bytes(value), expires)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def overwrite(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store ``value`` for every process: here at once; processes sharing the generation
        file cannot be reached one key at a time, so they are invalidated."""
        if self.generation_file is not None:
            self.invalidate()
        self.set(key, value, ttl)

    def delete(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def purge(self, fragment: str) -> int:
        """Delete every entry whose key contains ``fragment`` (here; other processes drop
        theirs at the next :meth:`invalidate`); how many."""
        with self._lock:
            doomed = [key for key in self._entries if fragment in key]
            for key in doomed:
                del self._entries[key]
        return len(doomed)

    def forget(self, scope: str) -> int:
        """Erase ``scope`` (a :func:`user_scope`) from every process: purge here, invalidate
        (other processes drop all their entries, and computations that read before now can
        no longer store), wait :data:`FORGET_GRACE_S` for writes already past that check,
        purge again. How many entries were deleted here."""
        deleted = self.purge(scope)
        self.invalidate()
        time.sleep(FORGET_GRACE_S)
        return deleted + self.purge(scope)

    def invalidate(self) -> None:
        """Drop every entry here and, through the generation file, in every other process."""
        with self._lock:
            self._entries.clear()
            self._epoch += 1
            if self.generation_file is not None:
                self._bump()
                self._seen = self._stamp()

    def _bump(self) -> None:
        """Rewrite the generation file with counter + 1, its mtime strictly increasing."""
        assert self.generation_file is not None
        path = self.generation_file
        try:
            counter = int(path.read_text().strip() or 0)
        except (OSError, ValueError):
            counter = 0
        before = self._stamp()[1]
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(f"{counter + 1}\n")
            # two bumps within one filesystem clock tick must still look different
            if os.stat(tmp).st_mtime_ns <= before:
                os.utime(tmp, ns=(before + 1, before + 1))
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise CacheError(f"{path}: cannot write the cache generation file ({exc})") from None

    def close(self) -> None:
        with self._lock:
            self._entries.clear()


# SET KEYS[1] to ARGV[1] for ARGV[2] ms (only if absent when ARGV[3] is "1") unless KEYS[2]
# (a forgotten scope's marker) exists: one round trip, atomic with the marker that an erasure
# sets before it purges.
_SET_UNLESS_FORGOTTEN = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if ARGV[3] == '1' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX')
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 1
"""


class RedisCache:
    """A cache in Redis, shared by every process; keys carry the current generation.

    Each process holds the generation locally and re-reads it at most every
    ``local_check_s`` seconds, and at once when a message arrives on the invalidation channel
    (a daemon thread listens). Failures while serving (get, set, delete) never reach a
    request: they count in :attr:`errors` and a read becomes a miss.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "recloop",
        local_check_s: float = 0.5,
        default_ttl: float = DEFAULT_TTL_S,
    ) -> None:
        self.url = mask_url(url)
        self.namespace = namespace
        self.local_check_s = local_check_s
        self.default_ttl = default_ttl
        self.errors = 0
        self.generation_key = f"{namespace}:generation"
        self.channel = f"{namespace}:invalidate"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._stale = False  # set when a message may have been missed: re-read on next get
        self._closed = False
        secret = None
        try:
            secret = urlsplit(url).password
            self._client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
            self._client.ping()
            self._generation = self._read_generation()
            self._checked_at = time.monotonic()
            self._set_unless_forgotten = self._client.register_script(_SET_UNLESS_FORGOTTEN)
            self._pubsub = self._client.pubsub()
            self._pubsub.subscribe(self.channel)
            self._await_subscription()
        except (redis.RedisError, OSError, ValueError) as exc:
            client = getattr(self, "_client", None)
            if client is not None:
                client.close()
            reason = _one_line(exc, secret)
            raise CacheError(f"cannot use Redis at {self.url}: {reason}") from None
        self._thread = threading.Thread(
            target=self._listen, name=f"recloop-cache-{namespace}", daemon=True
        )
        self._thread.start()

    def _await_subscription(self) -> None:
        """Wait for the SUBSCRIBE reply, so an invalidation right after construction is seen."""
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            message = self._pubsub.get_message(timeout=0.1)
            if message is not None and message.get("type") == "subscribe":
                return
        raise redis.TimeoutError(f"no reply to SUBSCRIBE {self.channel}")

    def _read_generation(self) -> int:
        raw = self._client.get(self.generation_key)
        return int(raw) if raw is not None else 0

    def _refresh(self) -> int:
        generation = self._read_generation()
        with self._lock:
            self._generation = generation
            self._checked_at = time.monotonic()
            self._stale = False
        return generation

    def _current_generation(self) -> int:
        with self._lock:
            due = self._stale or time.monotonic() - self._checked_at >= self.local_check_s
            generation = self._generation
        return self._refresh() if due else generation

    def _listen(self) -> None:
        """Re-read the generation whenever another process announces an invalidation."""
        while not self._stop.is_set():
            try:
                message = self._pubsub.get_message(timeout=0.25)
                if message is not None and message.get("type") == "message":
                    self._refresh()
            except Exception:  # a lost connection: redis-py reconnects and resubscribes
                with self._lock:
                    self._stale = True
                self._stop.wait(0.5)

    def _key(self, generation: int, key: str) -> str:
        return f"{self.namespace}:{generation}:{key}"

    def _failed(self) -> None:
        with self._lock:
            self.errors += 1

    def get(self, key: str) -> bytes | None:
        """The cached value, or None on a miss or any Redis failure (counted in ``errors``)."""
        try:
            value = self._client.get(self._key(self._current_generation(), key))
        except (redis.RedisError, OSError, ValueError):
            self._failed()
            return None
        if isinstance(value, str):  # a URL with decode_responses=true
            return value.encode()
        return value

    def token(self) -> int:
        """The generation now (see :class:`Cache`); a failure gives -1, which stores nothing."""
        try:
            return self._current_generation()
        except (redis.RedisError, OSError, ValueError):
            self._failed()
            return -1

    def set(
        self,
        key: str,
        value: bytes,
        ttl: float | None = None,
        *,
        token: int | None = None,
        if_absent: bool = False,
    ) -> None:
        """Store ``value`` for ``ttl`` seconds (default :attr:`default_ttl`); failures counted.

        With ``token``, nothing is stored if the cache was invalidated since it was taken (a
        value computed from data read before an invalidation, e.g. an erasure); with
        ``if_absent``, nothing replaces a live value (Redis ``SET NX``)."""
        try:
            self._write(key, value, ttl, token, if_absent)
        except (redis.RedisError, OSError, ValueError):
            self._failed()

    def overwrite(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store ``value`` for every process at once (they all read Redis); a failure raises
        :class:`CacheError`, as a failed invalidation does: the old value would live on."""
        try:
            self._write(key, value, ttl, None, False)
        except (redis.RedisError, OSError, ValueError) as exc:
            self._failed()
            raise CacheError(f"cannot write to the cache at {self.url}: {_one_line(exc)}") from None

    def _write(
        self, key: str, value: bytes, ttl: float | None, token: int | None, if_absent: bool
    ) -> None:
        """:meth:`set`'s work; Redis failures propagate."""
        seconds = self.default_ttl if ttl is None else ttl
        if token is not None and token < 0:
            return
        current = self._current_generation()
        if token is not None and token != current:
            return  # computed before an invalidation: no reader would look there
        name = self._key(current, key)
        scope = SCOPE_PATTERN.search(key)
        if seconds <= 0:
            self._client.delete(name)
        elif scope is not None:  # derived from a user: never after their erasure
            marker = self._forgotten_key(scope.group())
            self._set_unless_forgotten(
                keys=[name, marker],
                args=[value, max(1, int(seconds * 1000)), "1" if if_absent else "0"],
            )
        else:
            self._client.set(name, value, px=max(1, int(seconds * 1000)), nx=if_absent)

    def _forgotten_key(self, scope: str) -> str:
        # "u=<digest>" without the bars, so purging the scope leaves the marker alone
        return f"{self.namespace}:forgotten:{scope.strip('|')}"

    def delete(self, key: str) -> None:
        try:
            self._client.delete(self._key(self._current_generation(), key))
        except (redis.RedisError, OSError, ValueError):
            self._failed()

    def purge(self, fragment: str) -> int:
        """Delete every key of every generation containing ``fragment`` (SCAN, then DEL);
        how many. Unlike reads, a failure raises :class:`CacheError`: erasure must not
        silently leave data behind."""
        pattern = f"{self.namespace}:*{_glob_escape(fragment)}*"
        deleted = 0
        try:
            batch: list[Any] = []
            for name in self._client.scan_iter(match=pattern, count=5000):
                batch.append(name)
                if len(batch) >= 500:
                    deleted += int(self._client.delete(*batch))
                    batch = []
            if batch:
                deleted += int(self._client.delete(*batch))
        except (redis.RedisError, OSError) as exc:
            raise CacheError(f"cannot purge the cache at {self.url}: {_one_line(exc)}") from None
        return deleted

    def forget(self, scope: str) -> int:
        """Erase ``scope`` (a :func:`user_scope`) from the cache for every process at once:
        first a marker (kept :data:`FORGET_HOLD_S`) that makes every later write of a key
        carrying the scope a no-op, atomically in Redis, then the purge of every generation.
        A computation that read the user's data before the erasure therefore can neither
        survive the purge nor write after it, and the rest of the cache stays warm (no
        invalidation). How many entries were deleted; failures raise :class:`CacheError`."""
        if SCOPE_PATTERN.fullmatch(scope) is None:
            raise ValueError(f"not a user scope: {scope!r}")
        try:
            self._client.set(self._forgotten_key(scope), b"1", px=int(FORGET_HOLD_S * 1000))
        except (redis.RedisError, OSError) as exc:
            raise CacheError(f"cannot purge the cache at {self.url}: {_one_line(exc)}") from None
        return self.purge(scope)

    def invalidate(self) -> None:
        """Start a new generation and announce it to every process.

        Unlike reads, a failure raises :class:`CacheError`: a silently failed invalidation
        would keep serving stale lists.
        """
        try:
            generation = int(self._client.incr(self.generation_key))
            self._client.publish(self.channel, str(generation))
        except (redis.RedisError, OSError) as exc:
            reason = _one_line(exc)
            raise CacheError(f"cannot invalidate the cache at {self.url}: {reason}") from None
        with self._lock:
            self._generation = generation
            self._checked_at = time.monotonic()
            self._stale = False

    def close(self) -> None:
        """Stop the listener and close the connections; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._thread.join(timeout=2.0)
        try:
            self._pubsub.close()
        finally:
            self._client.close()


def _glob_escape(text: str) -> str:
    """``text`` matched literally by a Redis glob pattern."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


def open_cache(
    url: str | None, *, namespace: str = "recloop", generation_file: Path | None = None
) -> Cache:
    """The cache a URL names: None, "" or "memory" in-process; redis:// or rediss:// Redis."""
    if url is None or url.strip() in ("", "memory"):
        return InProcessCache(generation_file=generation_file)
    try:
        scheme = urlsplit(url).scheme
    except ValueError:
        scheme = ""
    if scheme in ("redis", "rediss"):
        return RedisCache(url, namespace=namespace)
    raise CacheError(f"unknown cache URL {mask_url(url)!r}: use 'memory', redis:// or rediss://")
