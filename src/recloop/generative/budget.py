"""Cost control for explanations: a content-hash cache, budgets, a policy, pregeneration.

- :class:`ExplanationCache` stores finished explanations under a hash of what determines them
  (the evidence, the backend, its model and the prompt version), on top of the service cache
  (``get``/``set`` bytes) or an in-memory LRU. Two users whose evidence is the same share an
  entry; a user whose new event does not change an item's evidence keeps the cached text.
- :class:`Budget` is one request's allowance of wall-clock time and tokens: every generation
  gets the time and tokens left as ``timeout_s``/``max_tokens``, and once it is spent the
  request is answered with the template.
- :class:`GenerationPolicy` reserves language-model generation for the users who benefit most
  (new users, users in listed gap segments), for everyone, or for nobody.
- :func:`pregenerate` explains precomputed slates ahead of time, off the request path, so
  requests find their explanations in the cache.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from recloop.errors import ConfigError
from recloop.generative.evidence import Evidence

if TYPE_CHECKING:
    from recloop.generative.explain import Explainer, Explanation

ENV_PREFIX = "RECLOOP_EXPLAIN_"
DEFAULT_CACHE_TTL_S = 24 * 3600.0
PolicyMode = Literal["everyone", "nobody", "targeted"]


class BytesCache(Protocol):
    """The part of the service cache the explanation cache needs."""

    def get(self, key: str) -> bytes | None: ...

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None: ...


class MemoryCache:
    """A small thread-safe LRU of bytes for use without the service (CLI, benchmarks)."""

    def __init__(self, max_entries: int = 10_000) -> None:
        if max_entries < 1:
            raise ConfigError(f"max_entries must be positive, not {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> bytes | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[1] <= time.monotonic():
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        expires = float("inf") if ttl is None else time.monotonic() + ttl
        with self._lock:
            self._entries[key] = (bytes(value), expires)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)


class ExplanationCache:
    """Finished explanations by content hash, with hit and miss counters."""

    def __init__(
        self,
        backend: BytesCache | None = None,
        *,
        ttl_s: float | None = DEFAULT_CACHE_TTL_S,
        prefix: str = "explanation:",
    ) -> None:
        if ttl_s is not None and ttl_s <= 0:
            raise ConfigError(f"ttl_s must be positive (or None), not {ttl_s}")
        self.backend: BytesCache = backend if backend is not None else MemoryCache()
        self.ttl_s = ttl_s
        self.prefix = prefix
        self.hits = 0
        self.misses = 0
        self.stores = 0
        self._lock = threading.Lock()

    def key(self, evidence: Evidence, backend: str, model: str, prompt_version: str) -> str:
        """The content hash of everything that determines an explanation's text."""
        content = json.dumps(
            {
                "evidence": evidence.to_dict(),
                "backend": backend,
                "model": model,
                "prompt": prompt_version,
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        return self.prefix + hashlib.sha256(content.encode()).hexdigest()

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored explanation fields, counting a hit or a miss."""
        raw = self.backend.get(key)
        payload: dict[str, Any] | None = None
        if raw is not None:
            try:
                loaded = json.loads(raw)
                payload = loaded if isinstance(loaded, dict) else None
            except (ValueError, UnicodeDecodeError):
                payload = None  # a corrupt entry is a miss; it is overwritten on the next put
        with self._lock:
            if payload is None:
                self.misses += 1
            else:
                self.hits += 1
        return payload

    def put(self, key: str, payload: Mapping[str, Any]) -> None:
        self.backend.set(key, json.dumps(dict(payload)).encode(), ttl=self.ttl_s)
        with self._lock:
            self.stores += 1

    @property
    def lookups(self) -> int:
        return self.hits + self.misses

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0

    def reset_counters(self) -> None:
        with self._lock:
            self.hits = self.misses = self.stores = 0


@dataclass
class Budget:
    """One request's allowance: ``time_s`` seconds of wall clock and ``tokens`` tokens
    (prompt and completion together); None means unlimited. The clock starts at creation."""

    time_s: float | None = None
    tokens: int | None = None
    min_completion_tokens: int = 16
    tokens_spent: int = 0
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.time_s is not None and not (self.time_s > 0 and math.isfinite(self.time_s)):
            raise ConfigError(
                f"budget time_s must be a positive, finite number of seconds, not {self.time_s}"
            )
        if self.tokens is not None and self.tokens < 1:
            raise ConfigError(f"budget tokens must be positive, not {self.tokens}")

    def time_left(self) -> float | None:
        if self.time_s is None:
            return None
        return self.time_s - (time.monotonic() - self.started)

    def tokens_left(self) -> int | None:
        return None if self.tokens is None else self.tokens - self.tokens_spent

    def limits(self, max_tokens: int, prompt_tokens: int) -> tuple[float | None, int] | None:
        """``(timeout_s, max_tokens)`` for the next generation, or None when the budget
        cannot pay for one (no time left, or fewer than ``min_completion_tokens`` after the
        prompt)."""
        seconds = self.time_left()
        if seconds is not None and seconds <= 0.01:
            return None
        completion = max_tokens
        left = self.tokens_left()
        if left is not None:
            completion = min(max_tokens, left - prompt_tokens)
            if completion < min(self.min_completion_tokens, max_tokens):
                return None
        return seconds, completion

    def charge(self, tokens: int) -> None:
        self.tokens_spent += max(0, int(tokens))

    @property
    def spent(self) -> bool:
        seconds, left = self.time_left(), self.tokens_left()
        return (seconds is not None and seconds <= 0.01) or (left is not None and left <= 0)


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """Whether a request may use the language model, and why."""

    use_llm: bool
    reason: str


@dataclass(frozen=True, slots=True)
class GenerationPolicy:
    """Who gets language-model generation (the others get the template).

    ``everyone`` and ``nobody`` are what they say; ``targeted`` serves new users (fewer than
    ``new_user_events`` events) and users in ``gap_segments``, names of the loop segments
    slates are logged with (by default ``new``, ``regular``, ``heavy``) that an operator found
    under-served: the users a personal text helps most.
    """

    mode: PolicyMode = "targeted"
    new_user_events: int = 20
    gap_segments: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.mode not in ("everyone", "nobody", "targeted"):
            raise ConfigError(
                f"policy mode must be everyone, nobody or targeted, not {self.mode!r}"
            )
        if self.new_user_events < 0:
            raise ConfigError(f"new_user_events must be >= 0, not {self.new_user_events}")

    def decide(self, *, n_events: int, segment: str | None = None) -> PolicyDecision:
        if self.mode == "everyone":
            return PolicyDecision(True, "policy: everyone")
        if self.mode == "nobody":
            return PolicyDecision(False, "policy: nobody")
        if n_events < self.new_user_events:
            return PolicyDecision(True, f"new user ({n_events} events < {self.new_user_events})")
        if segment is not None and segment in self.gap_segments:
            return PolicyDecision(True, f"gap segment {segment!r}")
        return PolicyDecision(False, "established user outside the gap segments")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GenerationPolicy:
        """``RECLOOP_EXPLAIN_POLICY`` (everyone|nobody|targeted), ``…_NEW_USER_EVENTS``,
        ``…_GAP_SEGMENTS`` (comma-separated)."""
        env = os.environ if environ is None else environ
        mode = env.get(f"{ENV_PREFIX}POLICY", "").strip() or "targeted"
        if mode not in ("everyone", "nobody", "targeted"):
            raise ConfigError(
                f"{ENV_PREFIX}POLICY must be everyone, nobody or targeted, not {mode!r}"
            )
        events = _env_number(env, "NEW_USER_EVENTS", int, 20)
        segments = env.get(f"{ENV_PREFIX}GAP_SEGMENTS", "")
        return cls(
            mode=mode,  # type: ignore[arg-type]  # checked above
            new_user_events=int(events) if events is not None else 20,
            gap_segments=frozenset(s.strip() for s in segments.split(",") if s.strip()),
        )


@dataclass(frozen=True, slots=True)
class ExplainSettings:
    """The service's explanation settings: policy, per-request budget, cache lifetime, and
    pregeneration (the first ``pregenerate`` positions of every served slate are explained
    in the background, at most ``pregenerate_queue`` slates waiting; 0 positions: off)."""

    policy: GenerationPolicy = GenerationPolicy()
    time_s: float | None = 10.0
    tokens: int | None = 1500
    cache_ttl_s: float | None = DEFAULT_CACHE_TTL_S
    pregenerate: int = 3
    pregenerate_queue: int = 256

    def __post_init__(self) -> None:
        if self.pregenerate < 0:
            raise ConfigError(f"pregenerate must be >= 0 positions, not {self.pregenerate}")
        if self.pregenerate_queue < 1:
            raise ConfigError(
                f"pregenerate_queue must be at least 1 slate, not {self.pregenerate_queue}"
            )

    def budget(self) -> Budget:
        """A fresh budget for one request."""
        return Budget(self.time_s, self.tokens)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ExplainSettings:
        """Also ``RECLOOP_EXPLAIN_TIME_S``, ``…_TOKENS``, ``…_CACHE_TTL_S`` (0: unlimited),
        ``…_PREGENERATE`` (positions per served slate, 0: off) and ``…_PREGENERATE_QUEUE``
        (slates waiting, at least 1)."""
        env = os.environ if environ is None else environ
        defaults = cls()
        time_s = _env_number(env, "TIME_S", float, defaults.time_s)
        tokens = _env_number(env, "TOKENS", int, defaults.tokens)
        ttl = _env_number(env, "CACHE_TTL_S", float, defaults.cache_ttl_s)
        positions = _env_number(env, "PREGENERATE", int, defaults.pregenerate)
        queue = _env_number(env, "PREGENERATE_QUEUE", int, defaults.pregenerate_queue)
        if queue is not None and queue < 1:
            raise ConfigError(f"{ENV_PREFIX}PREGENERATE_QUEUE must be at least 1, not {queue}")
        return cls(
            policy=GenerationPolicy.from_env(env),
            time_s=float(time_s) if time_s else None,
            tokens=int(tokens) if tokens else None,
            cache_ttl_s=float(ttl) if ttl else None,
            pregenerate=int(positions or 0),
            pregenerate_queue=int(queue or defaults.pregenerate_queue),
        )


def _env_number(
    env: Mapping[str, str], name: str, kind: type[int] | type[float], default: float | None
) -> float | None:
    raw = env.get(f"{ENV_PREFIX}{name}", "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{ENV_PREFIX}{name} must be a {kind.__name__}, not {raw!r}") from None
    if not math.isfinite(value):  # inf, nan, and 1e400 (which float() makes inf)
        raise ConfigError(f"{ENV_PREFIX}{name} must be a finite number, not {raw!r}")
    if value < 0:
        raise ConfigError(f"{ENV_PREFIX}{name} must be >= 0, not {raw!r}")
    return value


@dataclass(frozen=True, slots=True)
class PregenerationReport:
    """What :func:`pregenerate` did."""

    slates: int
    items: int
    already_cached: int
    generated: int
    fallbacks: int
    seconds: float


def pregenerate(
    slates: Iterable[Sequence[Evidence]],
    explainer: Explainer,
    *,
    use_llm: bool = True,
    consent: bool = False,
    budget: Callable[[], Budget] | None = None,
    chunk: int = 256,
) -> PregenerationReport:
    """Explain every item of precomputed ``slates`` into the explainer's cache.

    Run it off the request path (a batch job, a background thread) after slates are
    precomputed; ``use_llm`` and ``consent`` are what requests for these slates will pass, so
    the entries land under the keys those requests look up. ``budget`` makes a fresh
    :class:`Budget` per item; without one (the default) items go to the explainer
    ``chunk`` at a time through :meth:`Explainer.explain_many`, which a local model decodes
    in batches.
    """
    if explainer.cache is None:
        raise ConfigError("pregenerate needs an Explainer with a cache to fill")
    if chunk < 1:
        raise ConfigError(f"chunk must be at least 1, not {chunk}")
    started = time.perf_counter()
    n_slates = n_items = cached = generated = fallbacks = 0
    waiting: list[Evidence] = []

    def count(results: Iterable[Explanation]) -> None:
        nonlocal cached, generated, fallbacks
        for result in results:
            if result.cached:
                cached += 1
            else:
                generated += 1
                fallbacks += result.fallback_used

    for slate in slates:
        n_slates += 1
        for evidence in slate:
            n_items += 1
            if budget is not None:
                count(
                    [explainer.explain(evidence, use_llm=use_llm, consent=consent, budget=budget())]
                )
                continue
            waiting.append(evidence)
            if len(waiting) >= chunk:
                count(explainer.explain_many(waiting, use_llm=use_llm, consent=consent))
                waiting = []
    if waiting:
        count(explainer.explain_many(waiting, use_llm=use_llm, consent=consent))
    return PregenerationReport(
        slates=n_slates,
        items=n_items,
        already_cached=cached,
        generated=generated,
        fallbacks=fallbacks,
        seconds=time.perf_counter() - started,
    )
