"""Train TIGER once on MovieLens-100K `loo` seed 0 and print its validation NDCG@10 curve.

    python bench/tiger_valid_curve.py '{"hidden": 64, "lr": 0.001, "max_epochs": 60}'

How TIGER's config (`configs/ml-100k/loo/TIGER.toml`) was chosen: a few such runs, compared
on the validation split only (the test split is never evaluated here).
"""

from __future__ import annotations

import json
import sys
import time

from recloop.data.split import make_split
from recloop.datasets import movielens_100k
from recloop.models.tiger import TIGER, TIGERConfig


def main() -> int:
    config = TIGERConfig(**json.loads(sys.argv[1] if len(sys.argv) > 1 else "{}"))
    dataset = movielens_100k()
    split = make_split(dataset.interactions, "loo", seed=0)
    start = time.perf_counter()
    model = TIGER(config).fit(split, catalog=dataset.catalog)
    result = model.result_
    print(f"fit {time.perf_counter() - start:.0f} s, {result.epochs_run} epochs")
    print(f"best valid ndcg@10 {result.best_metric:.4f} at epoch {result.best_epoch}")
    print("curve", [(epoch, round(value, 4)) for epoch, value in result.metrics])
    return 0


if __name__ == "__main__":
    sys.exit(main())
