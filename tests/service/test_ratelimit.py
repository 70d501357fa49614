"""Token-bucket rate limits with an injected clock: burst, refill, retry-after, bounded memory."""

from __future__ import annotations

import threading

import pytest
from fastapi import FastAPI, HTTPException, Request
from fastapi.testclient import TestClient

from recloop.service.ratelimit import Decision, RateLimiter


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_burst_then_denied_with_retry_after() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    decisions = [limiter.check("k") for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert decisions[0].retry_after_s == 0.0
    assert decisions[3].retry_after_s == pytest.approx(0.5)  # one token at 2 per second
    assert decisions[3].retry_after_header == "1"


def test_refill_is_lazy_and_capped_at_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=1.0, burst=2, clock=clock)
    assert limiter.check("k").allowed and limiter.check("k").allowed
    clock.now += 0.25
    denied = limiter.check("k")
    assert not denied.allowed and denied.retry_after_s == pytest.approx(0.75)
    clock.now += 0.75
    assert limiter.check("k") == Decision(allowed=True, retry_after_s=0.0, remaining=0)
    clock.now += 3600  # idle for an hour: still only `burst` tokens
    assert [limiter.check("k").allowed for _ in range(3)] == [True, True, False]


def test_denied_requests_take_no_tokens() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=1.0, burst=1, clock=clock)
    assert limiter.check("k").allowed
    for _ in range(5):
        assert not limiter.check("k").allowed
    clock.now += 1.0
    assert limiter.check("k").allowed


def test_keys_are_independent() -> None:
    limiter = RateLimiter(rate=1.0, burst=1, clock=FakeClock())
    assert limiter.check("a").allowed
    assert not limiter.check("a").allowed
    assert limiter.check("b").allowed


def test_retry_after_header_rounds_up() -> None:
    assert Decision(False, 0.2, 0).retry_after_header == "1"
    assert Decision(False, 1.0, 0).retry_after_header == "1"
    assert Decision(False, 1.01, 0).retry_after_header == "2"
    assert Decision(True, 0.0, 5).retry_after_header == "0"
    clock = FakeClock()
    slow = RateLimiter(rate=0.1, burst=1, clock=clock)
    slow.check("k")
    assert slow.check("k").retry_after_header == "10"


def test_cost() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=10.0, burst=10, clock=clock)
    assert limiter.check("k", cost=8).remaining == 2
    denied = limiter.check("k", cost=5)
    assert not denied.allowed and denied.retry_after_s == pytest.approx(0.3)
    with pytest.raises(ValueError, match="cost"):
        limiter.check("k", cost=11)


@pytest.mark.parametrize("rate", [0.0, -1.0, float("inf")])
def test_non_positive_rate_is_unlimited(rate: float) -> None:
    limiter = RateLimiter(rate=rate, burst=0, clock=FakeClock())
    assert all(limiter.check(f"k{i % 3}").allowed for i in range(10_000))
    assert limiter.check("k").retry_after_s == 0.0
    assert len(limiter) == 0  # no buckets kept at all


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="burst"):
        RateLimiter(rate=1.0, burst=0)
    with pytest.raises(ValueError, match="rate"):
        RateLimiter(rate=float("nan"), burst=1)


def test_many_keys_stay_bounded() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=1.0, burst=2, clock=clock, max_keys=100)
    for i in range(1000):
        assert limiter.check(f"k{i}").allowed
    # All 1000 are refilling, so none may be forgotten yet (that would hand out fresh bursts).
    assert len(limiter) == 1000
    clock.now += 0.5
    assert limiter.check("hot").allowed
    assert limiter.check("hot").allowed
    clock.now += 1.5  # k0..k999 are full again now; "hot" is still refilling
    limiter.check("new")
    assert len(limiter) == 100  # the oldest full buckets went
    hot = limiter.check("hot")  # 1.5 tokens: kept, not reset to a full bucket of 2
    assert hot.allowed and hot.remaining == 0


def test_eviction_never_resets_an_active_bucket() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=0.001, burst=1, clock=clock, max_keys=2)
    assert limiter.check("drained").allowed
    for i in range(50):
        limiter.check(f"other{i}")
    assert not limiter.check("drained").allowed


def test_concurrent_checks_never_overspend() -> None:
    clock = FakeClock()  # frozen: no refill, so exactly `burst` requests may pass
    limiter = RateLimiter(rate=1.0, burst=500, clock=clock)
    allowed = [0] * 8

    def work(slot: int) -> None:
        for _ in range(200):
            if limiter.check("shared").allowed:
                allowed[slot] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(allowed) == 500


def test_in_a_fastapi_app_429_with_retry_after() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=0.5, burst=2, clock=clock)
    app = FastAPI()

    @app.get("/v1/ping")
    def ping(request: Request) -> dict[str, int]:
        decision = limiter.check(request.headers.get("x-api-key", "anonymous"))
        if not decision.allowed:
            raise HTTPException(
                429, "rate limit exceeded", headers={"Retry-After": decision.retry_after_header}
            )
        return {"remaining": decision.remaining}

    client = TestClient(app)
    headers = {"X-API-Key": "k"}
    assert client.get("/v1/ping", headers=headers).json() == {"remaining": 1}
    assert client.get("/v1/ping", headers=headers).json() == {"remaining": 0}
    limited = client.get("/v1/ping", headers=headers)
    assert limited.status_code == 429 and limited.headers["retry-after"] == "2"
    assert client.get("/v1/ping", headers={"X-API-Key": "other"}).status_code == 200
    clock.now += 2.0
    assert client.get("/v1/ping", headers=headers).status_code == 200
