"""`recloop quickstart` end to end (install excluded): wall time and peak memory.

    python bench/bench_quickstart.py

Runs the installed `recloop quickstart` in a child process on MovieLens-100K (RECLOOP_DATA
must point at it) and records the whole run plus each model's train time from the
records the quickstart writes. Target: at most 90 s on a 2-core machine.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from recloop.benchmark import BenchRecord, make_record, write_results

TARGET_SECONDS = 90.0


def main() -> int:
    recloop = shutil.which("recloop") or str(Path(sys.executable).parent / "recloop")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run([recloop, "quickstart", "--out", tmp], check=True)
        seconds = time.perf_counter() - start
        child_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
        inner = json.loads(Path(tmp, "records.json").read_text())["records"]
    records: list[BenchRecord] = [
        make_record(
            dataset="ml-100k",
            protocol="ratio",
            seed=0,
            model="Quickstart",
            config={"models": [r["model"] for r in inner], "target_seconds": TARGET_SECONDS},
            metrics={"seconds": seconds, "peak_rss_mb": child_peak},
            train_seconds=sum(r["train_seconds"] or 0.0 for r in inner),
            peak_rss=child_peak,
        )
    ]
    for r in inner:
        rec = BenchRecord.model_validate(r)
        records.append(rec)
    write_results(
        "quickstart",
        records,
        title="make quickstart end to end",
        command="python bench/bench_quickstart.py",
        description=(
            "The `Quickstart` row is the whole `recloop quickstart` run in a child process "
            "(MovieLens-100K lookup, ratio split seed 0, fitting and evaluating every baseline "
            "on validation and test, the HTML report), install excluded; its peak memory is the "
            "child's. The other rows are the quickstart's own records: each model's train time "
            "and the process's peak memory when that model finished (cumulative, one process)."
        ),
    )
    print(f"quickstart: {seconds:.1f} s, peak {child_peak:.0f} MiB (target {TARGET_SECONDS} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
