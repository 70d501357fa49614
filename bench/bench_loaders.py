"""Loader throughput: read_interactions on a synthetic CSV and Parquet file (10M rows).

Usage: python bench/bench_loaders.py [--rows 10000000] [--repeats 2]
Writes bench/results/loaders.json (only for the full 10-million-row run unless --out is given).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from recloop.benchmark import make_record, write_results
from recloop.data.loaders import ColumnMap, read_interactions

FULL_ROWS = 10_000_000
COLUMNS = ColumnMap(user="user", item="item", timestamp="timestamp", value="rating")


def synthetic_frame(rows: int, seed: int = 0) -> pl.DataFrame:
    """Integer ids (Zipf-ish items), second timestamps and 1-5 ratings, made with NumPy."""
    rng = np.random.default_rng(seed)
    n_users, n_items = max(rows // 50, 1), max(rows // 200, 1)
    items = np.minimum(rng.zipf(1.2, rows), n_items) - 1
    return pl.DataFrame(
        {
            "user": rng.integers(0, n_users, rows, dtype=np.int64),
            "item": rng.permutation(n_items)[items],
            "timestamp": rng.integers(880_000_000, 1_700_000_000, rows, dtype=np.int64),
            "rating": rng.integers(1, 6, rows).astype(np.float32),
        }
    )


def time_read(path: Path, repeats: int) -> tuple[float, int]:
    """Best wall time over ``repeats`` reads, and the number of rows read."""
    best, n = float("inf"), 0
    for _ in range(repeats):
        start = time.perf_counter()
        inter = read_interactions(path, COLUMNS)
        best = min(best, time.perf_counter() - start)
        n = len(inter)
        del inter
    return best, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=FULL_ROWS, help="rows to generate")
    parser.add_argument("--repeats", type=int, default=2, help="reads per format (best is kept)")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    args = parser.parse_args()

    records = []
    with tempfile.TemporaryDirectory(prefix="recloop-bench-") as tmp:
        frame = synthetic_frame(args.rows)
        files = {"csv": Path(tmp) / "events.csv", "parquet": Path(tmp) / "events.parquet"}
        frame.write_csv(files["csv"])
        frame.write_parquet(files["parquet"])
        del frame
        for fmt, path in files.items():
            seconds, n = time_read(path, args.repeats)
            assert n == args.rows
            rate = n / seconds
            size_mb = path.stat().st_size / 2**20
            print(
                f"{fmt:8s} {n:>11,d} rows  {size_mb:7.1f} MiB  {seconds:6.2f} s  {rate:,.0f} rows/s"
            )
            records.append(
                make_record(
                    dataset=f"synthetic-rows{args.rows}",
                    protocol="ratio",
                    seed=0,
                    model="Loader",
                    config={
                        "format": fmt,
                        "rows": args.rows,
                        "repeats": args.repeats,
                        "file_mib": round(size_mb, 1),
                    },
                    metrics={"rows_per_second": rate, "seconds": seconds},
                )
            )
    if args.rows == FULL_ROWS or args.out is not None:
        out = write_results(
            "loaders",
            records,
            title="Loader throughput: read_interactions on 10M synthetic rows",
            command="python bench/bench_loaders.py",
            description=(
                "Wall time of recloop.data.read_interactions (parse, validate, map ids, build "
                "Interactions) on a CSV and a Parquet file with integer user/item ids, integer "
                "second timestamps and 1-5 ratings; best of the given repeats. 'protocol' is "
                "not meaningful here (the schema requires one)."
            ),
            **({"results_dir": args.out} if args.out is not None else {}),
        )
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
