"""Shared helpers of the bench_service_*.py scripts (import it; it has no command line).

from service_common import start_server, stop_server, cpu_seconds, parse_wrk, save_results

Starts and stops ``recloop serve`` subprocesses (own process group, logs to a file, readiness
by ``/readyz``), creates API keys with ``recloop keys create``, reads the CPU seconds of a server
process tree from /proc, parses ``wrk --latency`` output and writes benchmark records.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from recloop.benchmark import BenchRecord, make_record, write_results

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
BENCH_RUNS = ROOT / "runs" / "bench" / "service"
HOST = "127.0.0.1"
PG_ADMIN_URL = "postgresql://127.0.0.1:5432/test"
PG_BASE = "postgresql://127.0.0.1:5432"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    """A progress line on stderr, with the wall-clock time."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def recloop_exe() -> str:
    """The ``recloop`` script next to this Python (the project's virtualenv)."""
    here = Path(sys.executable).parent / "recloop"
    if here.exists():
        return str(here)
    venv = ROOT / ".venv" / "bin" / "recloop"
    if venv.exists():
        return str(venv)
    found = shutil.which("recloop")
    if found is None:
        raise RuntimeError("no `recloop` executable: install the project (pip install -e .)")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def fresh_dir(path: Path) -> Path:
    """``path`` emptied (it must lie under runs/bench/service, so nothing else is removed)."""
    path = path.resolve()
    if BENCH_RUNS.resolve() not in path.parents:
        raise ValueError(f"refusing to empty {path}: not under {BENCH_RUNS}")
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


# --------------------------------------------------------------------------- servers


@dataclass
class Server:
    """A running ``recloop serve``: its process (a process-group leader), address and log."""

    proc: subprocess.Popen[bytes]
    home: Path
    port: int
    log_path: Path
    db: str | None = None
    workers: int = 2
    admin_key: str | None = None
    started: float = field(default_factory=time.monotonic)
    ready_seconds: float = 0.0

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _first_key(text: str) -> str | None:
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("rlk_"):
            return line
    return None


def start_server(
    home: Path,
    *,
    db: str | None = None,
    port: int | None = None,
    workers: int = 2,
    model: str | None = None,
    rate_limit: float | None = None,
    ready_timeout: float = 1800.0,
    ready_path: str = "/readyz",
    env: dict[str, str] | None = None,
) -> Server:
    """Start ``recloop serve`` on ``home`` and wait until ``ready_path`` answers 200.

    The server runs in its own session (process group = its pid), with stdout and stderr in
    ``<home>/bench-logs/serve-<n>.log``; the first-start admin key (the line starting with
    ``rlk_``) is read from there. First start on an empty home imports MovieLens-100K and trains
    a model, hence the long default ``ready_timeout``. ``ready_path="/healthz"`` returns as soon
    as the app answers (before any worker has loaded a model).
    """
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    logs = home / "bench-logs"
    logs.mkdir(exist_ok=True)
    log_path = logs / f"serve-{len(list(logs.glob('serve-*.log'))) + 1:03d}.log"
    port = port or free_port()
    cmd = [recloop_exe(), "serve", "--home", str(home), "--port", str(port)]
    cmd += ["--workers", str(workers), "--host", HOST]
    if db:
        cmd += ["--db", db]
    if model:
        cmd += ["--model", model]
    if rate_limit is not None:
        cmd += ["--rate-limit", str(rate_limit)]
    full_env = {**os.environ, **(env or {})}
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    full_env.setdefault("COLUMNS", "200")  # rich wraps its lines at 80 columns in a file
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=full_env,
            start_new_session=True,
        )
    server = Server(proc=proc, home=home, port=port, log_path=log_path, db=db, workers=workers)
    log(f"started recloop serve pid {proc.pid} on port {port} (home {home}, log {log_path})")
    try:
        wait_ready(server, ready_timeout, ready_path)
    except BaseException:
        stop_server(server)
        raise
    server.admin_key = _first_key(log_path.read_text(errors="replace"))
    return server


def wait_ready(server: Server, timeout: float, path: str = "/readyz") -> None:
    """Poll ``path`` until 200; fail if the server exits or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    next_note = time.monotonic() + 30.0
    with httpx.Client(timeout=5.0) as client:
        while True:
            code = server.proc.poll()
            if code is not None:
                raise RuntimeError(
                    f"recloop serve exited with code {code} before it was ready; log tail:\n"
                    + server.log_tail()
                )
            try:
                answer = client.get(f"{server.url}{path}")
                if answer.status_code == 200:
                    server.ready_seconds = time.monotonic() - server.started
                    log(f"server ready after {server.ready_seconds:.1f} s: {answer.text}")
                    return
                last = f"{answer.status_code} {answer.text[:200]}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}"
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"server not ready after {timeout:.0f} s (last: {last}); log tail:\n"
                    + server.log_tail()
                )
            if time.monotonic() > next_note:
                next_note = time.monotonic() + 30.0
                tail = server.log_tail(1).strip()
                log(f"waiting for {path} ({last}); log: {tail[-160:]}")
            time.sleep(0.25)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_server(server: Server, timeout: float = 20.0) -> None:
    """SIGTERM the server, then SIGKILL its whole process group if anything is left."""
    pgid = server.pid  # start_new_session: the server leads its own group
    if server.proc.poll() is None:
        try:
            server.proc.send_signal(signal.SIGTERM)
            server.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log(f"server pid {server.pid} ignored SIGTERM for {timeout:.0f} s: SIGKILL")
    deadline = time.monotonic() + 5.0
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _group_alive(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    try:
        server.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        log(f"server pid {server.pid} still not reaped after SIGKILL")


def kill_server(server: Server) -> None:
    """``kill -9`` every process of the server's group at once (a crash, not a shutdown)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    try:
        server.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        log(f"server pid {server.pid} not reaped 10 s after SIGKILL")
    deadline = time.monotonic() + 10.0
    while _group_alive(server.pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def run_recloop(args: list[str], *, timeout: float = 1800.0) -> str:
    """Run ``recloop <args>``; its stdout (raises with the output if it fails)."""
    env = {**os.environ, "COLUMNS": "200"}
    done = subprocess.run(
        [recloop_exe(), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"recloop {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    return done.stdout


def create_key(
    home: Path, *, role: str = "client", name: str = "bench", db: str | None = None
) -> str:
    """A new API key's secret, from ``recloop keys create`` (the last stdout line)."""
    args = ["keys", "create", "--name", name, "--role", role, "--home", str(home)]
    if db:
        args += ["--db", db]
    lines = [line.strip() for line in run_recloop(args, timeout=300).splitlines() if line.strip()]
    if not lines or not lines[-1].startswith("rlk_"):
        raise RuntimeError(f"`recloop keys create` printed no key: {lines[-3:]}")
    return lines[-1]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def imported_dataset(server: Server) -> str | None:
    """What the first start imported, from its log ("imported 100,000 events of ml-100k")."""
    for path in sorted(server.log_path.parent.glob("serve-*.log")):
        match = re.search(r"imported [\d,]+ events of (\S+)", path.read_text(errors="replace"))
        if match:
            return match.group(1)
    return None


def require_movielens(server: Server) -> None:
    """Fail when a first start fell back to synthetic data (RECLOOP_DATA unset or wrong)."""
    name = imported_dataset(server)
    if name is not None and name != "ml-100k":
        raise RuntimeError(
            f"the server imported {name}, not ml-100k: set RECLOOP_DATA to MovieLens' folder "
            f"and remove {server.home}"
        )


def warm_workers(server: Server, key: str, timeout: float = 300.0, rounds_ok: int = 2) -> int:
    """Send bursts of concurrent recommendation requests until every answer is 200.

    Each worker loads the active model on its first request, and meanwhile answers other
    requests 503 (see ModelHolder.current), so a server is warm only once bursts of fresh
    connections (which land on every worker) all succeed ``rounds_ok`` times in a row.
    Returns the non-200 answers seen on the way.
    """
    import concurrent.futures

    def one(n: int) -> int:
        try:
            answer = httpx.get(
                f"{server.url}/v1/users/{1 + n % 943}/recommendations?n=10",
                headers=auth(key),
                timeout=60,
            )
        except httpx.HTTPError:
            return 0
        return answer.status_code

    deadline = time.monotonic() + timeout
    bad, streak, burst = 0, 0, 0
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        while streak < rounds_ok:
            if time.monotonic() > deadline:
                raise TimeoutError(f"server not warm after {timeout:.0f} s ({bad} non-200 answers)")
            codes = list(pool.map(one, range(burst * 32, burst * 32 + 32)))
            burst += 1
            failures = sum(1 for code in codes if code != 200)
            bad += failures
            streak = streak + 1 if failures == 0 else 0
            if failures:
                time.sleep(0.5)
    if bad:
        log(f"warm-up: {bad} non-200 answers before every worker had loaded the model")
    return bad


# --------------------------------------------------------------------------- PostgreSQL


def create_pg_database(prefix: str = "recloop_bench") -> str:
    """A fresh, empty PostgreSQL database (via ``PG_ADMIN_URL``); returns its URL."""
    import psycopg

    name = f"{prefix}_{os.getpid()}_{int(time.time())}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    log(f"created PostgreSQL database {name}")
    return f"{PG_BASE}/{name}"


def drop_pg_database(url: str) -> None:
    """Drop a database made by :func:`create_pg_database` (closing its leftover sessions)."""
    import psycopg

    name = url.rsplit("/", 1)[1]
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        log(f"dropped PostgreSQL database {name}")
    except Exception as exc:  # cleanup must not hide the benchmark's own outcome
        log(f"could not drop PostgreSQL database {name}: {exc}")


def pg_available() -> bool:
    """Whether ``PG_ADMIN_URL`` answers."""
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        log(f"PostgreSQL at {PG_ADMIN_URL} not available: {exc}")
        return False
    return True


def store_url(home: Path, db: str | None) -> str:
    """The event store URL a server on ``home`` with ``--db db`` uses."""
    return db or f"sqlite:///{(Path(home) / 'recloop.db').resolve()}"


# --------------------------------------------------------------------------- CPU from /proc


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """``(ppid, utime+stime+cutime+cstime in ticks)`` of a live process, or None."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = data[data.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state): ppid is field 4, utime..cstime are fields 14..17
    return int(rest[1]), sum(int(v) for v in rest[11:15])


def process_tree(root: int) -> list[int]:
    """``root`` and every live descendant."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat is not None:
                children.setdefault(stat[0], []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(root: int) -> float:
    """CPU seconds (user + system) used so far by ``root``'s process tree.

    utime+stime of every live process of the tree, plus cutime+cstime (the time of children
    they already reaped), so the difference of two readings is the CPU the server used.
    """
    ticks = 0
    for pid in process_tree(root):
        stat = _proc_stat(pid)
        if stat is not None:
            ticks += stat[1]
    return ticks / _CLK_TCK


# --------------------------------------------------------------------------- wrk

_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    if not match:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(text: str) -> dict[str, Any]:
    """What ``wrk --latency`` printed: requests/s, latency percentiles (ms), errors.

    Keys: ``requests_per_s``, ``requests``, ``seconds``, ``latency_p50_ms`` ... from the
    "Latency Distribution" block, ``non_2xx``, ``socket_errors`` (connect + read + write +
    timeout) and each socket error kind, plus every ``recloop name=value`` line the Lua
    script's ``done()`` printed (numbers as floats; ``status_<code>``, ``version_<v>``,
    ``latency_p95_ms`` ...).
    """
    out: dict[str, Any] = {"non_2xx": 0.0, "socket_errors": 0.0}
    match = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if not match:
        raise ValueError("no Requests/sec line in wrk's output:\n" + text[-2000:])
    out["requests_per_s"] = float(match.group(1))
    match = re.search(r"(\d+) requests in ([\d.]+\w+),", text)
    if match:
        out["requests"] = float(match.group(1))
        out["seconds"] = _ms(match.group(2)) / 1000.0
    block = text.split("Latency Distribution", 1)
    if len(block) == 2:
        for pct, value in re.findall(r"^\s+([\d.]+)%\s+(\S+)\s*$", block[1], flags=re.M):
            out[f"latency_p{float(pct):g}_ms".replace(".", "_")] = _ms(value)
    match = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if match:
        out["non_2xx"] = float(match.group(1))
    match = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if match:
        kinds = ("connect", "read", "write", "timeout")
        for kind, value in zip(kinds, match.groups(), strict=True):
            out[f"socket_{kind}_errors"] = float(value)
        out["socket_errors"] = float(sum(int(v) for v in match.groups()))
    for name, value in re.findall(r"^recloop (\S+)=(\S+)$", text, flags=re.M):
        try:
            out[name] = float(value)
        except ValueError:
            out[name] = value
    return out


def wrk_command(
    url: str, script: Path, *, threads: int, connections: int, duration: float, timeout: float = 5
) -> list[str]:
    wrk = shutil.which("wrk") or "/usr/bin/wrk"
    return [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={max(1, round(timeout))}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]


# --------------------------------------------------------------------------- results


def record(model: str, config: dict[str, Any], metrics: dict[str, float]) -> BenchRecord:
    """A record of the service benchmarks: ml-100k served as a whole (protocol "all"), seed 0."""
    return make_record(
        dataset="ml-100k",
        protocol="all",
        seed=0,
        model=model,
        config=config,
        metrics={k: float(v) for k, v in metrics.items()},
    )


def save_results(
    name: str,
    records: list[BenchRecord],
    *,
    title: str,
    command: str,
    description: str,
    columns: list[str] | None = None,
    results_dir: Path = RESULTS_DIR,
) -> Path:
    """Write ``results_dir/<name>.json``; rerun make_docs.py when that is bench/results."""
    path = write_results(
        name,
        records,
        title=title,
        command=command,
        description=description,
        columns=columns,
        results_dir=results_dir,
    )
    log(f"wrote {path}")
    if results_dir.resolve() == RESULTS_DIR.resolve():
        subprocess.run(
            [sys.executable, str(ROOT / "bench" / "make_docs.py")], check=True, timeout=300
        )
    else:
        log("results written outside bench/results: docs/benchmarks.md not regenerated")
    return path


def dump_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


STORES = ("sqlite", "postgresql")


def run_stores(
    stores: str,
    run_store: Callable[[str], BenchRecord | None],
    passed: Callable[[BenchRecord], bool],
) -> tuple[list[BenchRecord], bool]:
    """Run ``run_store`` for each comma-separated store name; (records, whether any failed).

    A store that gives no record (it could not be measured) counts as a failure.
    """
    records: list[BenchRecord] = []
    failed = False
    for store in [s.strip() for s in stores.split(",") if s.strip()]:
        if store not in STORES:
            raise SystemExit(f"unknown store {store!r}: {' or '.join(STORES)}")
        rec = run_store(store)
        if rec is None:
            failed = True
            continue
        failed |= not passed(rec)
        records.append(rec)
    return records, failed
