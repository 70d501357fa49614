"""Popular and EASE against RecBole 1.2 on RecBole's own `ratio` splits of MovieLens-100K.

    python -m venv /tmp/recbole-venv
    /tmp/recbole-venv/bin/pip install torch==2.13.0 recbole==1.2.0 "numpy<2" "pandas<2.2" \
        "scipy<1.12" psutil
    RECBOLE_PYTHON=/tmp/recbole-venv/bin/python python bench/bench_recbole_crosscheck.py

A diagnostic of foundation issue 3's reference figures, not a tuning step. For each seed,
``recbole_crosscheck_worker.py`` (run by RecBole's Python) builds RecBole's own split
(``RS`` 8:1:1, random ordering, grouped by user, full ranking), evaluates RecBole's ``Pop``
as shipped, the same ``Pop`` counting every training row, and RecBole's ``EASE``, and writes
the split out. This script then fits recloop's ``Popular`` and ``EASE`` (the tuned `ratio`
configs; EASE's λ is passed to RecBole as ``reg_weight``) on that identical split and
evaluates them with recloop's evaluator. Matching figures on the same split show that the two
implementations agree; RecBole's shipped ``Pop`` shows where a popularity figure of about 0.10
comes from. recloop's models are also evaluated on recloop's own `ratio` split of each seed
(the same rule, another random permutation), so the ten seeds compare the two split
generators: how far a figure moves from one random split to the next.

RecBole is not a recloop dependency. Its 1.2.0 release imports ``ray`` and
``kmeans_pytorch`` at start-up for features this check does not use; when they are missing
the worker puts empty stand-ins in their place. Torch 2.6+ refuses RecBole's pickled
checkpoints, so no checkpoint is written or read (``saved=False``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from recloop.benchmark import BenchRecord, make_record, write_results
from recloop.data.split import Split, make_split
from recloop.data.types import Interactions
from recloop.datasets import movielens_100k
from recloop.eval import evaluate
from recloop.models.registry import build_model
from recloop.runconfig import load_run_config

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "recbole_crosscheck_worker.py"
KS = (10, 20)
SHOWN = ["ndcg@10", "recall@10", "mrr@10", "hit@10", "ndcg@20", "recall@20"]
RECBOLE_LABELS = {
    "Pop": "RecBole Pop (as shipped)",
    "Pop, no sampled negatives": "RecBole Pop (no sampled negatives)",
    "Pop, every positive row counted": "RecBole Pop (every positive row counted)",
    "EASE": "RecBole EASE",
}


def data_root() -> Path:
    root = os.environ.get("RECLOOP_DATA")
    if not root or not (Path(root) / "ml-100k" / "ml-100k.inter").is_file():
        raise SystemExit(
            "set RECLOOP_DATA to the folder holding ml-100k/ml-100k.inter (RecBole atomic files)"
        )
    return Path(root).resolve()


def run_worker(python: str, seed: int, ease_l2: float, work: Path) -> tuple[dict[str, Any], Any]:
    """RecBole's figures and split for one seed (the worker runs under RecBole's Python)."""
    out, split_out = work / f"recbole-{seed}.json", work / f"split-{seed}.npz"
    cmd = [
        python, str(WORKER), "--data-path", str(data_root()), "--seed", str(seed),
        "--ease-l2", repr(ease_l2), "--work", str(work / f"recbole-{seed}"),
        "--out", str(out), "--split-out", str(split_out),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"RecBole worker failed for seed {seed}:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text()), np.load(split_out)


def recbole_split(inter: Interactions, parts: Any, seed: int) -> Split:
    """recloop's Split holding exactly RecBole's train, validation and test rows."""
    width = np.int64(inter.n_items)
    keys = inter.user.astype(np.int64) * width + inter.item
    order = np.argsort(keys, kind="stable")
    if len(np.unique(keys)) != len(keys):
        raise SystemExit("MovieLens-100K has repeated (user, item) pairs: cannot match rows")

    def rows(part: str) -> np.ndarray:
        users = inter.users.index(parts[f"{part}_user"].tolist())
        items = inter.items.index(parts[f"{part}_item"].tolist())
        wanted = users.astype(np.int64) * width + items
        found = order[np.searchsorted(keys, wanted, sorter=order)]
        if not np.array_equal(keys[found], wanted):
            raise SystemExit(f"RecBole's {part} rows are not all MovieLens-100K rows")
        return np.sort(found)

    train, valid, test = rows("train"), rows("valid"), rows("test")
    everything = np.concatenate([train, valid, test])
    if len(everything) != len(inter) or len(np.unique(everything)) != len(inter):
        raise SystemExit("RecBole's parts do not partition MovieLens-100K's rows")
    return Split(
        "ratio",
        seed,
        inter.select(train),
        inter.select(valid),
        inter.select(test),
        meta={"split_by": "RecBole 1.2 (RS 8:1:1, RO, group_by user)"},
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument(
        "--recbole-python",
        default=os.environ.get("RECBOLE_PYTHON"),
        help="a Python with recbole==1.2.0 installed (default: $RECBOLE_PYTHON)",
    )
    parser.add_argument("--results-dir", type=Path, default=None)
    args = parser.parse_args()
    if not args.recbole_python or not Path(args.recbole_python).exists():
        raise SystemExit(
            "needs a Python with recbole==1.2.0: pass --recbole-python or set RECBOLE_PYTHON "
            "(see this script's docstring for the set-up)"
        )
    dataset = movielens_100k()
    configs = {
        name: load_run_config(ROOT / "configs" / "ml-100k" / "ratio" / f"{name}.toml")
        for name in ("Popular", "EASE")
    }
    ease_l2 = float(configs["EASE"].model.config["l2"])
    records: list[BenchRecord] = []
    with tempfile.TemporaryDirectory(prefix="recbole-crosscheck-") as scratch:
        for seed in args.seeds:
            recbole, parts = run_worker(args.recbole_python, seed, ease_l2, Path(scratch))
            split = recbole_split(dataset.interactions, parts, seed)
            protocol = "ratio"  # RecBole's own split of it: config["split"]
            source = f"recbole-{recbole['recbole_version']}"
            own = make_split(dataset.interactions, "ratio", seed=seed)
            for (name, run), (on, label) in product(
                configs.items(), ((split, source), (own, "recloop"))
            ):
                model = build_model(name, run.model.config).fit(on)
                test = evaluate(model, on.evaluation_set("test"), KS, progress=False)
                valid = evaluate(model, on.evaluation_set("valid"), KS, progress=False)
                records.append(
                    make_record(
                        dataset="ml-100k",
                        protocol=protocol,
                        seed=seed,
                        model=f"recloop {name}" + (" (recloop's split)" if on is own else ""),
                        config={**run.model.config, "split": label},
                        metrics=test.metrics,
                        valid_metrics=valid.metrics,
                    )
                )
            for label, found in recbole["results"].items():
                records.append(
                    make_record(
                        dataset="ml-100k",
                        protocol=protocol,
                        seed=seed,
                        model=RECBOLE_LABELS[label],
                        config={**found["config"], "split": source},
                        metrics={k: found["test"][k] for k in found["test"]},
                        valid_metrics={k: found["valid"][k] for k in found["valid"]},
                    )
                )
            shown = {r.model: r.metrics["ndcg@10"] for r in records if r.seed == seed}
            print(f"seed {seed}: " + ", ".join(f"{m} {v:.4f}" for m, v in shown.items()))
    extra = {"results_dir": args.results_dir} if args.results_dir else {}
    write_results(
        "recbole_crosscheck",
        records,
        title="Popular and EASE against RecBole 1.2 on RecBole's own ratio splits (diagnostic)",
        command="RECBOLE_PYTHON=/path/to/recbole-venv/bin/python "
        "python bench/bench_recbole_crosscheck.py",
        columns=SHOWN,
        description=(
            "MovieLens-100K, all 100,000 ratings as implicit interactions. For each seed RecBole "
            "1.2.0 builds its own split (eval_args RS 8:1:1, order RO, group_by user, mode full; "
            "seed = RecBole's `seed`, reproducibility on) and evaluates its models with its own "
            "evaluator; recloop's models (tuned `ratio` configs, EASE's λ also given to RecBole "
            "as reg_weight) are fitted on the identical train rows and evaluated by recloop on "
            "the identical test rows (train and validation items excluded, full ranking); "
            "`(recloop's split)` rows are the same models on recloop's own `ratio` split of "
            "the seed (same rule, another random permutation). "
            "`RecBole Pop (as shipped)` runs RecBole's defaults: it counts an item once per "
            "training batch that holds it (`item_cnt[item, :] = item_cnt[item, :] + 1` with "
            "repeated indices adds 1 once, so the most popular items tie near the number of "
            "batches), and as a pointwise model its batches also hold the uniformly sampled "
            "negative items (train_neg_sample_args: one per positive), counted alike. `no "
            "sampled negatives` trains the same model with train_neg_sample_args = None; "
            "`every positive row counted` also counts every row (`index_add_`), the ranking "
            "by train popularity that Pop means to compute. A diagnostic: nothing here feeds "
            "back into any config or protocol."
        ),
        **extra,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
