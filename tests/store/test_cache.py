"""The candidate cache: the in-process LRU, the real local Redis, and invalidation across
processes (a real second Python process for the generation file, pub/sub for Redis)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from recloop.store.cache import (
    Cache,
    CacheError,
    InProcessCache,
    RedisCache,
    mask_url,
    open_cache,
    user_scope,
)


def eventually(check: Callable[[], bool], timeout: float = 2.0) -> bool:
    """Poll ``check`` until it holds or ``timeout`` seconds pass (pub/sub is asynchronous)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


# -- in-process ------------------------------------------------------------------------------


def test_get_set_delete() -> None:
    cache = InProcessCache()
    assert cache.get("k") is None
    cache.set("k", b"v1")
    cache.set("other", b"x")
    assert cache.get("k") == b"v1"
    cache.set("k", b"v2")
    assert cache.get("k") == b"v2"
    cache.delete("k")
    cache.delete("never-set")
    assert cache.get("k") is None and cache.get("other") == b"x"
    cache.invalidate()
    assert cache.get("other") is None and len(cache) == 0
    assert isinstance(cache, Cache)
    cache.close()


def test_ttl_expiry() -> None:
    cache = InProcessCache()
    cache.set("short", b"1", ttl=0.05)
    cache.set("forever", b"2")
    cache.set("long", b"3", ttl=60)
    cache.set("zero", b"4", ttl=0)
    assert cache.get("short") == b"1" and cache.get("zero") is None
    time.sleep(0.1)
    assert cache.get("short") is None
    assert cache.get("forever") == b"2" and cache.get("long") == b"3"


def test_lru_eviction() -> None:
    cache = InProcessCache(max_entries=3)
    for key in "abc":
        cache.set(key, key.encode())
    assert cache.get("a") == b"a"  # now b is the least recently used
    cache.set("d", b"d")
    assert cache.get("b") is None
    assert [cache.get(k) for k in "acd"] == [b"a", b"c", b"d"]
    assert len(cache) == 3
    with pytest.raises(CacheError, match="max_entries"):
        InProcessCache(max_entries=0)


def test_thread_safe_under_concurrent_use(tmp_path: Path) -> None:
    cache = InProcessCache(max_entries=50, generation_file=tmp_path / "gen")
    failures: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(2000):
                key = f"{n}:{i % 80}"
                cache.set(key, b"x")
                value = cache.get(key)
                assert value in (b"x", None)
                if i % 500 == 0:
                    cache.invalidate()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert len(cache) <= 50


def test_generation_file_invalidates_other_instances(tmp_path: Path) -> None:
    gen = tmp_path / "state" / "cache.generation"
    a = InProcessCache(generation_file=gen)
    b = InProcessCache(generation_file=gen)
    a.set("k", b"a")
    b.set("k", b"b")
    a.invalidate()
    assert gen.read_text().strip() == "1"
    assert a.get("k") is None and b.get("k") is None
    # invalidations in quick succession are each seen, even within one mtime tick
    for n in range(2, 6):
        b.set("k", b"b")
        a.set("k", b"a")
        b.invalidate()
        assert a.get("k") is None and b.get("k") is None
        assert gen.read_text().strip() == str(n)
    a.set("k", b"kept")
    assert a.get("k") == b"kept"  # no change, nothing dropped
    assert not [p for p in gen.parent.iterdir() if p.name.endswith(".tmp")]


WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from recloop.store.cache import InProcessCache

    cache = InProcessCache(generation_file=Path(sys.argv[1]))
    print("ready", flush=True)
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "set":
            cache.set(arg, b"from-worker")
            print("ok", flush=True)
        elif cmd == "get":
            print(repr(cache.get(arg)), flush=True)
        elif cmd == "invalidate":
            cache.invalidate()
            print("ok", flush=True)
    """
)


@pytest.fixture()
def worker(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """A second Python process holding its own InProcessCache on a shared generation file."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(tmp_path / "gen")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout
    assert stdout.readline().strip() == "ready"

    def ask(command: str) -> str:
        stdin.write(command + "\n")
        stdin.flush()
        return stdout.readline().strip()

    try:
        yield ask
    finally:
        stdin.close()
        proc.wait(timeout=10)


def test_generation_file_invalidates_another_process(
    tmp_path: Path, worker: Callable[[str], str]
) -> None:
    here = InProcessCache(generation_file=tmp_path / "gen")
    assert worker("set k") == "ok"
    here.set("k", b"here")
    assert worker("get k") == "b'from-worker'"

    here.invalidate()
    assert worker("get k") == "None"

    assert worker("set k") == "ok"
    assert worker("invalidate") == "ok"
    assert here.get("k") is None
    here.set("k", b"again")
    assert here.get("k") == b"again"


# -- Redis -----------------------------------------------------------------------------------


@pytest.fixture()
def raw(redis_url: tuple[str, str]) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url[0])
    yield client
    client.close()


@pytest.fixture()
def caches(redis_url: tuple[str, str]) -> Iterator[Callable[..., RedisCache]]:
    """Opens RedisCaches on the test's namespace and closes them afterwards."""
    url, namespace = redis_url
    opened: list[RedisCache] = []

    def make(local_check_s: float = 0.5) -> RedisCache:
        cache = RedisCache(url, namespace=namespace, local_check_s=local_check_s)
        opened.append(cache)
        return cache

    yield make
    for cache in opened:
        cache.close()


def test_redis_get_set_delete_and_ttl(
    caches: Callable[..., RedisCache], raw: redis.Redis, redis_url: tuple[str, str]
) -> None:
    namespace = redis_url[1]
    cache = caches()
    assert isinstance(cache, Cache)
    assert cache.get("k") is None
    cache.set("k", b"\x00binary\xff")
    assert cache.get("k") == b"\x00binary\xff"
    # every entry expires: the default TTL is an hour
    assert 3_500_000 < raw.pttl(f"{namespace}:0:k") <= 3_600_000
    cache.set("short", b"s", ttl=0.05)
    cache.set("zero", b"z", ttl=0)
    assert cache.get("zero") is None
    assert eventually(lambda: cache.get("short") is None)
    cache.delete("k")
    assert cache.get("k") is None
    assert cache.errors == 0


def test_redis_invalidate_reaches_another_instance_through_pubsub(
    caches: Callable[..., RedisCache], raw: redis.Redis, redis_url: tuple[str, str]
) -> None:
    namespace = redis_url[1]
    writer = caches()
    reader = caches(local_check_s=3600.0)  # only pub/sub can tell it in time
    writer.set("k", b"old")
    assert reader.get("k") == b"old"

    writer.invalidate()
    assert writer.get("k") is None
    assert raw.get(f"{namespace}:generation") == b"1"
    assert eventually(lambda: reader.get("k") is None)

    reader.set("k", b"new")
    assert writer.get("k") == b"new"
    assert raw.exists(f"{namespace}:1:k")
    assert raw.pttl(f"{namespace}:0:k") > 0  # the stale entry just expires


def test_redis_periodic_check_sees_a_missed_invalidation(
    caches: Callable[..., RedisCache], raw: redis.Redis, redis_url: tuple[str, str]
) -> None:
    namespace = redis_url[1]
    polling, deaf = caches(local_check_s=0.1), caches(local_check_s=3600.0)
    polling.set("k", b"old")
    assert polling.get("k") == b"old" and deaf.get("k") == b"old"

    raw.incr(f"{namespace}:generation")  # an invalidation whose message was lost
    assert eventually(lambda: polling.get("k") is None)
    assert deaf.get("k") == b"old"  # within its local_check_s, no message: the old generation


def test_redis_listener_survives_a_dropped_connection(
    redis_url: tuple[str, str], raw: redis.Redis
) -> None:
    url, namespace = redis_url
    name = f"{namespace}-reader"
    writer = RedisCache(url, namespace=namespace)
    reader = RedisCache(f"{url}?client_name={name}", namespace=namespace, local_check_s=3600.0)
    try:
        subscribed = [c for c in raw.client_list() if c["name"] == name and c["sub"] != "0"]
        assert len(subscribed) == 1
        raw.client_kill_filter(_id=subscribed[0]["id"])

        writer.invalidate()  # possibly sent while the reader is disconnected
        assert eventually(lambda: reader.get("k") is None)
        assert eventually(
            lambda: any(c["name"] == name and c["sub"] != "0" for c in raw.client_list())
        )
        writer.set("k", b"v")
        assert reader.get("k") == b"v"
        writer.invalidate()
        assert eventually(lambda: reader.get("k") is None)  # resubscribed
    finally:
        writer.close()
        reader.close()


def test_redis_failures_are_misses_not_exceptions(
    caches: Callable[..., RedisCache], raw: redis.Redis, redis_url: tuple[str, str]
) -> None:
    namespace = redis_url[1]
    cache = caches()
    raw.hset(f"{namespace}:0:hash", "field", "1")  # GET on a hash: a real WRONGTYPE error
    assert cache.get("hash") is None
    assert cache.errors == 1
    cache.set("k", b"v")
    assert cache.get("k") == b"v" and cache.errors == 1


def test_unreachable_redis_is_a_one_line_error_with_the_password_masked() -> None:
    with pytest.raises(CacheError) as info:
        RedisCache("redis://user:s3cret@127.0.0.1:1/0")
    message = str(info.value)
    assert "redis://user:***@127.0.0.1:1/0" in message
    assert "s3cret" not in message and "\n" not in message
    with pytest.raises(CacheError, match=r"127\.0\.0\.1:1"):
        open_cache("redis://127.0.0.1:1")


def test_mask_url() -> None:
    assert mask_url("redis://:pw@host:6379/0") == "redis://:***@host:6379/0"
    assert mask_url("rediss://me:pw@host/1") == "rediss://me:***@host/1"
    assert mask_url("redis://host:6379") == "redis://host:6379"


def test_open_cache_dispatch(tmp_path: Path, redis_url: tuple[str, str]) -> None:
    url, namespace = redis_url
    assert isinstance(open_cache(None), InProcessCache)
    memory = open_cache("memory", generation_file=tmp_path / "gen")
    assert isinstance(memory, InProcessCache) and memory.generation_file == tmp_path / "gen"
    shared = open_cache(url, namespace=namespace)
    try:
        assert isinstance(shared, RedisCache) and shared.namespace == namespace
        shared.set("k", b"v")
        assert shared.get("k") == b"v"
    finally:
        shared.close()
    for bad in ("memcached://localhost", "/tmp/cache", "redis"):
        with pytest.raises(CacheError, match="unknown cache URL"):
            open_cache(bad)
    with pytest.raises(CacheError, match=r"'http://u:\*\*\*@h/'"):
        open_cache("http://u:pw@h/")


def test_a_value_computed_before_an_invalidation_is_not_stored(tmp_path: Path) -> None:
    """The race the token closes: read, (someone invalidates), store the stale result."""
    generation = tmp_path / "generation"
    here = InProcessCache(generation_file=generation)
    other = InProcessCache(generation_file=generation)
    token = here.token()
    here.set("fresh", b"1", token=token)
    assert here.get("fresh") == b"1"
    token = here.token()
    other.invalidate()  # another worker changed the data meanwhile
    here.set("stale", b"old", token=token)
    assert here.get("stale") is None
    token = here.token()
    here.invalidate()  # the same worker, another thread
    here.set("stale", b"old", token=token)
    assert here.get("stale") is None
    here.set("untokened", b"x")
    assert here.get("untokened") == b"x"


def test_redis_value_computed_before_an_invalidation_is_not_read(
    caches: Callable[..., RedisCache],
) -> None:
    here, other = caches(), caches()
    token = here.token()
    other.invalidate()
    here.set("stale", b"old", token=token)
    assert eventually(lambda: here.token() != token)
    assert here.get("stale") is None
    token = here.token()
    here.set("fresh", b"new", token=token)
    assert here.get("fresh") == b"new"


def test_redis_forget_purges_a_scope_and_refuses_its_later_writes(
    caches: Callable[..., RedisCache], raw: redis.Redis, redis_url: tuple[str, str]
) -> None:
    namespace = redis_url[1]
    mine, other = caches(local_check_s=0.0), caches(local_check_s=0.0)  # two workers
    gone, kept = user_scope("u1"), user_scope("u2")
    mine.set(f"cand{gone}5", b"a")
    mine.invalidate()  # an older generation holds the user too
    mine.set(f"cand{gone}5", b"b")
    other.set(f"consent{gone}", b"110")
    other.set(f"cand{kept}5", b"c")
    other.set("popular:10", b"d")
    token = other.token()
    assert mine.forget(gone) == 3
    # the rest of the cache stays warm: no new generation
    assert other.token() == token and other.get(f"cand{kept}5") == b"c"
    assert other.get("popular:10") == b"d"
    # a request that read the user's data before the erasure cannot store it afterwards,
    # in any worker and whatever generation it holds
    other.set(f"cand{gone}5", b"late", token=token)
    mine.set(f"explanation:x{gone}", b"late")
    names = [n.decode() for n in raw.scan_iter(match=f"{namespace}:*")]
    assert not [n for n in names if gone in n], names
    # other users' writes go on as before, and the marker does not carry the scope itself
    other.set(f"cand{kept}7", b"e")
    assert other.get(f"cand{kept}7") == b"e"
    assert any(n.startswith(f"{namespace}:forgotten:") for n in names)
    with pytest.raises(ValueError, match="not a user scope"):
        mine.forget("u1")


def test_in_process_forget_purges_and_invalidates(tmp_path: Path) -> None:
    cache = InProcessCache(generation_file=tmp_path / "generation")
    peer = InProcessCache(generation_file=tmp_path / "generation")
    scope = user_scope("u1")
    cache.set(f"cand{scope}", b"a")
    token = peer.token()
    peer.set(f"cand{user_scope('u2')}", b"b")
    assert cache.forget(scope) == 1
    assert cache.get(f"cand{scope}") is None
    # the other process drops everything and cannot store what it computed before
    assert peer.get(f"cand{user_scope('u2')}") is None
    peer.set(f"cand{scope}", b"late", token=token)
    assert peer.get(f"cand{scope}") is None


def test_overwrite_beats_a_reader_that_read_before_the_change(tmp_path: Path) -> None:
    """The consent pattern: a reader misses, reads the old source; the writer changes the
    source and overwrites; the reader's late ``if_absent`` write must not win."""
    cache = InProcessCache()
    cache.set("other", b"warm")
    token = cache.token()  # the reader, about to read the old value
    cache.overwrite("consent", b"new", ttl=60)  # the writer
    cache.set("consent", b"old", ttl=60, token=token, if_absent=True)  # the late reader
    assert cache.get("consent") == b"new" and cache.get("other") == b"warm"
    # an expired value does not block a reader
    cache.set("short", b"x", ttl=0.01)
    time.sleep(0.02)
    cache.set("short", b"y", if_absent=True)
    assert cache.get("short") == b"y"
    # processes sharing a generation file cannot be reached per key: they are invalidated
    shared = InProcessCache(generation_file=tmp_path / "generation")
    peer = InProcessCache(generation_file=tmp_path / "generation")
    peer.set("consent", b"old")
    shared.overwrite("consent", b"new")
    assert peer.get("consent") is None and shared.get("consent") == b"new"


def test_redis_overwrite_keeps_the_cache_warm_and_beats_a_late_reader(
    caches: Callable[..., RedisCache],
) -> None:
    writer, reader = caches(), caches()
    scope = user_scope("u1")
    reader.set("popular:10", b"warm")
    reader.set(f"consent{scope}", b"111")
    token = reader.token()
    writer.overwrite(f"consent{scope}", b"011", ttl=60)
    assert reader.get(f"consent{scope}") == b"011"  # every worker sees it at once
    reader.set(f"consent{scope}", b"111", ttl=60, token=token, if_absent=True)
    assert reader.get(f"consent{scope}") == b"011" and reader.token() == token
    assert reader.get("popular:10") == b"warm"  # nothing else was dropped
    reader.set("plain", b"a")
    reader.set("plain", b"b", if_absent=True)  # unscoped keys: SET NX too
    assert reader.get("plain") == b"a"
    writer.forget(scope)  # an erased user's consent is not written back
    writer.overwrite(f"consent{scope}", b"000")
    assert reader.get(f"consent{scope}") is None
