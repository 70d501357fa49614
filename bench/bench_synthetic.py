"""Benchmark the synthetic generator: wall time, interactions per second and peak memory.

Two configurations at 10 million interactions (200k users, 50k items, 20 topics): ``plain``
(tastes and popularity only) and ``planted`` (plus drift, Markov sequences, negatives, an event
mix and unique pairs). Every run is a fresh Python process, so its peak RSS is the generator's
own; the best of ``--repeats`` runs is recorded.

python bench/bench_synthetic.py                        # the recorded benchmark
python bench/bench_synthetic.py --interactions 200000  # a quick smoke run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from recloop.benchmark import RESULTS_DIR, BenchRecord, make_record, peak_rss_mb, write_results
from recloop.data.synthetic import SyntheticConfig, dataset_name, generate

FULL_SIZE = 10_000_000
USERS_PER_INTERACTION = 200_000 / FULL_SIZE  # 50 rows per user on average
ITEMS_PER_INTERACTION = 50_000 / FULL_SIZE
VARIANTS: dict[str, dict[str, object]] = {
    "plain": {},
    "planted": {
        "drift": 0.5,
        "markov_p": 0.3,
        "negative_share": 0.05,
        "positive_events": {"view": 6.0, "click": 3.0, "rating": 1.0},
        "unique_pairs": True,
    },
}


def config_for(variant: str, n_interactions: int, seed: int) -> SyntheticConfig:
    """The benchmark's configuration, scaled down proportionally for smoke runs."""
    return SyntheticConfig(
        n_users=max(10, round(n_interactions * USERS_PER_INTERACTION)),
        n_items=max(20, round(n_interactions * ITEMS_PER_INTERACTION)),
        n_interactions=n_interactions,
        n_topics=20,
        seed=seed,
        **VARIANTS[variant],
    )


def worker(config_json: str) -> None:
    """Generate once in this (fresh) process and print the measurements as one JSON line."""
    cfg = SyntheticConfig.model_validate_json(config_json)
    baseline = peak_rss_mb()
    start = time.perf_counter()
    data = generate(cfg)
    seconds = time.perf_counter() - start
    rows = len(data.dataset.interactions)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "rows": rows,
                "peak_rss_mb": peak_rss_mb(),
                "baseline_rss_mb": baseline,
            }
        )
    )


def measure(cfg: SyntheticConfig) -> dict[str, float]:
    """Run the generator in a child process and return its measurements."""
    out = subprocess.run(
        [sys.executable, __file__, "--worker", cfg.model_dump_json()],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interactions", type=int, default=FULL_SIZE, help="rows to generate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="runs per config; best is kept")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return

    records: list[BenchRecord] = []
    for variant in args.variants:
        cfg = config_for(variant, args.interactions, args.seed)
        runs = [measure(cfg) for _ in range(args.repeats)]
        best = min(runs, key=lambda r: r["seconds"])
        metrics = {
            "seconds": best["seconds"],
            "interactions_per_second": best["rows"] / best["seconds"],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "baseline_rss_mb": best["baseline_rss_mb"],
            "rows": best["rows"],
        }
        times = ", ".join(f"{r['seconds']:.2f}" for r in runs)
        print(
            f"{variant:8s} {dataset_name(cfg)}: {metrics['seconds']:.2f} s (runs: {times}), "
            f"{metrics['interactions_per_second']:,.0f} rows/s, "
            f"peak {metrics['peak_rss_mb']:.0f} MiB (imports {metrics['baseline_rss_mb']:.0f})",
            flush=True,
        )
        records.append(
            make_record(
                dataset=dataset_name(cfg),
                protocol="ratio",
                seed=args.seed,
                model="SyntheticGenerator",
                config=cfg.model_dump(),
                metrics=metrics,
                peak_rss=metrics["peak_rss_mb"],
            )
        )
    extra = " ".join(sys.argv[1:])
    path = write_results(
        "synthetic",
        records,
        title="Synthetic data generator: time and memory for 10M interactions",
        command="python bench/bench_synthetic.py" + (f" {extra}" if extra else ""),
        description=(
            "Wall time of generate() (best of the repeats), each run in a fresh process; "
            "peak RSS includes the interpreter and imports (baseline_rss_mb). rows is the "
            "final row count (unique_pairs may drop a few). The protocol field is required "
            "by the record format and means nothing here."
        ),
        results_dir=args.results_dir,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
