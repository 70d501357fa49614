"""User-level differential privacy: NDCG@10 of DP-Mult-DAE against ε on MovieLens-100K.

python bench/bench_dp.py                 # writes bench/results/dp.json (seeds 0 1 2)
python bench/bench_dp.py --seeds 0       # one seed
python bench/bench_dp.py --select        # the validation grid that chose SETTINGS (~8 min)

Each seed makes the ``ratio`` split (RecBole rounding). DP-Mult-DAE is trained with DP-SGD
through Opacus for each target ε in {0.5, 1, 2, 4, 8} at δ = 1/n_users (943 users with a
train history, so δ ≈ 1.06e-3), and once more with the same model, data order law (Poisson
sampling) and number of steps but no clipping and no noise (ε = ∞). Every run uses the same
hyper-parameters, SETTINGS, picked by ``--select`` on seed 0's *validation* split: that choice
is hyper-parameter tuning on private validation data and so is outside epsilon. Test metrics
are full-ranking, train items excluded. Popular is the floor a private model must beat to be
worth its noise.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from recloop.benchmark import BenchRecord, make_record, write_results
from recloop.data.split import Split
from recloop.data.types import Dataset
from recloop.datasets import movielens_100k
from recloop.experiment import DataConfig, fit_and_evaluate, split_data
from recloop.models import Popular
from recloop.models.dp import OUTSIDE_EPSILON, DPMultDAE, DPMultDAEConfig

EPSILONS: tuple[float | None, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, None)  # None: ε = ∞
DATA = DataConfig(dataset="ml-100k", protocol="ratio")
# Dropout and weight decay from the tuned non-private MultDAE config; width, learning rate and
# the DP-SGD schedule (expected batch, epochs) from --select's grid on seed 0's validation
# split, scored by the mean validation NDCG@10 at ε = 1 and ε = 8. The 60-epoch, q = 1/2
# point scored 0.1383 against these settings' 0.1370 (within the seeds' spread) at twice the
# compute; these were kept as the cheaper of the two.
SETTINGS: dict[str, Any] = {
    "hidden_dims": (200,),
    "latent_dim": 64,
    "dropout": 0.6257031491290185,  # configs/ml-100k/ratio/MultDAE.toml
    "weight_decay": 1e-05,  # configs/ml-100k/ratio/MultDAE.toml
    "lr": 1e-2,
    "expected_batch_size": 236,  # q = 1/4 with 943 users
    "epochs": 30,  # 120 Poisson steps
    "max_grad_norm": 1.0,
    "accountant": "rdp",
    "secret_randomness": False,  # reproducible figures; a deployment keeps the default True
}
SELECT_EPSILONS = (1.0, 8.0)
LIANG: dict[str, Any] = {"hidden_dims": (600,), "latent_dim": 200}  # the paper's widths
# Every point tried, each overriding SETTINGS; the chosen one is last.
GRID: list[dict[str, Any]] = [
    {
        "hidden_dims": (600,),
        "latent_dim": 200,
        "lr": 3e-3,
        "expected_batch_size": 256,
        "epochs": 10,
    },
    {
        "hidden_dims": (600,),
        "latent_dim": 200,
        "lr": 3e-3,
        "expected_batch_size": 472,
        "epochs": 20,
    },
    {"lr": 3e-3, "expected_batch_size": 472, "epochs": 20},
    {"lr": 1e-2, "expected_batch_size": 472, "epochs": 20},
    {"lr": 3e-2, "expected_batch_size": 472, "epochs": 20},
    {"hidden_dims": (), "expected_batch_size": 472, "epochs": 20},
    {"expected_batch_size": 472, "epochs": 60},
    {"expected_batch_size": 118, "epochs": 25},
    {},
]
COLUMNS = ["ndcg@10", "recall@10", "ndcg@20", "epsilon_spent", "noise_multiplier", "steps"]
DESCRIPTION = (
    "User-level (ε, δ)-DP: DP-Mult-DAE (Mult-DAE trained by DP-SGD through Opacus 1.6: "
    "Poisson sampling by its DP data loader, each user's whole-history gradient clipped to L2 "
    f"norm {SETTINGS['max_grad_norm']:g}, Gaussian noise, RDP accountant) on MovieLens-100K, "
    "ratio split, test set, full ranking, train items excluded. δ = 1/n_users (943 train users: "
    "1.06e-3). One example is one user's whole history, so example-level DP here is user-level "
    "DP. noise_multiplier is Opacus's get_noise_multiplier for the target ε over the run's "
    f"{SETTINGS['epochs']} epochs at q = 1/{-(-943 // SETTINGS['expected_batch_size'])} (the "
    "steps column); epsilon_spent is what the accountant reports after training (≤ the target). "
    "eps=inf is the same model, sampling and step count without clipping or noise. The settings "
    f"(a 1682-{SETTINGS['hidden_dims'][0]}-{SETTINGS['latent_dim']} autoencoder, Adam lr "
    f"{SETTINGS['lr']:g}) were chosen on seed 0's validation split by bench_dp.py --select; "
    f"{OUTSIDE_EPSILON}. Training never reads validation data (fixed epochs, no early "
    "stopping), and the empty-history fallback is the network's own output, so it is covered "
    "too. Popular (not private) is the floor a private model has to beat."
)


def dp_model(epsilon: float | None, seed: int, **overrides: Any) -> DPMultDAE:
    config = {**SETTINGS, **overrides, "target_epsilon": epsilon, "seed": seed}
    return DPMultDAE(DPMultDAEConfig(**config))


def label(epsilon: float | None) -> str:
    return f"DPMultDAE eps={'inf' if epsilon is None else f'{epsilon:g}'}"


def run_dp(epsilon: float | None, split: Split, dataset: Dataset, seed: int) -> BenchRecord:
    model = dp_model(epsilon, seed)
    run = fit_and_evaluate(model, split, dataset, (10, 20), progress=False)
    report = model.privacy_
    privacy = {
        "epsilon_spent": report.epsilon,
        "delta": report.delta,
        "noise_multiplier": report.noise_multiplier,
        "sample_rate": report.sample_rate,
        "steps": report.steps,
    }
    config = {**model.config.model_dump(mode="json"), **privacy, "accountant": report.accountant}
    extra = {k: float(v) for k, v in privacy.items() if v is not None and k != "delta"}
    print(
        f"seed {seed} {label(epsilon)}: test NDCG@10 {run.test.metrics['ndcg@10']:.4f}, "
        f"valid {run.valid.metrics['ndcg@10']:.4f}, σ {report.noise_multiplier:.3f}, "
        f"ε spent {report.epsilon}, {report.steps} steps, {run.train_seconds:.0f} s",
        flush=True,
    )
    return make_record(
        dataset="ml-100k",
        protocol="ratio",
        seed=seed,
        model=label(epsilon),
        config=config,
        metrics={**run.test.metrics, **extra},
        valid_metrics=run.valid.metrics,
        train_seconds=run.train_seconds,
        peak_rss=run.peak_rss_mb,
    )


def run_popular(split: Split, dataset: Dataset, seed: int) -> BenchRecord:
    run = fit_and_evaluate(Popular(), split, dataset, (10, 20), progress=False)
    print(f"seed {seed} Popular: test NDCG@10 {run.test.metrics['ndcg@10']:.4f}", flush=True)
    return run.record("ml-100k", split)


def select(dataset: Dataset) -> None:
    """Print seed 0's validation NDCG@10 of each grid point at ε = 1 and 8, and their mean."""
    split = split_data(dataset, DATA, 0)
    for point in GRID:
        scores = []
        for epsilon in SELECT_EPSILONS:
            model = dp_model(epsilon, 0, **point)
            run = fit_and_evaluate(
                model, split, dataset, (10,), progress=False, evaluate_test=False
            )
            scores.append(run.valid.metrics["ndcg@10"])
        shown = ", ".join(
            f"eps={e:g} {v:.4f}" for e, v in zip(SELECT_EPSILONS, scores, strict=True)
        )
        print(
            f"{point or 'SETTINGS'}: valid NDCG@10 {shown}, mean {np.mean(scores):.4f}", flush=True
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--select", action="store_true", help="run the validation grid only")
    args = parser.parse_args()
    began = time.perf_counter()
    dataset = movielens_100k()
    if args.select:
        select(dataset)
        return
    records: list[BenchRecord] = []
    for seed in args.seeds:
        split = split_data(dataset, DATA, seed)
        records.append(run_popular(split, dataset, seed))
        records += [run_dp(epsilon, split, dataset, seed) for epsilon in EPSILONS]
    seeds = " ".join(str(s) for s in args.seeds)
    path = write_results(
        "dp",
        records,
        title="User-level differential privacy: DP-Mult-DAE NDCG@10 against epsilon",
        command=f"python bench/bench_dp.py --seeds {seeds}",
        description=DESCRIPTION,
        columns=COLUMNS,
    )
    print(f"wrote {path} in {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
