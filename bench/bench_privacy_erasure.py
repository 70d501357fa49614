"""Erasure under load: time from `DELETE /v1/users/{id}` to a complete purge of store and caches.

    python bench/bench_privacy_erasure.py                    # PostgreSQL + Redis, 2 workers
    python bench/bench_privacy_erasure.py --erasures 10 --duration 40

`recloop serve` on MovieLens-100K (EASE) with the production stores (PostgreSQL and Redis,
two uvicorn workers), under recommendation load from wrk (bench/wrk/recommendations.lua, 32
connections). While wrk runs, the script erases MovieLens users one at a time, each after
asking for their recommendations (so their candidate lists sit in Redis). The service stamps
``completed_at`` once store and caches are purged, so ``completed_at`` minus the moment the
request left is the time to a complete purge (both clocks are this machine's); the answer
comes after it. After each answer the script checks, from outside the service, that the
user's events and slates are gone from PostgreSQL, that no Redis key (any generation) carries
the user, and that a replayed event is refused. The same erasures without load give the baseline.
Writes bench/results/privacy_erasure.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import httpx
import sqlalchemy as sa

from recloop.benchmark import write_results
from recloop.store.cache import user_scope
from service_common import (
    BENCH_RUNS,
    ROOT,
    auth,
    create_key,
    create_pg_database,
    drop_pg_database,
    fresh_dir,
    log,
    parse_wrk,
    record,
    require_movielens,
    start_server,
    stop_server,
    warm_workers,
    wrk_command,
)

REDIS_URL = "redis://127.0.0.1:6379/0"
SCRIPT = ROOT / "bench" / "wrk" / "recommendations.lua"
COMMAND = "python bench/bench_privacy_erasure.py"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def leftovers(db: str, redis_client: Any, namespace: str, user: str) -> dict[str, int]:
    """What is left of ``user`` in PostgreSQL and Redis, looked at from outside the service."""
    engine = sa.create_engine(db.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            events = conn.execute(
                sa.text("SELECT count(*) FROM events WHERE user_id = :u"), {"u": user}
            ).scalar_one()
            slates = conn.execute(
                sa.text("SELECT count(*) FROM slates WHERE user_id = :u"), {"u": user}
            ).scalar_one()
    finally:
        engine.dispose()
    marker = user_scope(user).encode()
    keys = sum(1 for name in redis_client.scan_iter(match=f"{namespace}:*") if marker in name)
    return {"events": int(events), "slates": int(slates), "redis_keys": keys}


def erase_users(
    server_url: str,
    admin: str,
    client_key: str,
    users: list[str],
    db: str,
    redis_client: Any,
    namespace: str,
) -> tuple[list[float], list[float], int, list[dict[str, float]]]:
    """Erase each user after warming their cache entries; (seconds from request to complete
    purge, seconds from request to answer, failures, the service's step timings)."""
    purged: list[float] = []
    seconds: list[float] = []
    steps: list[dict[str, float]] = []
    failures = 0
    with httpx.Client(base_url=server_url, timeout=30.0) as http:
        for user in users:
            http.get(f"/v1/users/{user}/recommendations", headers=auth(client_key))
            sent_at = time.time()
            started = time.perf_counter()
            answer = http.delete(f"/v1/users/{user}", headers=auth(admin))
            elapsed = time.perf_counter() - started
            if answer.status_code != 200:
                raise RuntimeError(f"erasing {user}: {answer.status_code} {answer.text}")
            timing = answer.json().get("steps_ms", {})
            handler_ms = sum(timing.values())
            # the service stamps completed_at once store and caches are purged; this script
            # runs on the same machine, so both clocks are one
            completed_at = float(answer.json()["completed_at"])
            purged.append(completed_at - sent_at)
            timing["before_handler"] = 1000 * (completed_at - sent_at) - handler_ms
            timing["after_handler"] = 1000 * elapsed - handler_ms - timing["before_handler"]
            steps.append(timing)
            log(f"{user}: purged in {1000 * purged[-1]:.0f} ms, answered in {1000 * elapsed:.0f}")
            left = leftovers(db, redis_client, namespace, user)
            replay = [
                {"event_id": f"replay-{user}", "user_id": user, "item_id": "1", "kind": "click"}
            ]
            refused = http.post("/v1/events", json={"events": replay}, headers=auth(client_key))
            if any(left.values()) or refused.json().get("refused_erased") != 1:
                failures += 1
                log(f"{user}: left over {left}, replay answer {refused.text}")
            seconds.append(elapsed)
            time.sleep(0.5)
    return purged, seconds, failures, steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--erasures", type=int, default=20, help="users erased per phase")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of wrk load")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    import redis

    db = create_pg_database("recloop_erasure")
    namespace = f"bench-erasure-{os.getpid()}"
    redis_client = redis.Redis.from_url(REDIS_URL)
    home = fresh_dir(BENCH_RUNS / "erasure")
    env = {"RECLOOP_CACHE_URL": REDIS_URL, "RECLOOP_CACHE_NAMESPACE": namespace}
    server = start_server(home, db=db, workers=args.workers, model="EASE", env=env)
    records = []
    try:
        require_movielens(server)
        assert server.admin_key is not None
        admin = server.admin_key
        client_key = create_key(home, role="client", db=db)
        warm_workers(server, client_key)
        quiet_users = [str(u) for u in range(1, args.erasures + 1)]
        loaded_users = [str(u) for u in range(501, 501 + args.erasures)]

        log(f"{args.erasures} erasures without load")
        quiet_purged, quiet, quiet_failures, quiet_steps = erase_users(
            server.url, admin, client_key, quiet_users, db, redis_client, namespace
        )

        log(f"{args.erasures} erasures under wrk load ({args.duration:g} s)")
        cmd = wrk_command(
            server.url,
            SCRIPT,
            threads=1,
            connections=args.connections,
            duration=args.duration,
        )
        wrk = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "RECLOOP_KEY": client_key},
        )
        time.sleep(3.0)
        loaded_purged, loaded, loaded_failures, loaded_steps = erase_users(
            server.url, admin, client_key, loaded_users, db, redis_client, namespace
        )
        out, err = wrk.communicate(timeout=args.duration + 60)
        if wrk.returncode != 0:
            raise RuntimeError(f"wrk failed: {err}")
        load = parse_wrk(out)
        for phase, purge, values, failures, steps in (
            ("idle", quiet_purged, quiet, quiet_failures, quiet_steps),
            ("under-load", loaded_purged, loaded, loaded_failures, loaded_steps),
        ):
            metrics = {
                "erasures": float(len(values)),
                "purge_p50_ms": 1000 * statistics.median(purge),
                "purge_p95_ms": 1000 * percentile(purge, 0.95),
                "purge_max_ms": 1000 * max(purge),
                "answer_p50_ms": 1000 * statistics.median(values),
                "answer_p95_ms": 1000 * percentile(values, 0.95),
                "incomplete_purges": float(failures),
            }
            for step in sorted({name for timing in steps for name in timing}):
                metrics[f"step_{step}_p50_ms"] = statistics.median(
                    timing.get(step, 0.0) for timing in steps
                )
            if phase == "under-load":
                metrics["load_requests_per_s"] = float(load["requests_per_s"])
                metrics["load_p99_ms"] = float(load.get("latency_p99_ms", float("nan")))
                metrics["load_non_2xx"] = float(load.get("non_2xx", 0))
            config = {
                "phase": phase,
                "stores": "postgresql+redis",
                "workers": args.workers,
                "wrk": f"-t1 -c{args.connections} -d{args.duration:g}s" if phase != "idle" else "",
            }
            records.append(record("EASE", config, metrics))
            log(f"{phase}: {metrics}")
    finally:
        stop_server(server)
        for name in redis_client.scan_iter(match=f"{namespace}:*"):
            redis_client.delete(name)
        drop_pg_database(db)
    write_results(
        "privacy_erasure",
        records,
        title="Erasure under load",
        command=COMMAND,
        description=(
            "recloop serve on MovieLens-100K (EASE, 2 uvicorn workers, PostgreSQL event store, "
            "Redis cache) on this 2-core machine. Each erasure: GET the user's recommendations "
            "(their candidates go to Redis), then DELETE /v1/users/{id}. The service deletes "
            "the stored data in one transaction (events, profile, consent, ownership, slates, "
            "tombstone), then forgets the user in the cache (a marker that refuses later "
            "writes of the user's keys, then a Redis scan over every generation; the rest of "
            "the cache stays warm), then stamps completed_at and answers. purge_*: from the "
            "request leaving this script to completed_at (same machine, same clock): the time "
            "to a complete purge; answer_*: from request to answer (under load the answer "
            "waits its turn on the worker's event loop). step_*_p50_ms: the service's own "
            "timing of each step (steps_ms in the answer), before_handler/after_handler the "
            "time spent queued before and after it. After each answer the script checks from "
            "outside the service that PostgreSQL holds no event or slate of the user, that no "
            "Redis key carries the user's scope, and that a replayed event is refused "
            "(incomplete_purges counts failures). `idle`: no other traffic; `under-load`: "
            "while wrk drives recommendation requests (32 connections), whose throughput and "
            "p99 during the erasures are reported too."
        ),
        columns=[
            "purge_p50_ms",
            "purge_p95_ms",
            "purge_max_ms",
            "answer_p50_ms",
            "answer_p95_ms",
            "incomplete_purges",
            "load_requests_per_s",
            "load_p99_ms",
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
