"""Baselines on MovieLens-100K: tuned configs, seeds 0-2, `ratio` and `loo`, full ranking, test.

    python bench/bench_baselines.py                     # every protocol and model
    python bench/bench_baselines.py --protocol loo -m EASE

Each (model, protocol) runs in its own process so its peak memory is its own. Configs come
from `configs/ml-100k/<protocol>/<Model>.toml`, written by `recloop tune` on seed 0's
validation split; the test split is evaluated once per seed, here. Results go to
`bench/results/baselines.json` (plus paired bootstrap intervals against EASE).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from recloop.benchmark import BenchRecord, write_results

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("Popular", "ItemKNN", "EASE", "BPR")
PROTOCOLS = ("ratio", "loo")
SEEDS = (0, 1, 2)
REFERENCE = "EASE"
COMMAND = "python bench/bench_baselines.py"
COLUMNS = [
    "ndcg@10", "recall@10", "mrr@10", "hit@10",
    "ndcg@20", "recall@20", "mrr@20", "hit@20",
    "coverage@10", "gini@10",
]  # fmt: skip


def config_path(protocol: str, model: str) -> Path:
    return ROOT / "configs" / "ml-100k" / protocol / f"{model}.toml"


def worker(protocol: str, model_name: str, out: Path) -> None:
    """Fit and evaluate one model on every seed; write records and per-user NDCG@10."""
    from recloop.datasets import movielens_100k
    from recloop.experiment import DataConfig, fit_and_evaluate, split_data
    from recloop.models.registry import build_model, model_class
    from recloop.runconfig import load_run_config

    path = config_path(protocol, model_name)
    if path.is_file():
        run = load_run_config(path)
        config, trials = run.model.config, (run.tuning.trials if run.tuning else 0)
        data_config = run.data
    else:
        print(f"no tuned config at {path}; using {model_name}'s defaults", file=sys.stderr)
        config, trials = {}, 0
        data_config = DataConfig.model_validate({"protocol": protocol})
    dataset = movielens_100k()
    records, per_user = [], {}
    for seed in SEEDS:
        split = split_data(dataset, data_config, seed)
        cfg = dict(config)
        if "seed" in model_class(model_name).config_class.model_fields:
            cfg["seed"] = seed  # the seed sets the model's initialisation too
        model = build_model(model_name, cfg)
        result = fit_and_evaluate(model, split, dataset, progress=False)
        records.append(
            result.record("ml-100k", split, tuning_trials=trials).model_dump(mode="json")
        )
        per_user[f"seed{seed}_users"] = result.test.users
        per_user[f"seed{seed}_ndcg@10"] = result.test.per_user["ndcg@10"]
        print(
            f"{protocol} {model_name} seed {seed}: ndcg@10 {result.test.metrics['ndcg@10']:.4f} "
            f"(valid {result.valid.metrics['ndcg@10']:.4f}) in {result.train_seconds:.1f} s",
            file=sys.stderr,
        )
    (out / f"{protocol}-{model_name}.json").write_text(json.dumps(records))
    np.savez(out / f"{protocol}-{model_name}.npz", **per_user)


def bootstrap_lines(tmp: Path, protocol: str, models: list[str]) -> list[str]:
    from recloop.eval.bootstrap import paired_bootstrap

    if REFERENCE not in models:
        return []
    ref = np.load(tmp / f"{protocol}-{REFERENCE}.npz")
    lines = []
    for name in models:
        if name == REFERENCE:
            continue
        other = np.load(tmp / f"{protocol}-{name}.npz")
        for seed in SEEDS:
            users_a, users_b = ref[f"seed{seed}_users"], other[f"seed{seed}_users"]
            assert np.array_equal(users_a, users_b), "models were evaluated on different users"
            res = paired_bootstrap(other[f"seed{seed}_ndcg@10"], ref[f"seed{seed}_ndcg@10"])
            lines.append(
                f"| {protocol} | {name} − {REFERENCE} | {seed} | {res.mean_difference:+.4f} | "
                f"[{res.ci_low:+.4f}, {res.ci_high:+.4f}] |"
            )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocol", action="append", choices=PROTOCOLS)
    parser.add_argument("-m", "--model", action="append", choices=MODELS)
    parser.add_argument("--worker", nargs=3, metavar=("PROTOCOL", "MODEL", "DIR"))
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], Path(args.worker[2]))
        return 0
    protocols = args.protocol or list(PROTOCOLS)
    models = args.model or list(MODELS)
    records: list[BenchRecord] = []
    intervals: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for protocol in protocols:
            for name in models:
                cmd = [sys.executable, __file__, "--worker", protocol, name, tmp]
                subprocess.run(cmd, check=True)
                raw: list[dict[str, Any]] = json.loads(
                    Path(tmp, f"{protocol}-{name}.json").read_text()
                )
                records += [BenchRecord.model_validate(r) for r in raw]
            intervals += bootstrap_lines(Path(tmp), protocol, models)
    description = (
        "MovieLens-100K, all 100,000 ratings as implicit interactions, no filters; full ranking "
        "over all 1,682 items minus the query's exclusions; test set. Hyper-parameters from "
        "`configs/ml-100k/<protocol>/<Model>.toml` (tuned by `recloop tune` on seed 0's "
        "validation split; `tuning_trials` counts the configurations tried). Peak memory is "
        "per model process. `loo` is deterministic, so there the seed only changes a model's "
        "initialisation (BPR).\n\nPaired bootstrap (1,000 resamples over users) of the NDCG@10 "
        f"difference against {REFERENCE}, 95% interval:\n\n"
        "| protocol | comparison | seed | mean difference | 95% interval |\n|---|---|---|---|---|\n"
        + "\n".join(intervals)
    )
    write_results(
        "baselines",
        records,
        title="Classic baselines on MovieLens-100K",
        command=COMMAND if not (args.protocol or args.model) else " ".join(sys.argv),
        description=description,
        columns=COLUMNS,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
