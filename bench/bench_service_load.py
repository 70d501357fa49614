"""Recommendation load on the HTTP service (wrk): EASE and SASRec, then a hot model swap.

python bench/bench_service_load.py      # 60 s per model + 30 s swap -> results/service_load.json
python bench/bench_service_load.py --duration 5 --swap-duration 9 --results-dir /tmp/r  # smoke

Per model: a home in runs/bench/service/<model> (reused when it already has an active version of
that model; else filled by a first `recloop serve`, which imports MovieLens-100K and trains EASE;
SASRec is then trained for --sasrec-epochs epochs with its tuned ml-100k architecture and
activated), `recloop serve --workers 2` with auth, the default rate limit and JSON logs on and
no response cache, a short warm-up, then `wrk -t1 -c32 -d60s --latency -s
bench/wrk/recommendations.lua` with a fresh client key (warm-up: bursts of requests until
every worker answers 200, then a --warmup seconds wrk run). Reported: requests/s, latency
percentiles (p95 and p99.9 from the Lua script's done()), errors (non-200 answers + socket
errors) and the server's CPU (CPU seconds of its process tree / wall seconds). Hot swap: during
one more wrk run of --swap-duration seconds the admin key activates another registered version
at 1/3 of the run and the original one at 2/3; errors must stay 0 and both versions must show
up in the answers. Needs RECLOOP_DATA pointing at MovieLens-100K for a first start.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from recloop.benchmark import BenchRecord
from recloop.store.artifacts import ArtifactRegistry
from service_common import (
    BENCH_RUNS,
    RESULTS_DIR,
    ROOT,
    Server,
    auth,
    cpu_seconds,
    create_key,
    log,
    parse_wrk,
    record,
    require_movielens,
    run_recloop,
    save_results,
    start_server,
    stop_server,
    warm_workers,
    wrk_command,
)

SCRIPT = ROOT / "bench" / "wrk" / "recommendations.lua"
SASREC_CONFIG = ROOT / "configs" / "ml-100k" / "loo" / "SASRec.toml"
TARGET_RPS = 500.0
TARGET_P99_MS = 50.0
COLUMNS = [
    "requests_per_s",
    "latency_p50_ms",
    "latency_p90_ms",
    "latency_p95_ms",
    "latency_p99_ms",
    "errors",
    "server_cpu_cores",
    "versions_seen",
]
DESCRIPTION = (
    "GET /v1/users/{id}/recommendations?n=10 through `recloop serve --workers 2` on SQLite, "
    "driven by `wrk -t1 -c32 --latency -s bench/wrk/recommendations.lua` from the same "
    "machine: all 943 MovieLens-100K users in a fixed order with an unknown user after every "
    "9th (about 10 % cold requests). API-key auth, the default rate limit (5000 requests/s "
    "per key and worker) and the JSON access log are on; no response is cached. Each model "
    "runs twice: with the per-user candidate cache off (every request reads the history and "
    "runs the model) and on (the default: the model's top 100 for a user are cached until "
    "their history or the model changes; a 60 s run asks for each user about 50 times). "
    "Percentiles are wrk's (p95 and p99.9 from its latency histogram in the Lua done()); "
    "errors = non-200 answers + socket errors; server CPU = CPU seconds of the server's "
    "process tree / wall seconds (cores busy). SASRec weights come from a short training "
    "(latency does not depend on training length). The hot-swap row activates another "
    "registered version at 1/3 of the run and the original at 2/3 (POST "
    "/v1/models/{v}/activate): versions_seen counts the versions the 200 answers carried. "
    "Targets: >= 500 requests/s, p99 <= 50 ms, 0 errors."
)


def _versions(home: Path) -> tuple[ArtifactRegistry, str | None, list[Any]]:
    registry = ArtifactRegistry(home / "models")
    return registry, registry.active(), registry.versions()


def prepare_home(model: str, args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """``runs/bench/service/<model>`` with an active version of ``model``; what was done."""
    home = (BENCH_RUNS / model).resolve()
    notes: dict[str, Any] = {}
    registry, active, versions = _versions(home) if home.exists() else (None, None, [])
    if active is not None and registry is not None and registry.info(active).model == model:
        log(f"{model}: reusing {home} (active {active})")
        notes["home"] = "reused"
        return home, notes
    if active is None:
        log(f"{model}: first start in {home} (imports MovieLens-100K, trains EASE)")
        server = start_server(
            home, workers=args.workers, model="EASE", ready_timeout=args.ready_timeout
        )
        try:
            require_movielens(server)
        finally:
            stop_server(server)
        registry, active, versions = _versions(home)
        notes["home"] = "fresh"
    mine = [v for v in versions if v.model == model]
    if mine:
        if active != mine[-1].version:
            run_recloop(["model", "activate", mine[-1].version, "--home", str(home)])
            log(f"{model}: activated {mine[-1].version}")
        return home, notes
    train = ["model", "train", model, "--home", str(home)]
    if model == "SASRec":
        train += ["--max-epochs", str(args.sasrec_epochs)]
        if SASREC_CONFIG.is_file():
            train += ["--config", str(SASREC_CONFIG)]
    log(f"{model}: training ({' '.join(train[2:])})")
    started = time.monotonic()
    out = run_recloop(train, timeout=args.train_timeout)
    notes["train_seconds"] = round(time.monotonic() - started, 1)
    log(f"{model}: {out.strip().splitlines()[-1]} in {notes['train_seconds']} s")
    return home, notes


def run_wrk(
    server: Server, key: str, duration: float, args: argparse.Namespace, *, quiet: bool = False
) -> tuple[dict[str, Any], str]:
    """One wrk run against the server; parsed numbers plus server and client CPU."""
    cmd = wrk_command(
        server.url, SCRIPT, threads=args.threads, connections=args.connections, duration=duration
    )
    env = {**os.environ, "RECLOOP_KEY": key}
    before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_before = cpu_seconds(server.pid)
    started = time.monotonic()
    done = subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=duration + 120, check=False
    )
    wall = time.monotonic() - started
    cpu_after = cpu_seconds(server.pid)
    after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    if not quiet:
        print(done.stdout, file=sys.stderr)
    result = parse_wrk(done.stdout)
    client_cpu = (after_children.ru_utime + after_children.ru_stime) - (
        before_children.ru_utime + before_children.ru_stime
    )
    result["server_cpu_seconds"] = cpu_after - cpu_before
    result["server_cpu_cores"] = (cpu_after - cpu_before) / wall
    result["client_cpu_cores"] = client_cpu / wall
    result["wall_s"] = wall
    return result, done.stdout


def summarize(result: dict[str, Any]) -> dict[str, float]:
    """The metrics of one wrk run as a record wants them."""
    errors = max(result.get("non200", 0.0), result["non_2xx"]) + result["socket_errors"]
    versions = {k: v for k, v in result.items() if k.startswith("version_")}
    metrics = {
        "requests_per_s": result["requests_per_s"],
        "requests": result.get("requests", 0.0),
        "seconds": result.get("seconds", 0.0),
        "latency_p50_ms": result["latency_p50_ms"],
        "latency_p75_ms": result["latency_p75_ms"],
        "latency_p90_ms": result["latency_p90_ms"],
        "latency_p95_ms": result["lua_p95_ms"],
        "latency_p99_ms": result["latency_p99_ms"],
        "latency_p99_9_ms": result["lua_p99_9_ms"],
        "latency_max_ms": result["lua_max_ms"],
        "errors": errors,
        "non_2xx": result["non_2xx"],
        "non_200": result.get("non200", 0.0),
        "rate_limited_429": result.get("status_429", 0.0),
        "socket_errors": result["socket_errors"],
        "server_cpu_seconds": result["server_cpu_seconds"],
        "server_cpu_cores": result["server_cpu_cores"],
        "client_cpu_cores": result["client_cpu_cores"],
        "versions_seen": float(len(versions)),
    }
    met = (
        metrics["requests_per_s"] >= TARGET_RPS
        and metrics["latency_p99_ms"] <= TARGET_P99_MS
        and errors == 0
    )
    metrics["meets_targets"] = 1.0 if met else 0.0
    return metrics


def report(label: str, metrics: dict[str, float]) -> None:
    log(
        f"{label}: {metrics['requests_per_s']:.1f} req/s (target >= {TARGET_RPS:.0f}), "
        f"p50 {metrics['latency_p50_ms']:.1f} ms, p95 {metrics['latency_p95_ms']:.1f} ms, "
        f"p99 {metrics['latency_p99_ms']:.1f} ms (target <= {TARGET_P99_MS:.0f}), "
        f"errors {metrics['errors']:.0f} (target 0), server CPU "
        f"{metrics['server_cpu_cores']:.2f} cores, wrk CPU {metrics['client_cpu_cores']:.2f} "
        f"cores -> {'meets' if metrics['meets_targets'] else 'MISSES'} the targets"
    )


def models_answer(server: Server, admin: str) -> dict[str, Any]:
    answer = httpx.get(f"{server.url}/v1/models", headers=auth(admin), timeout=30)
    answer.raise_for_status()
    body: dict[str, Any] = answer.json()
    return body


def hot_swap(
    server: Server, key: str, admin: str, args: argparse.Namespace
) -> tuple[dict[str, float], dict[str, Any]]:
    """A wrk run during which another version is activated at 1/3 and the original at 2/3."""
    listing = models_answer(server, admin)
    original = listing["active"]
    others = [v for v in listing["versions"] if v["version"] != original]
    if not others:
        raise RuntimeError(f"{server.home}: only one registered version, nothing to swap to")
    kinds = {v["version"]: v["model"] for v in listing["versions"]}
    other = next((v for v in reversed(others) if v["model"] != kinds[original]), others[-1])
    other_version = other["version"]
    swaps: list[dict[str, Any]] = []
    duration = args.swap_duration
    stop = threading.Event()

    def activate_at(delay: float, version: str, t0: float) -> None:
        if stop.wait(max(0.0, t0 + delay - time.monotonic())):
            return
        began = time.monotonic()
        try:
            answer = httpx.post(
                f"{server.url}/v1/models/{version}/activate", headers=auth(admin), timeout=60
            )
            status, said = answer.status_code, answer.text[:200]
        except httpx.HTTPError as exc:
            status, said = 0, f"{type(exc).__name__}: {exc}"
        took = time.monotonic() - began
        swaps.append(
            {"at_s": round(began - t0, 2), "version": version, "status": status, "took_s": took}
        )
        log(f"hot swap: activate {version} at t={began - t0:.1f} s -> {status} ({took:.2f} s)")
        if status != 200:
            log(f"hot swap: activation answer: {said}")

    t0 = time.monotonic()
    timers = [
        threading.Thread(target=activate_at, args=(duration / 3, other_version, t0), daemon=True),
        threading.Thread(target=activate_at, args=(2 * duration / 3, original, t0), daemon=True),
    ]
    for timer in timers:
        timer.start()
    try:
        result, _ = run_wrk(server, key, duration, args)
    finally:
        stop.set()
        for timer in timers:
            timer.join(timeout=90)
    metrics = summarize(result)
    seen = {k[len("version_") :]: int(v) for k, v in result.items() if k.startswith("version_")}
    final = models_answer(server, admin)["active"]
    activations_ok = len(swaps) == 2 and all(s["status"] == 200 for s in swaps)
    failures = sum(1 for s in swaps if s["status"] != 200) + 2 - len(swaps)
    metrics["activation_failures"] = float(failures)
    metrics["activation_max_s"] = max((s["took_s"] for s in swaps), default=0.0)
    config = {
        "label": f"{kinds[original]}<->{kinds[other_version]} hot swap",
        "swap": f"{original}->{other_version} at {duration / 3:.0f} s, back at "
        f"{2 * duration / 3:.0f} s",
        "versions_seen": seen,
        "versions": {original: kinds[original], other_version: kinds[other_version]},
        "swap_log": [{k: v for k, v in s.items() if k != "took_s"} for s in swaps],
        "active_after": final,
    }
    log(
        f"hot swap: versions seen {seen}, errors {metrics['errors']:.0f}, activations "
        f"{'ok' if activations_ok else 'FAILED'}, active afterwards {final} "
        f"({'restored' if final == original else 'NOT restored'})"
    )
    return metrics, config


def wrk_config(args: argparse.Namespace, duration: float) -> dict[str, Any]:
    """What varies between runs (auth, rate limit, logs, store: see DESCRIPTION)."""
    return {
        "workers": args.workers,
        "wrk": f"-t{args.threads} -c{args.connections} -d{duration:g}s",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="EASE,SASRec", help="comma-separated model names")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of each wrk run")
    parser.add_argument("--swap-duration", type=float, default=30.0, help="seconds of the swap run")
    parser.add_argument("--no-swap", action="store_true", help="skip the hot-swap run")
    parser.add_argument("--warmup", type=float, default=5.0, help="unreported warm-up seconds")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    parser.add_argument("--sasrec-epochs", type=int, default=3, help="SASRec training epochs")
    parser.add_argument("--ready-timeout", type=float, default=1800.0, help="server start limit")
    parser.add_argument("--train-timeout", type=float, default=3600.0, help="training limit")
    parser.add_argument(
        "--candidate-cache",
        choices=["on", "off", "both"],
        default="both",
        help="the service's per-user candidate cache during the runs (both: one run each)",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    records: list[BenchRecord] = []
    failed = False
    caches = {"on": [True], "off": [False], "both": [False, True]}[args.candidate_cache]
    runs = [(model, cached) for model in models for cached in caches]
    for model, cached in runs:
        home, notes = prepare_home(model, args)
        env = {"RECLOOP_CANDIDATE_CACHE": "true" if cached else "false"}
        server = start_server(home, workers=args.workers, ready_timeout=args.ready_timeout, env=env)
        label = f"{model}, candidate cache {'on' if cached else 'off'}"
        try:
            key = create_key(home, role="client", name="bench-load")
            admin = create_key(home, role="admin", name="bench-load-admin")
            version = models_answer(server, admin)["active"]
            warm_bad = warm_workers(server, key)
            if args.warmup > 0:
                log(f"{model}: warm-up {args.warmup:g} s")
                run_wrk(server, key, args.warmup, args, quiet=True)
            log(f"{model} ({version}): wrk {args.duration:g} s")
            result, _ = run_wrk(server, key, args.duration, args)
            metrics = summarize(result)
            metrics["warmup_non_200"] = float(warm_bad)
            report(label, metrics)
            failed |= metrics["errors"] > 0
            config = {
                **wrk_config(args, args.duration),
                "model_version": version,
                "candidate_cache": cached,
            }
            if "train_seconds" in notes:
                config["train_seconds"] = notes["train_seconds"]
            if model == "SASRec":
                config["weights"] = f"{args.sasrec_epochs} epochs (latency only)"
            records.append(record(label, config, metrics))
            if not args.no_swap and (model, cached) == runs[-1]:
                listing = models_answer(server, admin)
                if len(listing["versions"]) < 2:
                    log(f"{model}: one version only; registering another {model} (not activated)")
                    run_recloop(
                        ["model", "train", model, "--no-activate", "--home", str(home)]
                        + (["--max-epochs", str(args.sasrec_epochs)] if model == "SASRec" else []),
                        timeout=args.train_timeout,
                    )
                log(f"{model}: hot swap during a {args.swap_duration:g} s wrk run")
                swap_metrics, swap_config = hot_swap(server, key, admin, args)
                report(f"{model} hot swap", swap_metrics)
                failed |= swap_metrics["errors"] > 0 or swap_metrics["activation_failures"] > 0
                failed |= swap_metrics["versions_seen"] < 2
                records.append(
                    record(
                        swap_config.pop("label"),
                        {**wrk_config(args, args.swap_duration), **swap_config},
                        swap_metrics,
                    )
                )
        finally:
            stop_server(server)
    save_results(
        "service_load",
        records,
        title="HTTP service: recommendation load",
        command="python bench/bench_service_load.py",
        description=DESCRIPTION,
        columns=COLUMNS,
        results_dir=args.results_dir,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
