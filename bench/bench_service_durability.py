"""Durability of acknowledged events: kill -9 the service while a client streams, then count.

python bench/bench_service_durability.py                 # 100 batches x 500, 3 kills -> results
python bench/bench_service_durability.py --batches 20 --results-dir /tmp/r   # smoke run

For each store (a fresh SQLite home in runs/bench/service/durability-<store>; for PostgreSQL
also a fresh database, dropped afterwards): `recloop serve --workers 2`, then one client thread
streams --batches batches of --batch events with unique ids to POST /v1/events (pausing --pace
s after each acknowledgement, so the stream outlasts the kills), resending each batch (same
ids) until it is acknowledged (200 with every event stored or a duplicate; connection errors
and other answers: sleep 0.2 s, resend). --kills times during the stream (--kill-after seconds
after the (re)started server acknowledged its first batch, earlier if the stream would end
first, and while a batch is in flight) the server's whole process group gets SIGKILL and the
server is restarted on the same home and port. Afterwards the store is opened directly and
every acknowledged event id is looked up (EventStore.has_events, all of them, no sampling):
missing and duplicated must both be 0, and count_events() must have grown by exactly the
acknowledged events.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from recloop.benchmark import BenchRecord
from recloop.store.events import EventStore
from service_common import (
    BENCH_RUNS,
    RESULTS_DIR,
    Server,
    auth,
    create_key,
    create_pg_database,
    drop_pg_database,
    fresh_dir,
    kill_server,
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

KINDS = ("view", "click", "rating", "purchase", "like", "dislike", "skip")
COLUMNS = [
    "acked_events",
    "present",
    "missing",
    "duplicated",
    "count_growth",
    "kills",
    "retried_batches",
    "seconds",
]
DESCRIPTION = (
    "A client streams batches of 500 events with unique ids to POST /v1/events of `recloop "
    "serve --workers 2`, resending a batch (same ids) until it is acknowledged and pausing "
    "0.1 s after each acknowledgement so the stream outlasts the kills; 3 times during the "
    "stream, while a batch is in flight, every process of the server gets SIGKILL (kill -9 "
    "of its process group) and the server is restarted on the same home. Then the store is "
    "opened directly and every acknowledged id is counted with EventStore.has_events (no "
    "sampling): missing and duplicated must be 0 and count_growth must equal acked_events. "
    "retried_batches = batches that needed more than one send (idempotent resends after a "
    "kill)."
)


@dataclass
class Stream:
    """What the client thread did, shared with the main thread."""

    acked_ids: list[str] = field(default_factory=list)
    acked_batches: int = 0
    retried_batches: int = 0
    resends: int = 0
    duplicates_on_resend: int = 0
    last_problem: str = ""
    done: bool = False
    failed: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    in_flight: threading.Event = field(default_factory=threading.Event)


def batch_body(tag: str, number: int, size: int) -> tuple[list[str], bytes]:
    ids = [f"durable-{tag}-{number}-{i}" for i in range(size)]
    events = []
    for i, event_id in enumerate(ids):
        n = number * size + i
        event = {
            "event_id": event_id,
            "user_id": str(1 + n % 943),
            "item_id": str(1 + (n * 7919) % 1682),
            "kind": KINDS[n % len(KINDS)],
            "timestamp": 1_700_000_000.0 + n * 0.001,
        }
        events.append(event)
    return ids, json.dumps({"events": events}, separators=(",", ":")).encode()


def stream_events(
    url: str, key: str, tag: str, args: argparse.Namespace, state: Stream, deadline: float
) -> None:
    """Send every batch until acknowledged (the client thread)."""
    headers = {**auth(key), "Content-Type": "application/json"}
    try:
        with httpx.Client(timeout=args.request_timeout) as client:
            for number in range(args.batches):
                ids, body = batch_body(tag, number, args.batch)
                sends = 0
                while True:
                    if state.stop.is_set() or time.monotonic() > deadline:
                        state.failed = f"stopped at batch {number} (deadline or stop)"
                        return
                    sends += 1
                    state.in_flight.set()
                    try:
                        answer = client.post(f"{url}/v1/events", content=body, headers=headers)
                    except httpx.HTTPError as exc:
                        state.in_flight.clear()
                        state.last_problem = f"{type(exc).__name__}"
                        time.sleep(0.2)
                        continue
                    state.in_flight.clear()
                    if answer.status_code == 200:
                        result = answer.json()
                        acked = result["stored"] + result["duplicates"] == len(ids)
                        if acked and not result["rejected"]:
                            break
                        state.last_problem = f"200 but {result}"[:300]
                    else:
                        state.last_problem = f"HTTP {answer.status_code} {answer.text[:200]}"
                    time.sleep(0.2)
                with state.lock:
                    state.acked_ids.extend(ids)
                    state.acked_batches += 1
                    if sends > 1:
                        state.retried_batches += 1
                        state.resends += sends - 1
                        state.duplicates_on_resend += int(result["duplicates"])
                if args.pace > 0:
                    time.sleep(args.pace)
    except Exception as exc:  # the main thread reports it
        state.failed = f"{type(exc).__name__}: {exc}"
    finally:
        state.done = True


def run_store(store: str, args: argparse.Namespace) -> BenchRecord | None:
    db: str | None = None
    if store == "postgresql":
        if not pg_available():
            log("PostgreSQL not reachable: skipping it")
            return None
        db = create_pg_database("recloop_bench_durability")
    server: Server | None = None
    state = Stream()
    kills = 0
    rng = random.Random(0)
    client: threading.Thread | None = None
    try:
        home = fresh_dir(BENCH_RUNS / f"durability-{store}")
        log(f"{store}: fresh home {home}: first start (imports MovieLens-100K, trains EASE)")
        server = start_server(home, db=db, workers=args.workers, ready_timeout=args.ready_timeout)
        require_movielens(server)
        port = server.port
        key = create_key(home, role="client", name="bench-durability", db=db)
        url = store_url(home, db)
        with EventStore(url) as opened:
            before = opened.count_events()
        tag = f"{store}-{int(time.time())}"
        started = time.monotonic()
        deadline = started + args.time_limit
        client = threading.Thread(
            target=stream_events,
            args=(server.url, key, tag, args, state, deadline),
            daemon=True,
        )
        log(f"{store}: streaming {args.batches} batches of {args.batch}; {args.kills} kills")
        client.start()
        acked_at_kill = 0
        for k in range(args.kills):
            # kill once the (re)started server has acknowledged a batch and then either
            # --kill-after seconds passed or the stream reached this kill's share of batches
            target = args.batches * (k + 1) // (args.kills + 1)
            first_ack: float | None = None
            while not state.done and time.monotonic() < deadline:
                if state.acked_batches > acked_at_kill:
                    first_ack = first_ack or time.monotonic()
                    if state.acked_batches >= target:
                        break
                    if time.monotonic() - first_ack >= args.kill_after:
                        break
                time.sleep(0.02)
            if state.done or time.monotonic() >= deadline:
                log(f"{store}: the stream ended before kill {k + 1}")
                break
            # aim at a batch in flight: its transaction may be half done when the kill lands
            in_flight = state.in_flight.wait(timeout=2.0)
            time.sleep(rng.uniform(0.0, 0.03))
            log(
                f"{store}: kill -9 of the server's process group (kill {k + 1}, "
                f"{state.acked_batches} batches acknowledged, a batch in flight: {in_flight})"
            )
            kill_server(server)
            kills += 1
            acked_at_kill = state.acked_batches
            server = start_server(
                home,
                db=db,
                port=port,
                workers=args.workers,
                ready_timeout=args.ready_timeout,
                ready_path="/healthz",
            )
        client.join(timeout=max(1.0, deadline - time.monotonic()))
        seconds = time.monotonic() - started
        if client.is_alive():
            state.stop.set()
            client.join(timeout=args.request_timeout + 5)
        if state.failed:
            log(f"{store}: client: {state.failed} (last problem: {state.last_problem})")
    finally:
        state.stop.set()
        if server is not None:
            stop_server(server)
    try:
        with EventStore(url) as opened:
            counts = opened.has_events(state.acked_ids)
            after = opened.count_events()
    finally:
        if db is not None:
            drop_pg_database(db)
    acked = len(state.acked_ids)
    present = sum(1 for n in counts.values() if n >= 1)
    missing = sum(1 for n in counts.values() if n == 0)
    duplicated = sum(1 for n in counts.values() if n > 1)
    growth = after - before
    complete = not state.failed and state.acked_batches == args.batches and kills == args.kills
    ok = complete and missing == 0 and duplicated == 0 and growth == acked
    metrics = {
        "batches": float(args.batches),
        "batch_size": float(args.batch),
        "acked_batches": float(state.acked_batches),
        "acked_events": float(acked),
        "present": float(present),
        "missing": float(missing),
        "duplicated": float(duplicated),
        "count_growth": float(growth),
        "kills": float(kills),
        "retried_batches": float(state.retried_batches),
        "resends": float(state.resends),
        "duplicates_on_resend": float(state.duplicates_on_resend),
        "seconds": seconds,
        "passed": 1.0 if ok else 0.0,
    }
    log(
        f"{store}: acked {acked:,} events in {state.acked_batches}/{args.batches} batches, "
        f"present {present:,}, missing {missing} (must be 0), duplicated {duplicated} (must be "
        f"0), count grew by {growth:,}, kills {kills}, retried batches {state.retried_batches} "
        f"({state.duplicates_on_resend} events already stored when resent) -> "
        f"{'PASS' if ok else 'FAIL'}"
    )
    config = {
        "store": store,
        "batches": args.batches,
        "batch": args.batch,
        "kills": args.kills,
        "kill_after_s": args.kill_after,
        "pace_s": args.pace,
        "workers": args.workers,
    }
    return record(f"EventStore {store}", config, metrics)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", default="sqlite,postgresql", help="sqlite and/or postgresql")
    parser.add_argument("--batches", type=int, default=100, help="batches the client sends")
    parser.add_argument("--batch", type=int, default=500, help="events per batch")
    parser.add_argument("--kills", type=int, default=3, help="kill -9 + restart cycles")
    parser.add_argument("--kill-after", type=float, default=3.0, help="seconds up before a kill")
    parser.add_argument("--pace", type=float, default=0.1, help="client pause after each ack (s)")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    parser.add_argument("--request-timeout", type=float, default=30.0, help="seconds per send")
    parser.add_argument("--time-limit", type=float, default=1200.0, help="limit of the stream")
    parser.add_argument("--ready-timeout", type=float, default=1800.0, help="server start limit")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()

    records, failed = run_stores(
        args.stores,
        lambda store: run_store(store, args),
        lambda rec: rec.metrics["passed"] >= 1,
    )
    if records:
        save_results(
            "service_durability",
            records,
            title="HTTP service: durability of acknowledged events under kill -9",
            command="python bench/bench_service_durability.py",
            description=DESCRIPTION,
            columns=COLUMNS,
            results_dir=args.results_dir,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
