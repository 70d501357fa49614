"""Event ingestion through POST /v1/events into SQLite and PostgreSQL: events per second.

python bench/bench_service_ingest.py                    # 200,000 events per store -> service_ingest
python bench/bench_service_ingest.py --events 20000 --results-dir /tmp/r   # smoke run

For each store a fresh home in runs/bench/service/ingest-<store> (for PostgreSQL also a fresh
database, created on postgresql://127.0.0.1:5432/test and dropped afterwards), `recloop serve
--workers 2` (its first start imports MovieLens-100K and trains EASE), a fresh client key, then
--threads client threads (httpx) send --events events with unique ids in batches of --batch.
The bodies are built before the clock starts. events/s = stored events / wall seconds from the
first send to the last acknowledgement; the store's count_events() must grow by exactly the
number sent. Target: >= 5,000 events/s for each store.
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from recloop.benchmark import BenchRecord
from recloop.store.events import EventStore
from service_common import (
    BENCH_RUNS,
    RESULTS_DIR,
    auth,
    cpu_seconds,
    create_key,
    create_pg_database,
    drop_pg_database,
    fresh_dir,
    log,
    pg_available,
    record,
    require_movielens,
    run_stores,
    save_results,
    start_server,
    stop_server,
    store_url,
)

TARGET_EVENTS_PER_S = 5000.0
KINDS = ("view", "click", "rating", "purchase", "like", "dislike", "skip")
N_USERS, N_ITEMS = 943, 1682
COLUMNS = [
    "events_per_s",
    "events_stored",
    "count_growth",
    "errors",
    "batch_p50_ms",
    "batch_p99_ms",
    "server_cpu_cores",
]
DESCRIPTION = (
    "POST /v1/events through `recloop serve --workers 2` (auth, default rate limit and JSON "
    "access log on) on a fresh home: SQLite (WAL, synchronous=FULL) in the home, or a fresh "
    "PostgreSQL database on 127.0.0.1. Client threads (httpx, on the same machine) send "
    "batches of 1,000 events with unique ids, MovieLens-100K users and items, all seven "
    "kinds; bodies are serialised before the clock starts. events/s = events stored / wall "
    "seconds from the first send to the last acknowledgement (answers come after commit); "
    "count_growth = the store's count_events() after - before, which must equal the events "
    "sent. batch_p50/p99 = per-batch round trip. Target: >= 5,000 events/s per store."
)


def make_bodies(n_events: int, batch: int, tag: str) -> list[bytes]:
    """JSON bodies of ``n_events`` events with unique ids, ``batch`` per body."""
    base = 1_700_000_000.0
    bodies = []
    for start in range(0, n_events, batch):
        events: list[dict[str, Any]] = []
        for n in range(start, min(start + batch, n_events)):
            kind = KINDS[n % len(KINDS)]
            event: dict[str, Any] = {
                "event_id": f"ingest-{tag}-{n}",
                "user_id": str(1 + n % N_USERS),
                "item_id": str(1 + (n * 7919) % N_ITEMS),
                "kind": kind,
                "timestamp": base + n * 0.001,
            }
            if kind == "rating":
                event["value"] = float(1 + n % 5)
            events.append(event)
        bodies.append(json.dumps({"events": events}, separators=(",", ":")).encode())
    return bodies


def count_events(url: str) -> int:
    store = EventStore(url)
    try:
        return store.count_events()
    finally:
        store.close()


def send_all(
    base_url: str, key: str, bodies: list[bytes], sizes: list[int], threads: int, timeout: float
) -> dict[str, Any]:
    """Send every body from ``threads`` threads; counts, errors and timings."""
    todo: queue.Queue[int] = queue.Queue()
    for index in range(len(bodies)):
        todo.put(index)
    lock = threading.Lock()
    firsts: list[float] = []
    acks: list[float] = []
    latencies: list[float] = []
    totals = {"stored": 0, "duplicates": 0, "rejected": 0, "errors": 0}
    errors: list[str] = []
    headers = {**auth(key), "Content-Type": "application/json"}

    def worker() -> None:
        with httpx.Client(timeout=timeout) as client:
            while True:
                try:
                    index = todo.get_nowait()
                except queue.Empty:
                    return
                sent = time.monotonic()
                with lock:
                    if not firsts:
                        firsts.append(sent)
                try:
                    answer = client.post(
                        f"{base_url}/v1/events", content=bodies[index], headers=headers
                    )
                    acked = time.monotonic()
                    body = answer.json() if answer.status_code == 200 else None
                except (httpx.HTTPError, ValueError) as exc:
                    acked, body = time.monotonic(), None
                    problem = f"batch {index}: {type(exc).__name__}: {exc}"
                else:
                    problem = f"batch {index}: HTTP {answer.status_code} {answer.text[:200]}"
                with lock:
                    if body is None:
                        totals["errors"] += 1
                        errors.append(problem)
                        continue
                    acks.append(acked)
                    latencies.append(acked - sent)
                    totals["stored"] += int(body["stored"])
                    totals["duplicates"] += int(body["duplicates"])
                    totals["rejected"] += len(body["rejected"])
                    if int(body["stored"]) != sizes[index]:
                        totals["errors"] += 1
                        errors.append(f"batch {index}: stored {body['stored']} of {sizes[index]}")

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for thread in pool:
        thread.start()
    deadline = time.monotonic() + timeout * (len(bodies) + 1)
    for thread in pool:
        thread.join(timeout=max(1.0, deadline - time.monotonic()))
    if any(thread.is_alive() for thread in pool):
        errors.append("client threads still running at the deadline")
        totals["errors"] += 1
    for problem in errors[:10]:
        log(f"error: {problem}")
    wall = (max(acks) - firsts[0]) if acks and firsts else float("nan")
    return {**totals, "wall_s": wall, "latencies": latencies, "error_lines": errors}


def run_store(store: str, args: argparse.Namespace) -> BenchRecord | None:
    """One store's run; None when PostgreSQL is not reachable."""
    db: str | None = None
    if store == "postgresql":
        if not pg_available():
            log("PostgreSQL not reachable: skipping it")
            return None
        db = create_pg_database("recloop_bench_ingest")
    server = None
    try:
        home = fresh_dir(BENCH_RUNS / f"ingest-{store}")
        log(f"{store}: fresh home {home}: first start (imports MovieLens-100K, trains EASE)")
        server = start_server(home, db=db, workers=args.workers, ready_timeout=args.ready_timeout)
        require_movielens(server)
        key = create_key(home, role="client", name="bench-ingest", db=db)
        url = store_url(home, db)
        tag = f"{store}-{int(time.time())}"
        bodies = make_bodies(args.events, args.batch, tag)
        sizes = [
            min(args.batch, args.events - start) for start in range(0, args.events, args.batch)
        ]
        before = count_events(url)
        log(
            f"{store}: {before:,} events stored; sending {args.events:,} in {len(bodies)} "
            f"batches of {args.batch} from {args.threads} threads"
        )
        cpu_before, started = cpu_seconds(server.pid), time.monotonic()
        result = send_all(server.url, key, bodies, sizes, args.threads, args.request_timeout)
        cpu_used, wall_all = cpu_seconds(server.pid) - cpu_before, time.monotonic() - started
        after = count_events(url)
    finally:
        if server is not None:
            stop_server(server)
        if db is not None:
            drop_pg_database(db)
    growth = after - before
    latencies = sorted(result["latencies"]) or [float("nan")]
    rate = result["stored"] / result["wall_s"] if result["wall_s"] > 0 else 0.0
    exact = growth == args.events == result["stored"]
    metrics = {
        "events_per_s": rate,
        "events_sent": float(args.events),
        "events_stored": float(result["stored"]),
        "duplicates": float(result["duplicates"]),
        "rejected": float(result["rejected"]),
        "errors": float(result["errors"]),
        "count_before": float(before),
        "count_growth": float(growth),
        "count_exact": 1.0 if exact else 0.0,
        "seconds": result["wall_s"],
        "batch_p50_ms": 1000 * statistics.median(latencies),
        "batch_p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "server_cpu_cores": cpu_used / wall_all,
        "meets_target": 1.0 if rate >= TARGET_EVENTS_PER_S and exact else 0.0,
    }
    log(
        f"{store}: {rate:,.0f} events/s (target >= {TARGET_EVENTS_PER_S:,.0f}), stored "
        f"{result['stored']:,} of {args.events:,}, count grew by {growth:,} "
        f"({'exact' if exact else 'NOT EXACT'}), errors {result['errors']}, batch p50 "
        f"{metrics['batch_p50_ms']:.0f} ms p99 {metrics['batch_p99_ms']:.0f} ms, server CPU "
        f"{metrics['server_cpu_cores']:.2f} cores"
    )
    config = {
        "store": store,
        "events": args.events,
        "batch": args.batch,
        "threads": args.threads,
        "workers": args.workers,
    }
    return record(f"EventStore {store}", config, metrics)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", default="sqlite,postgresql", help="sqlite and/or postgresql")
    parser.add_argument("--events", type=int, default=200_000, help="events per store")
    parser.add_argument("--batch", type=int, default=1000, help="events per request (<= 10,000)")
    parser.add_argument("--threads", type=int, default=4, help="client threads")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    parser.add_argument("--request-timeout", type=float, default=120.0, help="seconds per batch")
    parser.add_argument("--ready-timeout", type=float, default=1800.0, help="server start limit")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()

    records, failed = run_stores(
        args.stores,
        lambda store: run_store(store, args),
        lambda rec: rec.metrics["count_exact"] >= 1 and rec.metrics["errors"] == 0,
    )
    if records:
        save_results(
            "service_ingest",
            records,
            title="HTTP service: event ingestion",
            command="python bench/bench_service_ingest.py",
            description=DESCRIPTION,
            columns=COLUMNS,
            results_dir=args.results_dir,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
