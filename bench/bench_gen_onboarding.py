"""Onboarding on MovieLens-100K: new users with 0, 1, 3 or 5 interactions, synthetic profiles vs
popularity and EASE.

    python bench/bench_gen_onboarding.py          # writes bench/results/gen_onboarding.json

300 users are held out (seed 0): 100 validation users, 200 test users; every model (popularity,
EASE, Mult-VAE, DiffRec) is fitted on the other 643 users' interactions only (the neural ones
with their tuned `ratio` configs, stopping early on those users' last items). A held-out user
is given only their earliest k ∈ {0, 1, 3, 5} interactions (by time, ties in file order); the
target set is the rest of their interactions; the ranking is over every item except the k
given ones (full ranking, binary relevance, NDCG@10 and Recall@10).

Methods, all reading the same k items:

- Popular: train popularity (the same list for everyone).
- EASE: ``x @ B`` on the k items, its λ chosen on the validation users from a grid.
- <Model>: the generative model's reconstruction of the k-item vector, ranked directly.
- Onboarding: :class:`recloop.generative.onboarding.Onboarding`: the reconstruction's top-M
  items become a weighted pseudo-history, recommended from by the model itself or by EASE.
  The generative model (Mult-VAE or DiffRec), where the recommendations come from
  (``generative`` or ``profile``), M and the pseudo-history weight are chosen on the
  validation users (mean NDCG@10 over k = 1, 3, 5); the best of each ``recommend_from`` is
  reported too.

k = 0 means nothing is known: every method answers with popularity (the onboarding label
``popular``), so the k = 0 rows are identical by construction and only anchor the curve.
Test numbers carry 95% bootstrap intervals over users (1,000 resamples), and the differences
against EASE and popularity paired-bootstrap ones.
"""

from __future__ import annotations

import argparse
import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from recloop.benchmark import BenchRecord, make_record, write_results
from recloop.data import Interactions, make_split
from recloop.eval import paired_bootstrap, ranking_metrics
from recloop.generative.onboarding import Onboarding, OnboardingConfig, score_vectors
from recloop.models import EASE, EASEConfig, Popular
from recloop.models.base import top_k

ROOT = Path(__file__).resolve().parent.parent
SEED = 0
N_VALID, N_TEST = 100, 200
KS = (0, 1, 3, 5)
TUNE_KS = (1, 3, 5)
EASE_L2 = (150.0, 500.0, 1500.0, 5000.0, 15000.0, 50000.0, 150000.0, 500000.0, 1500000.0)
PROFILE_SIZES = (10, 20, 50)
PROFILE_WEIGHTS = (0.1, 0.3, 1.0)
GENERATIVE = ("MultVAE", "DiffRec")
COLUMNS = ["k", "ndcg@10", "ndcg@10_low", "ndcg@10_high", "recall@10", "vs_ease", "vs_popular"]


@dataclass
class HeldOut:
    """Held-out users' time-ordered items: the first k are given, the rest are targets."""

    users: np.ndarray
    sequences: list[np.ndarray]

    def given(self, k: int, n_items: int) -> np.ndarray:
        """Binary partial vectors (users × items) of the first k items."""
        x = np.zeros((len(self.users), n_items), dtype=np.float32)
        for row, seq in enumerate(self.sequences):
            x[row, seq[:k]] = 1.0
        return x

    def targets(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """CSR (indptr, items) of each user's items after the first k (distinct, not given)."""
        rows = []
        for seq in self.sequences:
            rest = np.unique(seq[k:])
            rows.append(rest[~np.isin(rest, seq[:k])])
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([len(r) for r in rows], out=indptr[1:])
        return indptr, np.concatenate(rows).astype(np.int64)


def split_users(data: Interactions) -> tuple[Interactions, HeldOut, HeldOut]:
    """Train interactions of the remaining users, and the validation and test users."""
    rng = np.random.default_rng(SEED)
    users = rng.permutation(np.unique(data.user))
    valid_users, test_users = np.sort(users[:N_VALID]), np.sort(users[N_VALID : N_VALID + N_TEST])
    held = np.isin(data.user, users[: N_VALID + N_TEST])
    train = data.select(~held)
    indptr, items = data.histories()

    def part(chosen: np.ndarray) -> HeldOut:
        return HeldOut(chosen, [items[indptr[u] : indptr[u + 1]] for u in chosen])

    return train, part(valid_users), part(test_users)


def evaluate(scores: np.ndarray, partial: np.ndarray, held: HeldOut, k: int) -> dict[str, Any]:
    """Per-user NDCG@10 and Recall@10 of scores, the k given items excluded."""
    exclude = sp.csr_matrix(partial)
    items, _ = top_k(scores, 10, exclude)
    indptr, targets = held.targets(k)
    result = ranking_metrics(items, indptr, targets, ks=(10,), metrics=("ndcg", "recall"))
    assert len(result.rows) == len(held.users), "every held-out user has targets"
    return result.per_user


def with_popularity(scores: np.ndarray, partial: np.ndarray, popularity: np.ndarray) -> np.ndarray:
    """Rows with nothing given get popularity (as every method does at k = 0)."""
    empty = ~(partial > 0).any(axis=1)
    if empty.any():
        scores = np.array(scores, dtype=np.float32, copy=True)
        scores[empty] = popularity
    return scores


def onboarding_scores(onboarding: Onboarding, partial: np.ndarray) -> np.ndarray:
    """The full score matrix ``Onboarding.recommend_batch`` ranks (shared evaluation)."""
    return onboarding.score_batch(partial)[0]


def fit_generative(name: str, train: Interactions, quick: bool) -> tuple[Any, float]:
    from recloop.models.registry import build_model
    from recloop.runconfig import load_run_config

    run = load_run_config(ROOT / "configs" / "ml-100k" / "ratio" / f"{name}.toml")
    overrides: dict[str, Any] = {"seed": SEED, "device": "cpu"}
    if quick:
        overrides["max_epochs"] = 2
    model = build_model(name, {**run.model.config, **overrides})
    began = time.perf_counter()
    model.fit(make_split(train, "loo", seed=SEED))
    return model, time.perf_counter() - began


def mean_ci(values: np.ndarray) -> tuple[float, float, float]:
    """Mean with its 95% bootstrap interval over users."""
    res = paired_bootstrap(values, np.zeros_like(values), seed=SEED)
    return res.mean_difference, res.ci_low, res.ci_high


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(GENERATIVE), choices=GENERATIVE)
    parser.add_argument("--dry-run", action="store_true", help="do not write the results")
    parser.add_argument(
        "--quick", action="store_true", help="2 epochs per neural model (smoke test, no results)"
    )
    args = parser.parse_args()
    args.dry_run = args.dry_run or args.quick
    from recloop.datasets import movielens_100k

    began = time.perf_counter()
    dataset = movielens_100k()
    data = dataset.interactions
    train, valid, test = split_users(data)
    n_items = data.n_items
    popular = Popular().fit(train)
    popularity = popular.popularity_.astype(np.float32)
    inputs = {
        part: {k: held.given(k, n_items) for k in KS}
        for part, held in (("valid", valid), ("test", test))
    }

    def measure(score: Any, part: str, ks: tuple[int, ...] = KS) -> dict[int, dict[str, Any]]:
        held = valid if part == "valid" else test
        return {k: evaluate(score(inputs[part][k]), inputs[part][k], held, k) for k in ks}

    def tuned_mean(per_k: dict[int, dict[str, Any]]) -> float:
        return float(np.mean([per_k[k]["ndcg@10"].mean() for k in TUNE_KS]))

    # EASE: λ on the validation users
    eases = {l2: EASE(EASEConfig(l2=l2)).fit(train) for l2 in EASE_L2}

    def ease_score(model: EASE) -> Any:
        return lambda x: with_popularity(score_vectors(model, x), x, popularity)

    ease_valid = {
        l2: tuned_mean(measure(ease_score(m), "valid", TUNE_KS)) for l2, m in eases.items()
    }
    best_l2 = max(ease_valid, key=lambda l2: ease_valid[l2])
    ease = eases[best_l2]
    print(f"EASE validation NDCG@10 by λ: {ease_valid} -> λ = {best_l2}", flush=True)

    # generative models and the onboarding grid, on the validation users
    generative: dict[str, Any] = {}
    fit_seconds: dict[str, float] = {}
    for name in args.models:
        generative[name], fit_seconds[name] = fit_generative(name, train, args.quick)
        print(f"{name} fitted in {fit_seconds[name]:.0f} s", flush=True)
    grid: list[tuple[float, str, OnboardingConfig, bool]] = []
    for name, model in generative.items():
        configs = [(OnboardingConfig(recommend_from="generative"), False)]
        for m, w, to_ease in itertools.product(PROFILE_SIZES, PROFILE_WEIGHTS, (True, False)):
            config = OnboardingConfig(recommend_from="profile", profile_size=m, profile_weight=w)
            configs.append((config, to_ease))
        for config, to_ease in configs:
            onboarding = Onboarding(model, recommender=ease if to_ease else None, config=config)
            value = tuned_mean(
                measure(lambda x, o=onboarding: onboarding_scores(o, x), "valid", TUNE_KS)
            )
            grid.append((value, name, config, to_ease))
            print(
                f"valid {name} {config.recommend_from:10s} M={config.profile_size:2d} "
                f"w={config.profile_weight:.1f} {'EASE' if to_ease else 'self'}: {value:.4f}",
                flush=True,
            )

    def build(entry: tuple[float, str, OnboardingConfig, bool]) -> Onboarding:
        _, name, config, to_ease = entry
        return Onboarding(generative[name], recommender=ease if to_ease else None, config=config)

    best = max(grid, key=lambda g: g[0])
    best_mode = {
        mode: max((g for g in grid if g[2].recommend_from == mode), key=lambda g: g[0])
        for mode in ("generative", "profile")
    }

    # test users: every method once
    methods: dict[str, tuple[Any, dict[str, Any], float]] = {
        "Popular": (lambda x: np.broadcast_to(popularity, x.shape).copy(), {}, float("nan")),
        "EASE": (ease_score(ease), {"l2": best_l2}, ease_valid[best_l2]),
    }
    for name, model in generative.items():
        direct = Onboarding(model, config=OnboardingConfig(recommend_from="generative"))
        value = next(g[0] for g in grid if g[1] == name and g[2].recommend_from == "generative")
        methods[name] = (lambda x, o=direct: onboarding_scores(o, x), {}, value)
    chosen = {"Onboarding": best, **{f"Onboarding-{m}": e for m, e in best_mode.items()}}
    for label, entry in chosen.items():
        onboarding = build(entry)
        config = {
            "generative": entry[1],
            **entry[2].model_dump(include={"recommend_from", "profile_size", "profile_weight"}),
            "downstream": "EASE" if entry[3] else entry[1],
            "method": onboarding.method,
        }
        methods[label] = (lambda x, o=onboarding: onboarding_scores(o, x), config, entry[0])

    results = {label: measure(score, "test") for label, (score, _, _) in methods.items()}
    trials = {
        label: len(grid) if label.startswith("Onboarding") else len(EASE_L2) * (label == "EASE")
        for label in methods
    }
    records: list[BenchRecord] = []
    lines = []
    for label, (_, config, valid_value) in methods.items():
        for k in KS:
            got = results[label][k]
            ndcg, low, high = mean_ci(got["ndcg@10"])
            recall, r_low, r_high = mean_ci(got["recall@10"])
            metrics = {
                "k": float(k),
                "ndcg@10": ndcg,
                "ndcg@10_low": low,
                "ndcg@10_high": high,
                "recall@10": recall,
                "recall@10_low": r_low,
                "recall@10_high": r_high,
            }
            for ref in ("EASE", "Popular"):
                if label == ref:
                    continue
                diff = paired_bootstrap(got["ndcg@10"], results[ref][k]["ndcg@10"], seed=SEED)
                key = f"vs_{ref.lower()}"
                metrics[key] = diff.mean_difference
                metrics[f"{key}_low"], metrics[f"{key}_high"] = diff.ci_low, diff.ci_high
            records.append(
                make_record(
                    dataset="ml-100k",
                    protocol="all",
                    seed=SEED,
                    model=label,
                    config={**config, "k": k, "valid_users": N_VALID, "test_users": N_TEST},
                    metrics=metrics,
                    valid_metrics={} if np.isnan(valid_value) else {"ndcg@10_k135": valid_value},
                    train_seconds=fit_seconds.get(str(config.get("generative", label))),
                    tuning_trials=trials[label],
                )
            )
            lines.append(
                f"{label:22s} k={k}: NDCG@10 {ndcg:.4f} [{low:.4f}, {high:.4f}]  "
                f"Recall@10 {recall:.4f}"
                + (
                    f"  vs EASE {metrics['vs_ease']:+.4f} [{metrics['vs_ease_low']:+.4f}, "
                    f"{metrics['vs_ease_high']:+.4f}]"
                    if "vs_ease" in metrics
                    else ""
                )
            )
    for line in lines:
        print(line)
    best_text = (
        f"{best[1]}, recommend_from={best[2].recommend_from}, M={best[2].profile_size}, "
        f"w={best[2].profile_weight}, downstream {'EASE' if best[3] else best[1]}"
    )
    description = (
        f"MovieLens-100K. {N_VALID + N_TEST} users held out with seed {SEED} ({N_VALID} "
        f"validation, {N_TEST} test); Popular, EASE, Mult-VAE and DiffRec are fitted on the "
        "other 643 users only (the neural models with their tuned ratio configs, early-stopped "
        "on those users' last items). Each held-out user is given only their earliest k "
        "interactions (by time); targets are the rest of their interactions; full ranking "
        "over all 1,682 items minus the k given ones; NDCG@10 and Recall@10 averaged over "
        "users with a 95% bootstrap interval (_low/_high, 1,000 resamples). k = 0: nothing is "
        "known and every method answers with popularity (identical rows). EASE: x @ B on the "
        f"k items, λ chosen on the validation users from {list(EASE_L2)} (λ = {best_l2}). "
        "MultVAE/DiffRec: the model's reconstruction of the k-item vector ranked directly. "
        "Onboarding: the synthetic-profile method (top-M reconstructed items as weighted "
        "pseudo-history, recommended from by the generative model itself or by EASE); the "
        f"model, mode, M ∈ {list(PROFILE_SIZES)} and weight ∈ {list(PROFILE_WEIGHTS)} chosen "
        f"on the validation users by mean NDCG@10 over k = 1, 3, 5 ({len(grid)} settings): "
        f"{best_text}. Onboarding-generative / Onboarding-profile: the best setting of each "
        "recommend_from (Onboarding-generative is the chosen model's plain reconstruction). "
        "vs_ease / vs_popular: paired-bootstrap mean NDCG@10 difference with its 95% interval. "
        f"valid_metrics: the validation criterion. Test results: " + "; ".join(lines) + "."
    )
    print(f"done in {time.perf_counter() - began:.0f} s")
    if args.dry_run:
        return
    path = write_results(
        "gen_onboarding",
        records,
        title="Onboarding from 0-5 interactions: synthetic profiles vs popularity and EASE",
        command="python bench/bench_gen_onboarding.py",
        description=description,
        columns=COLUMNS,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
