"""Per-key rate limits: a token bucket per API key, kept in this process's memory.

Each key may make ``rate`` requests per second sustained and up to ``burst`` at once. The
buckets are per process: under ``uvicorn --workers N`` every worker keeps its own, so the
effective limit is ``rate × N`` (and ``burst × N``); set ``rate`` with that in mind. Checking
costs O(1) time and no background thread: buckets refill lazily when they are checked.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Decision", "RateLimiter"]


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer for one request: allowed or not, and what to tell the client."""

    allowed: bool
    retry_after_s: float  # 0 when allowed, else seconds until the request would be allowed
    remaining: int  # whole tokens left in the bucket after this request

    @property
    def retry_after_header(self) -> str:
        """``retry_after_s`` as a ``Retry-After`` value: whole seconds, rounded up, at least 1."""
        return str(max(1, math.ceil(self.retry_after_s))) if not self.allowed else "0"


class RateLimiter:
    """Token buckets keyed by API key (or any string): ``rate`` per second, ``burst`` capacity.

    ``rate <= 0`` means unlimited. Memory stays bounded: once the map holds more than
    ``max_keys`` buckets, the least recently used ones that are full again (idle for at least
    ``burst / rate`` seconds, so forgetting them changes nothing) are dropped. Buckets used
    within the last ``burst / rate`` seconds are kept even past ``max_keys``: dropping them would
    hand their keys a fresh burst. Thread-safe.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        if math.isnan(rate):
            raise ValueError("rate must be a number")
        self.rate = float(rate)
        self.burst = int(burst)
        self.unlimited = self.rate <= 0 or math.isinf(self.rate)
        if not self.unlimited and self.burst < 1:
            raise ValueError(f"burst must be >= 1 when rate > 0, got {burst}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys}")
        self._clock = clock
        self._max_keys = max_keys
        # key -> [tokens, last update time]; least recently checked first.
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()
        self._lock = threading.Lock()
        self._always = Decision(allowed=True, retry_after_s=0.0, remaining=max(self.burst, 0))

    def check(self, key: str, cost: float = 1.0) -> Decision:
        """Take ``cost`` tokens from ``key``'s bucket if it holds them; say whether it did."""
        if self.unlimited:
            return self._always
        if not 0 <= cost <= self.burst:
            raise ValueError(f"cost must be between 0 and burst={self.burst}, got {cost}")
        rate, burst = self.rate, self.burst
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(key)
            if bucket is None:
                tokens = float(burst)
                bucket = [tokens, now]
                self._buckets[key] = bucket
                if len(self._buckets) > self._max_keys:
                    self._evict(now)
            else:
                elapsed = now - bucket[1]
                tokens = min(float(burst), bucket[0] + elapsed * rate) if elapsed > 0 else bucket[0]
                self._buckets.move_to_end(key)
            bucket[1] = max(now, bucket[1])
            if tokens >= cost:
                tokens -= cost
                bucket[0] = tokens
                return Decision(allowed=True, retry_after_s=0.0, remaining=int(tokens))
            bucket[0] = tokens
            return Decision(allowed=False, retry_after_s=(cost - tokens) / rate, remaining=0)

    def __len__(self) -> int:
        """How many buckets are held now."""
        return len(self._buckets)

    def _evict(self, now: float) -> None:
        """Drop least recently used buckets that have refilled, while over ``max_keys``."""
        buckets, rate, burst = self._buckets, self.rate, self.burst
        while len(buckets) > self._max_keys:
            key, (tokens, last) = next(iter(buckets.items()))
            if tokens + (now - last) * rate < burst:
                return  # the oldest is still refilling, so every newer one may be too
            del buckets[key]
