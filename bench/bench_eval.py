"""Evaluation speed: users per second for full-ranking metrics at two catalogue sizes.

python bench/bench_eval.py            # writes bench/results/eval_speed.json

RandomScores rows time, from a dense random score matrix: building the exclusion CSR, top_k
(K = 20, exclusions, ties, padding) and all ranking metrics at K = 10 and 20, in the batches
``evaluate`` uses; drawing the random scores is not timed. The Popular row times a whole
``evaluate()`` call (scoring, top_k, ranking and beyond-accuracy metrics, segments).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from recloop.benchmark import BenchRecord, make_record, write_results
from recloop.data import Exclusions, IdMap, Interactions, ratio
from recloop.eval import evaluate, ranking_metrics
from recloop.eval.evaluate import CELLS_PER_BATCH
from recloop.models import Popular, top_k

KS = (10, 20)
DESCRIPTION = (
    "RandomScores: exclusion CSR + top_k (K=20) + recall/precision/hit/ndcg/mrr at K=10,20 "
    "from a dense random float32 score matrix (score generation not timed), batched as "
    "evaluate() batches (~16M score cells per batch); median of the repeats. Popular: one "
    "whole evaluate() call on a synthetic ratio split's test set (scoring, top_k, ranking and "
    "beyond-accuracy metrics, activity and head/tail segments). Single process, NumPy only."
)


def random_scores_case(
    n_users: int, n_items: int, seed: int = 0
) -> tuple[Exclusions, np.ndarray, np.ndarray]:
    """Per user ~50 excluded history items and ~10 targets outside them, as CSR."""
    rng = np.random.default_rng(seed)
    hist_size = np.minimum(rng.geometric(1 / 50, size=n_users), n_items // 2)
    target_size = np.minimum(rng.geometric(1 / 10, size=n_users), n_items // 4)
    history, targets = [], []
    for h, t in zip(hist_size.tolist(), target_size.tolist(), strict=True):
        chosen = rng.choice(n_items, size=h + t, replace=False)
        history.append(np.sort(chosen[:h]))
        targets.append(np.sort(chosen[h:]))
    ex_ptr = np.concatenate([[0], np.cumsum(hist_size)])
    t_ptr = np.concatenate([[0], np.cumsum(target_size)])
    return Exclusions(ex_ptr, np.concatenate(history)), t_ptr, np.concatenate(targets)


def exclusion_rows(exclude: Exclusions, start: int, stop: int) -> Exclusions:
    """Rows ``start:stop`` of an exclusion CSR (a contiguous slice is cheap)."""
    lo, hi = exclude.indptr[start], exclude.indptr[stop]
    return Exclusions(exclude.indptr[start : stop + 1] - lo, exclude.items[lo:hi])


def time_from_scores(n_users: int, n_items: int, repeats: int, seed: int = 0) -> tuple[float, int]:
    """Median seconds for exclusions + top_k + all ranking metrics over every user."""
    exclude, t_ptr, t_items = random_scores_case(n_users, n_items, seed)
    batch = max(1, CELLS_PER_BATCH // n_items)
    rng = np.random.default_rng(seed + 1)
    all_scores = (
        rng.random((n_users, n_items), dtype=np.float32) if n_users * n_items <= 1 << 26 else None
    )
    times = []
    for _ in range(repeats):
        elapsed = 0.0
        lists = np.empty((n_users, max(KS)), dtype=np.int64)
        for start in range(0, n_users, batch):
            stop = min(start + batch, n_users)
            if all_scores is not None:
                scores = all_scores[start:stop]
            else:
                scores = rng.random((stop - start, n_items), dtype=np.float32)
            began = time.perf_counter()
            rows = exclusion_rows(exclude, start, stop)
            lists[start:stop], _ = top_k(scores, max(KS), rows.to_csr(n_items))
            elapsed += time.perf_counter() - began
        began = time.perf_counter()
        result = ranking_metrics(lists, t_ptr, t_items, KS)
        elapsed += time.perf_counter() - began
        assert len(result) == n_users
        times.append(elapsed)
    return statistics.median(times), batch


def synthetic_interactions(n_users: int, n_items: int, seed: int = 0) -> Interactions:
    """MovieLens-100K-sized data: long-tailed item popularity and user activity."""
    rng = np.random.default_rng(seed)
    weight = 1.0 / (np.arange(n_items) + 10.0)
    weight = weight[rng.permutation(n_items)]
    weight /= weight.sum()
    sizes = np.clip(rng.lognormal(4.0, 0.9, size=n_users).astype(int), 20, n_items // 2)
    users = np.repeat(np.arange(n_users), sizes)
    items = np.concatenate([rng.choice(n_items, size=s, replace=False, p=weight) for s in sizes])
    return Interactions.from_arrays(
        users, items, users=IdMap(range(n_users)), items=IdMap(range(n_items))
    )


def time_popular(n_users: int, n_items: int, repeats: int) -> tuple[float, int, dict[str, float]]:
    """Median seconds of evaluate() for Popular on a synthetic ratio split's test set."""
    split = ratio(synthetic_interactions(n_users, n_items))
    model = Popular().fit(split)
    eval_set = split.evaluation_set("test")
    times, result = [], None
    for _ in range(repeats):
        began = time.perf_counter()
        result = evaluate(model, eval_set, KS, train=split.train, progress=False)
        times.append(time.perf_counter() - began)
    assert result is not None
    return statistics.median(times), len(eval_set), result.metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the small cases")
    parser.add_argument("--large-users", type=int, default=10_000)
    parser.add_argument("--large-items", type=int, default=100_000)
    args = parser.parse_args()

    records: list[BenchRecord] = []
    cases = [(943, 1682, args.repeats), (args.large_users, args.large_items, 1)]
    for n_users, n_items, repeats in cases:
        seconds, batch = time_from_scores(n_users, n_items, repeats)
        print(
            f"RandomScores {n_users} users x {n_items} items: {seconds:.3f} s, "
            f"{n_users / seconds:,.0f} users/s"
        )
        records.append(
            make_record(
                dataset=f"synthetic-users={n_users},items={n_items}",
                protocol="ratio",
                seed=0,
                model="RandomScores",
                config={"ks": list(KS), "batch_users": batch, "repeats": repeats},
                metrics={
                    "users_per_second": n_users / seconds,
                    "seconds": seconds,
                    "n_users": n_users,
                    "n_items": n_items,
                },
            )
        )
    seconds, n_eval, metrics = time_popular(943, 1682, args.repeats)
    print(
        f"Popular evaluate() {n_eval} users x 1682 items: {seconds:.3f} s, "
        f"{n_eval / seconds:,.0f} users/s (ndcg@10 {metrics['ndcg@10']:.4f})"
    )
    records.append(
        make_record(
            dataset="synthetic-users=943,items=1682",
            protocol="ratio",
            seed=0,
            model="Popular",
            config={"ks": list(KS), "timed": "evaluate()", "repeats": args.repeats},
            metrics={
                "users_per_second": n_eval / seconds,
                "seconds": seconds,
                "n_users": n_eval,
                "n_items": 1682,
            },
        )
    )
    path = write_results(
        "eval_speed",
        records,
        title="Evaluation speed",
        command="python bench/bench_eval.py",
        description=DESCRIPTION,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
