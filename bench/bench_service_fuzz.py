"""Fuzz the HTTP service with schemathesis: every OpenAPI operation, counting requests and 5xx.

python bench/bench_service_fuzz.py                       # --max-examples 100 -> service_fuzz
python bench/bench_service_fuzz.py --max-examples 20 --results-dir /tmp/r   # smoke run

A fresh home in runs/bench/service/fuzz, `recloop serve --workers 2` (first start: MovieLens-100K
imported, EASE trained, an admin key printed), every worker warmed up, then `schemathesis run
http://127.0.0.1:<port>/openapi.json` with the admin key's Authorization header on all
operations (all phases: examples, coverage, fuzzing, stateful), --max-examples per operation,
check not_a_server_error (more with --checks), a fixed seed, HAR and JUnit reports in
runs/bench/service/fuzz/schemathesis/. Requests and 5xx answers are counted from the HAR file
(every request schemathesis sent); failing operations and their curl reproductions come from
the JUnit report and the console output. Target: zero 5xx; at least --min-requests requests.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from service_common import (
    BENCH_RUNS,
    RESULTS_DIR,
    create_key,
    fresh_dir,
    log,
    record,
    require_movielens,
    save_results,
    start_server,
    stop_server,
    warm_workers,
)

COLUMNS = ["requests", "server_errors_5xx", "failing_operations", "operations", "status_4xx"]
DESCRIPTION = (
    "schemathesis 4 against /openapi.json of `recloop serve --workers 2` (fresh home, "
    "MovieLens-100K, EASE) with an admin key: every operation, all phases (examples, "
    "coverage, fuzzing, stateful), positive and negative data, fixed seed, check "
    "not_a_server_error. requests and the status classes are counted from schemathesis' HAR "
    "report (every request it sent); failing_operations from its JUnit report. Target: 0 "
    "server errors (5xx)."
)


def schemathesis_exe() -> str:
    here = Path(sys.executable).parent / "schemathesis"
    if here.exists():
        return str(here)
    found = shutil.which("schemathesis")
    if found is None:
        raise RuntimeError("schemathesis is not installed (pip install 'schemathesis>=4')")
    return found


def read_har(path: Path) -> tuple[Counter[int], list[str]]:
    """Status counts of every HAR entry, and ``METHOD path -> status`` of the 5xx ones."""
    statuses: Counter[int] = Counter()
    errors: list[str] = []
    if not path.is_file():
        return statuses, errors
    har = json.loads(path.read_text())
    for entry in har.get("log", {}).get("entries", []):
        status = int(entry.get("response", {}).get("status", 0))
        statuses[status] += 1
        if status >= 500:
            request = entry.get("request", {})
            errors.append(f"{request.get('method')} {urlsplit(request.get('url', '')).path}")
    return statuses, errors


def read_junit(path: Path) -> tuple[int, dict[str, str]]:
    """Operations tested, and the failing ones with their failure text."""
    if not path.is_file():
        return 0, {}
    root = ET.parse(path).getroot()
    cases = root.iter("testcase")
    tested, failing = 0, {}
    for case in cases:
        tested += 1
        problems = [*case.findall("failure"), *case.findall("error")]
        if problems:
            text = "\n".join((p.get("message") or "") + "\n" + (p.text or "") for p in problems)
            failing[case.get("name") or "?"] = text.strip()
    return tested, failing


def curl_lines(text: str) -> list[str]:
    """The ``curl ...`` reproductions schemathesis printed (continuation lines joined)."""
    lines, found, current = text.splitlines(), [], ""
    for line in lines:
        stripped = line.strip()
        if current:
            current += " " + stripped.rstrip("\\").strip()
            if not stripped.endswith("\\"):
                found.append(current)
                current = ""
        elif stripped.startswith("curl "):
            current = stripped.rstrip("\\").strip()
            if not stripped.endswith("\\"):
                found.append(current)
                current = ""
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=100, help="examples per operation")
    parser.add_argument("--min-requests", type=int, default=1000, help="fewer fails the run")
    parser.add_argument("--checks", default="not_a_server_error", help="schemathesis --checks")
    parser.add_argument("--seed", type=int, default=0, help="schemathesis seed")
    parser.add_argument("--fuzz-workers", default="1", help="schemathesis --workers")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    parser.add_argument("--time-limit", type=float, default=3600.0, help="schemathesis limit (s)")
    parser.add_argument("--ready-timeout", type=float, default=1800.0, help="server start limit")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()

    home = fresh_dir(BENCH_RUNS / "fuzz")
    reports = home / "schemathesis"
    reports.mkdir()
    log(f"fresh home {home}: first start (imports MovieLens-100K, trains EASE)")
    server = start_server(home, workers=args.workers, ready_timeout=args.ready_timeout)
    try:
        require_movielens(server)
        admin = server.admin_key or create_key(home, role="admin", name="bench-fuzz")
        warm_workers(server, admin)
        cmd = [
            schemathesis_exe(),
            "--no-color",
            "run",
            f"{server.url}/openapi.json",
            "--header",
            f"Authorization: Bearer {admin}",
            "--checks",
            args.checks,
            "--max-examples",
            str(args.max_examples),
            "--seed",
            str(args.seed),
            "--workers",
            str(args.fuzz_workers),
            "--request-timeout",
            "60",
            "--suppress-health-check",
            "all",
            "--generation-database",
            "none",
            "--report",
            "junit,har",
            "--report-junit-path",
            str(reports / "junit.xml"),
            "--report-har-path",
            str(reports / "har.json"),
        ]
        shown = ["Authorization: Bearer ***" if c.startswith("Authorization:") else c for c in cmd]
        log(f"running {' '.join(shown)}")
        started = time.monotonic()
        try:
            done = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=args.time_limit,
                stdin=subprocess.DEVNULL,
                check=False,
                cwd=home,  # schemathesis keeps a .schemathesis/ cache in its working directory
            )
            output, code = done.stdout + done.stderr, done.returncode
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
            output, code = out + f"\n(schemathesis stopped after {args.time_limit:.0f} s)", -1
        seconds = time.monotonic() - started
        (home / "schemathesis.out").write_text(output)
        server_log = server.log_path
    finally:
        stop_server(server)

    print("\n".join(output.splitlines()[-40:]), file=sys.stderr)
    statuses, errors_5xx = read_har(reports / "har.json")
    operations, failing = read_junit(reports / "junit.xml")
    requests = sum(statuses.values())
    server_errors = sum(n for status, n in statuses.items() if status >= 500)
    tracebacks = len(re.findall(r'"level":"ERROR"', server_log.read_text(errors="replace")))
    metrics: dict[str, Any] = {
        "requests": requests,
        "server_errors_5xx": server_errors,
        "operations": operations,
        "failing_operations": len(failing),
        "status_2xx": sum(n for s, n in statuses.items() if 200 <= s < 300),
        "status_4xx": sum(n for s, n in statuses.items() if 400 <= s < 500),
        "server_error_log_lines": tracebacks,
        "schemathesis_exit_code": code,
        "seconds": seconds,
    }
    log(
        f"schemathesis: {requests:,} requests in {seconds:.0f} s over {operations} operations, "
        f"{server_errors} answered 5xx (target 0), {len(failing)} operations failing, exit "
        f"code {code}; statuses {dict(sorted(statuses.items()))}"
    )
    for name, text in failing.items():
        log(f"FAILING {name}:\n{text[:1500]}")
    for line in sorted(set(errors_5xx)):
        log(f"5xx answered for {line} ({errors_5xx.count(line)} times)")
    for line in curl_lines(output)[:40]:
        log(f"reproduce: {line}")
    if requests < args.min_requests:
        log(f"only {requests} requests (< {args.min_requests}): raise --max-examples")
    config = {
        "max_examples": args.max_examples,
        "checks": args.checks,
        "seed": args.seed,
        "phases": "all",
        "workers": args.workers,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "failing": sorted(failing),
    }
    save_results(
        "service_fuzz",
        [record("EASE", config, {k: float(v) for k, v in metrics.items()})],
        title="HTTP service: schemathesis fuzzing",
        command="python bench/bench_service_fuzz.py",
        description=DESCRIPTION,
        columns=COLUMNS,
        results_dir=args.results_dir,
    )
    ok = server_errors == 0 and not failing and requests >= args.min_requests
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
