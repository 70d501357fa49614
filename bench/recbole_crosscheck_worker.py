"""RecBole 1.2's side of bench_recbole_crosscheck.py: one seed's split and test figures.

Runs under a Python that has ``recbole==1.2.0`` installed (not recloop's environment; see
bench_recbole_crosscheck.py for the set-up) and imports nothing from recloop. For one seed it
builds RecBole's own `ratio` split of MovieLens-100K (``RS`` 8:1:1, random ordering, grouped by
user, full ranking), writes that split as raw (user, item) tokens per part to an .npz, and
trains and evaluates on it:

- ``Pop``: RecBole's model as shipped, with RecBole's default training set-up. It counts the
  items of a training batch with ``item_cnt[item, :] = item_cnt[item, :] + 1``, an indexed
  assignment that adds 1 once however often the item appears in the batch, so its counts are
  "batches that hold the item". And Pop is a pointwise model, so by default (one uniform
  negative per positive) its batches also hold the sampled negative items, counted alike.
- ``Pop, no sampled negatives``: the same, trained without negative sampling.
- ``Pop, every positive row counted``: no negative sampling, and every row counted
  (``index_add_``): the popularity ranking the model means to compute.
- ``EASE``: RecBole's closed form with the given ``reg_weight``.

Every model gets a fresh Config and ``init_seed`` as ``run_recbole`` does, and the script
checks that each one saw the identical split. Figures are RecBole's own evaluator's (test set,
full ranking, train and validation items excluded), written as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _stand_ins() -> None:
    """Empty ``ray`` and ``kmeans_pytorch`` modules when they are not installed: RecBole 1.2.0
    imports them at start-up for hyper-parameter search and LDiffRec, which this check never
    runs."""
    import importlib.util
    import types

    for name, attribute in (("ray", "tune"), ("kmeans_pytorch", "kmeans")):
        if importlib.util.find_spec(name) is None:
            module = types.ModuleType(name)
            setattr(module, attribute, None)
            sys.modules[name] = module


_stand_ins()

from recbole.config import Config  # noqa: E402
from recbole.data import create_dataset, data_preparation  # noqa: E402
from recbole.model.general_recommender import EASE, Pop  # noqa: E402
from recbole.trainer import Trainer  # noqa: E402
from recbole.utils import init_seed  # noqa: E402

METRICS = ["Recall", "MRR", "NDCG", "Hit", "Precision"]


class PopExactCounts(Pop):  # type: ignore[misc]
    """RecBole's Pop, counting every row of a batch (repeats within the batch included)."""

    def calculate_loss(self, interaction: Any) -> Any:
        item = interaction[self.ITEM_ID]
        self.item_cnt.index_add_(0, item, torch.ones_like(item).unsqueeze(1))
        self.max_cnt = torch.max(self.item_cnt, dim=0)[0]
        return torch.nn.Parameter(torch.zeros(1)).to(self.device)


def config_for(model: str, args: argparse.Namespace, extra: dict[str, Any]) -> Any:
    settings = {
        "data_path": str(args.data_path),
        "dataset": "ml-100k",
        "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"]},
        "eval_args": {
            "split": {"RS": [0.8, 0.1, 0.1]},
            "order": "RO",
            "group_by": "user",
            "mode": "full",
        },
        "metrics": METRICS,
        "topk": [10, 20],
        "valid_metric": "NDCG@10",
        "seed": args.seed,
        "reproducibility": True,
        "show_progress": False,
        "device": "cpu",
        "use_gpu": False,
        "checkpoint_dir": str(args.work / "saved"),
        "epochs": 1,  # Pop and EASE fit in one pass
        **extra,
    }
    return Config(model=model, dataset="ml-100k", config_dict=settings)


def split_tokens(dataset: Any, part: Any) -> dict[str, np.ndarray]:
    inter = part._dataset.inter_feat
    users = dataset.id2token(dataset.uid_field, inter[dataset.uid_field].numpy())
    items = dataset.id2token(dataset.iid_field, inter[dataset.iid_field].numpy())
    return {"user": np.asarray(users, dtype=str), "item": np.asarray(items, dtype=str)}


def run(model_class: Any, name: str, args: argparse.Namespace, extra: dict[str, Any]) -> Any:
    config = config_for(name, args, extra)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    model = model_class(config, train._dataset).to(config["device"])
    trainer = Trainer(config, model)
    _, best_valid = trainer.fit(train, valid, saved=False, show_progress=False)
    test_result = trainer.evaluate(test, load_best_model=False, show_progress=False)
    parts = {
        f"{part}_{column}": values
        for part, data in (("train", train), ("valid", valid), ("test", test))
        for column, values in split_tokens(dataset, data).items()
    }
    return dict(best_valid), dict(test_result), parts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-path", type=Path, required=True, help="folder holding ml-100k/")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--ease-l2", type=float, required=True, help="EASE reg_weight")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (RecBole logs)")
    parser.add_argument("--out", type=Path, required=True, help="JSON of figures")
    parser.add_argument("--split-out", type=Path, required=True, help=".npz of the split")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    os.chdir(args.work)  # RecBole writes log/ under the working directory

    runs = [
        ("Pop", Pop, "Pop", {}),
        ("Pop, no sampled negatives", Pop, "Pop", {"train_neg_sample_args": None}),
        ("Pop, every positive row counted", PopExactCounts, "Pop", {"train_neg_sample_args": None}),
        ("EASE", EASE, "EASE", {"reg_weight": args.ease_l2}),
    ]
    results: dict[str, Any] = {}
    split: dict[str, np.ndarray] | None = None
    for label, model_class, name, extra in runs:
        valid, test, parts = run(model_class, name, args, extra)
        if split is None:
            split = parts
        elif any(not np.array_equal(split[key], parts[key]) for key in split):
            print(f"{label}: RecBole built a different split for the same seed", file=sys.stderr)
            return 1
        results[label] = {"valid": valid, "test": test, "config": extra}
    assert split is not None
    np.savez_compressed(args.split_out, **split)
    import recbole

    args.out.write_text(
        json.dumps({"recbole_version": recbole.__version__, "results": results}, indent=2)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
