"""Generative retrieval on MovieLens-100K: Semantic IDs, TIGER and SID-SASRec.

    python bench/bench_generative.py loo          # TIGER, SID-SASRec (±ID) vs SASRec, seeds 0-2
    python bench/bench_generative.py cold         # cold_items: over all items and cold items only
    python bench/bench_generative.py tokenizers   # per-level quality: 2 tokenizers × 2 embedders
    python bench/bench_generative.py latency      # TIGER top-10, beam 20, batch 1, 2 threads
    python bench/bench_generative.py ablations    # constrained vs free decoding
    python bench/bench_generative.py levels       # TIGER: levels × codebook size (seed 0, loo)
    python bench/bench_generative.py diagnostics  # index/popularity; cold items' shared prefixes
    python bench/bench_generative.py loo -m TIGER --seeds 0   # a subset; the rest is kept

Accuracy parts run each (model, protocol) in its own process (its own peak memory) with the
config in `configs/ml-100k/<protocol>/<label>.toml`; the test split is evaluated once per
seed, here. Results: `bench/results/generative_<part>.json`; per-user NDCG@10 for the paired
bootstrap against SASRec in `bench/results/per_user/`; the seed-0 checkpoints (for latency and
ablations) in `runs/bench/generative/`.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from recloop.benchmark import BenchRecord, make_record, read_results, write_results

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PER_USER = RESULTS / "per_user"
CHECKPOINTS = ROOT / "runs" / "bench" / "generative"
SEEDS = (0, 1, 2)
REFERENCE = "SASRec"
BARS = {"loo": "SASRec", "cold": "ContentKNN"}  # what each part's bootstrap compares against
# label -> registered model; the config file is configs/ml-100k/<protocol>/<label>.toml
LABELS = {
    "SASRec": "SASRec",
    "TIGER": "TIGER",
    "SIDSASRec": "SIDSASRec",
    "SIDSASRec-id": "SIDSASRec",
    "ContentKNN": "ContentKNN",
    "EASE": "EASE",
}
PARTS = {
    "loo": ("SASRec", "TIGER", "SIDSASRec", "SIDSASRec-id"),
    "cold": ("ContentKNN", "TIGER", "SIDSASRec", "SIDSASRec-id", "SASRec", "EASE"),
}
PROTOCOL = {"loo": "loo", "cold": "cold_items"}
# TIGER's cap on cold items per list, chosen on seed 0's validation split (under cold_items:
# its validation cold set; under loo the few items with no train interaction are cold)
COLD_SHARES = (0.0, 0.1, 0.2, 0.3, 0.5, 1.0)
LOO_COLUMNS = ["ndcg@10", "recall@10", "hit@10", "mrr@10", "ndcg@20", "hit@20", "coverage@10"]
COLD_COLUMNS = ["ndcg@10", "recall@10", "cold_only_ndcg@10", "cold_only_recall@10"]


def config_path(protocol: str, label: str) -> Path:
    return ROOT / "configs" / "ml-100k" / protocol / f"{label}.toml"


def throughput(model: Any, queries: Any, batch: int = 256) -> float:
    """Users per second for top-10 (history excluded) in batches of ``batch``."""
    start = time.perf_counter()
    for begin in range(0, len(queries), batch):
        model.recommend(queries.take(np.arange(begin, min(begin + batch, len(queries)))), 10)
    return len(queries) / (time.perf_counter() - start)


def _cold_only(eval_set: Any, cold: np.ndarray, n_items: int) -> Any:
    """The same queries and targets, every item outside ``cold`` excluded."""
    from recloop.data.types import Exclusions

    others = np.setdiff1d(np.arange(n_items), cold).astype(np.int32)
    n = len(eval_set.queries)
    indptr = np.arange(n + 1, dtype=np.int64) * len(others)
    return dataclasses.replace(eval_set, exclude=Exclusions(indptr, np.tile(others, n)))


def _with_cold_share(model: Any, share: float) -> None:
    model.config = model.config.model_copy(update={"cold_share": share})


def worker(part: str, label: str, seeds: list[int], out: Path) -> None:
    """Fit and evaluate one model on the given seeds; write records and per-user NDCG@10."""
    from recloop.benchmark import peak_rss_mb
    from recloop.datasets import movielens_100k
    from recloop.eval.evaluate import evaluate
    from recloop.experiment import ModelRun, evaluate_part, fit_and_evaluate, split_data
    from recloop.models.registry import build_model, model_class
    from recloop.runconfig import load_run_config

    protocol = PROTOCOL[part]
    run = load_run_config(config_path(protocol, label))
    name = LABELS[label]
    trials = run.tuning.trials if run.tuning else 0
    dataset = movielens_100k()
    records, per_user = [], {}
    chosen_share: float | None = None
    for seed in seeds:
        split = split_data(dataset, run.data, seed)
        cfg = dict(run.model.config)
        if "seed" in model_class(name).config_class.model_fields:
            cfg["seed"] = seed
        model = build_model(name, cfg)
        if name == "TIGER":
            started = time.perf_counter()
            model.fit(split, catalog=dataset.catalog, users=dataset.users)
            fitted_s = time.perf_counter() - started
            share_file = CHECKPOINTS / f"{part}-{label}-cold_share.json"
            if seed == 0:  # chosen on seed 0's validation split, reused by the other seeds
                scores = {}
                for share in COLD_SHARES:
                    _with_cold_share(model, share)
                    valid = split.evaluation_set("valid")
                    res = evaluate(model, valid, (10,), progress=False, n_items=model.n_items_)
                    scores[share] = res.metrics["ndcg@10"]
                chosen_share = max(COLD_SHARES, key=lambda s: (scores[s], -s))
                share_file.parent.mkdir(parents=True, exist_ok=True)
                share_file.write_text(json.dumps({"valid_ndcg@10": scores, "chosen": chosen_share}))
                print(
                    f"TIGER cold_share on validation: {scores} -> {chosen_share}", file=sys.stderr
                )
            elif chosen_share is None:
                if not share_file.is_file():
                    raise SystemExit(f"run {part} -m {label} --seeds 0 first (it picks cold_share)")
                chosen_share = float(json.loads(share_file.read_text())["chosen"])
            _with_cold_share(model, chosen_share)
            valid_run = evaluate_part(model, split, dataset, "valid", progress=False)
            test_run = evaluate_part(model, split, dataset, "test", progress=False)
            result = ModelRun(model, fitted_s, valid_run, test_run, peak_rss_mb())
        else:
            result = fit_and_evaluate(model, split, dataset, progress=False)
        metrics_extra: dict[str, float] = {}
        if part == "cold":
            test = split.evaluation_set("test")
            if name == "TIGER":
                _with_cold_share(model, 1.0)  # every candidate is cold: no cap
            cold = evaluate(
                model,
                _cold_only(test, split.cold_test_items, model.n_items_),
                (10, 20),
                progress=False,
                n_items=model.n_items_,
            )
            if name == "TIGER":
                _with_cold_share(model, chosen_share or 0.0)
            metrics_extra = {f"cold_only_{k}": v for k, v in cold.metrics.items()}
        speed = throughput(model, split.evaluation_set("test").queries)
        record = result.record("ml-100k", split, tuning_trials=trials)
        metrics = {**record.metrics, **metrics_extra}
        records.append(
            record.model_copy(
                update={"model": label, "users_per_s": speed, "metrics": metrics}
            ).model_dump(mode="json")
        )
        per_user[f"seed{seed}_users"] = result.test.users
        per_user[f"seed{seed}_ndcg@10"] = result.test.per_user["ndcg@10"]
        print(
            f"{part} {label} seed {seed}: ndcg@10 {result.test.metrics['ndcg@10']:.4f} "
            f"(valid {result.valid.metrics['ndcg@10']:.4f}) in {result.train_seconds:.0f} s"
            + (f", cold only {metrics_extra['cold_only_ndcg@10']:.4f}" if metrics_extra else ""),
            file=sys.stderr,
        )
        if seed == 0 and name == "TIGER":
            model.save(CHECKPOINTS / f"{part}-{label}-seed0")
    (out / f"{part}-{label}.json").write_text(json.dumps(records))
    np.savez(out / f"{part}-{label}.npz", **per_user)


def run_accuracy(part: str, labels: list[str], seeds: list[int]) -> list[BenchRecord]:
    """One worker process per label; returns the new records."""
    tmp = ROOT / "runs" / "bench" / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    new: list[BenchRecord] = []
    for label in labels:
        if part == "loo" and label == REFERENCE:
            new += reuse_reference(seeds)
            continue
        cmd = [sys.executable, __file__, "--worker", part, label, ",".join(map(str, seeds))]
        subprocess.run(cmd, check=True)
        new += [
            BenchRecord.model_validate(r)
            for r in json.loads((tmp / f"{part}-{label}.json").read_text())
        ]
        PER_USER.mkdir(parents=True, exist_ok=True)
        merged = dict(np.load(tmp / f"{part}-{label}.npz"))
        old_path = PER_USER / f"generative-{part}-{label}.npz"
        if old_path.is_file():
            merged = {**dict(np.load(old_path)), **merged}
        np.savez(old_path, **merged)
    return new


def reuse_reference(seeds: list[int]) -> list[BenchRecord]:
    """SASRec's loo records and per-user NDCG@10 from `bench/bench_models.py` (same config,
    splits and seeds), rather than training it again."""
    models = read_results(RESULTS / "models.json").records
    found = [r for r in models if r.protocol == "loo" and r.model == REFERENCE and r.seed in seeds]
    if len(found) != len(seeds):
        raise SystemExit("run `python bench/bench_models.py --protocol loo -m SASRec` first")
    PER_USER.mkdir(parents=True, exist_ok=True)
    np.savez(
        PER_USER / f"generative-loo-{REFERENCE}.npz", **dict(np.load(PER_USER / "loo-SASRec.npz"))
    )
    return found


def bootstrap_lines(part: str, labels: list[str]) -> list[str]:
    from recloop.eval.bootstrap import paired_bootstrap

    bar = BARS[part]
    ref_path = PER_USER / f"generative-{part}-{bar}.npz"
    if not ref_path.is_file():
        return []
    ref = np.load(ref_path)
    lines = []
    for label in labels:
        path = PER_USER / f"generative-{part}-{label}.npz"
        if label == bar or not path.is_file():
            continue
        other = np.load(path)
        for seed in SEEDS:
            key = f"seed{seed}_ndcg@10"
            if key not in other or key not in ref:
                continue
            assert np.array_equal(ref[f"seed{seed}_users"], other[f"seed{seed}_users"])
            res = paired_bootstrap(other[key], ref[key])
            verdict = (
                "better" if res.ci_low > 0 else "worse" if res.ci_high < 0 else "no difference"
            )
            lines.append(
                f"| {PROTOCOL[part]} | {label} − {bar} | {seed} | {res.mean_difference:+.4f} "
                f"| [{res.ci_low:+.4f}, {res.ci_high:+.4f}] | {verdict} |"
            )
    return lines


def merge(path: Path, new: list[BenchRecord], key: Any) -> list[BenchRecord]:
    """Old records of ``path`` not replaced by ``new`` (same ``key``), then ``new``."""
    if not path.is_file():
        return new
    replaced = {key(r) for r in new}
    return [r for r in read_results(path).records if key(r) not in replaced] + new


def accuracy(part: str, labels: list[str], seeds: list[int]) -> None:
    new = run_accuracy(part, labels, seeds)
    lock = ROOT / "runs" / "bench" / "results.lock"
    with lock.open("w") as handle:  # parallel runs merge one at a time
        fcntl.flock(handle, fcntl.LOCK_EX)
        write_accuracy(part, new)
        subprocess.run([sys.executable, str(ROOT / "bench" / "make_docs.py")], check=True)


def write_accuracy(part: str, new: list[BenchRecord]) -> None:
    path = RESULTS / f"generative_{part}.json"
    records = merge(path, new, lambda r: (r.model, r.seed))
    order = {label: i for i, label in enumerate(PARTS[part])}
    records.sort(key=lambda r: (order.get(r.model, 99), r.seed))
    lines = bootstrap_lines(part, list(PARTS[part]))
    if part == "loo":
        description = (
            "MovieLens-100K, `loo` (last item test, second-to-last validation), histories cut "
            "to the last 50 items, full ranking over all 1,682 items, test set, seeds 0-2 (the "
            "seed sets initialisation; the split is deterministic). SASRec uses its tuned config "
            "(`configs/ml-100k/loo/SASRec.toml`; its records are those of `bench_models.py`); "
            "SIDSASRec and SIDSASRec-id (with a per-item ID "
            "embedding) reuse its hyper-parameters with items as Semantic-ID token sums; TIGER's "
            "config is `configs/ml-100k/loo/TIGER.toml` (its cold-item cap chosen on seed 0's "
            "validation split). Semantic IDs: all-MiniLM-L6-v2 over "
            "'Title (Year). Genres: …', RQ-VAE 3 × 256 + suffix. CPU only, one thread. users/s: "
            "top-10 in batches of 256 (beam search for TIGER)."
        )
        columns = LOO_COLUMNS
    else:
        description = (
            "MovieLens-100K, `cold_items`: 10% of the items lose all train interactions; half "
            "form the validation cold set, half the test cold set, whose interactions are the "
            "targets. `ndcg@10`/`recall@10` rank over all items (train items and validation "
            "cold items excluded); `cold_only_*` rank over the test cold items alone. ContentKNN "
            "ranks by cosine to the mean history embedding over the same MiniLM embeddings the "
            "Semantic IDs come from; SASRec and EASE (ID-only) are shown for reference: they "
            "cannot score items they never saw, so over all items they reach ~0, and over cold "
            "items only EASE gives every cold item the same score and SASRec untrained ones: "
            "their `cold_only_*` figures come from the evaluation's tie rule (lower item index "
            "first), and on MovieLens-100K the item index (order of first appearance) follows "
            "popularity (Spearman −0.81 with interaction count), so that order is a popularity "
            "ranking, not anything learned. TIGER's "
            "cold-item cap `cold_share` is chosen on seed 0's validation cold set (lifted to 1 "
            "for the cold-only ranking); it matches cold items on their first code "
            "(`cold_match_levels = 1`, see its config). Every target here is a cold item, so "
            "validation picks `cold_share = 1`: over all items TIGER then fills its lists with "
            "items it knows to be new, which ContentKNN and SID-SASRec do not do; "
            "`cold_only_*`, where every model ranks the same candidates, is the like-for-like "
            "comparison (no per-user file, so no bootstrap for it)."
        )
        columns = COLD_COLUMNS
    if lines:
        description += (
            "\n\nPaired bootstrap (1,000 resamples over users) of NDCG@10 (over all items) "
            f"against {BARS[part]}, 95% "
            "interval:\n\n| protocol | comparison | seed | mean difference | 95% interval | "
            "verdict |\n|---|---|---|---|---|---|\n" + "\n".join(lines)
        )
    write_results(
        f"generative_{part}",
        records,
        title=(
            "Generative retrieval vs SASRec (loo)"
            if part == "loo"
            else "Cold-start items (cold_items protocol)"
        ),
        command=f"python bench/bench_generative.py {part}",
        description=description,
        columns=columns,
        results_dir=RESULTS,
    )


def tokenizers() -> None:
    """Per-level quality of RQ-VAE and residual k-means over MiniLM and TF-IDF embeddings."""
    from recloop.datasets import movielens_100k
    from recloop.semantic_ids.build import SemanticIdConfig, SemanticIds
    from recloop.semantic_ids.embed import ItemTextBuilder, embed_items
    from recloop.semantic_ids.quality import level_report

    dataset = movielens_100k()
    interactions = dataset.interactions.positive().to_csr()
    records = []
    for embedder in ("sentence-transformers", "tfidf"):
        for tokenizer in ("rqvae", "rkmeans"):
            config = SemanticIdConfig.model_validate(
                {"embedder": {"kind": embedder}, "tokenizer": tokenizer}
            )
            start = time.perf_counter()
            sids = SemanticIds.build(dataset.catalog, config)
            seconds = time.perf_counter() - start
            texts = ItemTextBuilder(template=config.text_template).texts(dataset.catalog)
            vectors = embed_items(texts, sids.embedder)
            report = level_report(vectors, sids.codes[:, :-1], sids.tokenizer, interactions)
            label = f"{'RQ-VAE' if tokenizer == 'rqvae' else 'ResidualKMeans'}/" + (
                "MiniLM" if embedder == "sentence-transformers" else "TF-IDF"
            )
            for level in report:
                metrics = {k: float(v) for k, v in level.items() if v is not None and k != "level"}
                metrics["max_suffix"] = float(sids.codes[:, -1].max())
                records.append(
                    make_record(
                        dataset="ml-100k",
                        protocol="all",
                        seed=0,
                        model=label,
                        config={"level": int(level["level"] or 0), "K": sids.vocab[0]},
                        metrics=metrics,
                        train_seconds=seconds,
                    )
                )
            print(label, f"{seconds:.1f} s", report[-1], file=sys.stderr)
    write_results(
        "generative_tokenizers",
        records,
        title="Semantic-ID tokenizer quality per level",
        command="python bench/bench_generative.py tokenizers",
        description=(
            "All 1,682 MovieLens-100K items, text 'Title (Year). Genres: …'; 3 levels of 256 "
            "codes. Per level l: share of the codebook used, perplexity of code usage, mean "
            "squared error of the embedding rebuilt from levels 1..l, share of items whose "
            "prefix c1..cl is shared (at level 3: collisions before the suffix), and coherence "
            "by behaviour: mean co-interaction Jaccard of item pairs sharing the prefix vs random "
            "pairs (20,000 each) and their ratio (lift). train s = embedding + tokenizer fit."
        ),
        columns=[
            "utilisation",
            "perplexity",
            "reconstruction_mse",
            "collision_rate",
            "coherence_prefix_jaccard",
            "coherence_random_jaccard",
            "coherence_lift",
        ],
        results_dir=RESULTS,
    )


def latency() -> None:
    """TIGER (the loo seed-0 checkpoint): one user at a time, 2 threads, p50/p99; batched."""
    import torch

    from recloop.datasets import movielens_100k
    from recloop.experiment import split_data
    from recloop.models.tiger import TIGER
    from recloop.runconfig import load_run_config

    torch.set_num_threads(2)
    path = CHECKPOINTS / "loo-TIGER-seed0"
    model = TIGER.load(path)
    run = load_run_config(config_path("loo", "TIGER"))
    dataset = movielens_100k()
    queries = split_data(dataset, run.data, 0).evaluation_set("test").queries
    order = np.arange(1000) % len(queries)
    for row in order[:20]:  # warm-up
        model.recommend(queries.take(np.array([row])), 10)
    times = []
    for row in order:
        start = time.perf_counter()
        model.recommend(queries.take(np.array([row])), 10)
        times.append(time.perf_counter() - start)
    ms = np.asarray(times) * 1000
    batched = {f"users_per_s_batch{b}": throughput(model, queries, b) for b in (32, 256)}
    fitted = read_results(RESULTS / "generative_loo.json").records
    train_s = next(r.train_seconds for r in fitted if r.model == "TIGER" and r.seed == 0)
    record = make_record(
        dataset="ml-100k",
        protocol="loo",
        seed=0,
        model="TIGER",
        config={"beam": model.config.beam, "k": 10, "batch": 1, "threads": 2},
        metrics={
            "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()),
            **batched,
        },
        train_seconds=train_s,
    )
    print(record.metrics, file=sys.stderr)
    write_results(
        "generative_latency",
        [record],
        title="TIGER latency",
        command="python bench/bench_generative.py latency",
        description=(
            "The seed-0 `loo` TIGER checkpoint of the accuracy table: top-10 for one user at "
            "a time with beam 20, the trie and exclusions included, torch on 2 threads, 1,000 "
            "requests cycling the test users (after 20 warm-up requests); p50/p99 in ms "
            "(target p50 ≤ 50 ms). Batched throughput in users/s at batch 32 and 256. train s: "
            "that checkpoint's training time (cap: 45 minutes on this CPU)."
        ),
        columns=["p50_ms", "p99_ms", "mean_ms", "users_per_s_batch32", "users_per_s_batch256"],
        results_dir=RESULTS,
    )


def ablations() -> None:
    """Constrained vs free decoding on the loo seed-0 checkpoint."""
    from recloop.datasets import movielens_100k
    from recloop.eval.metrics import ranking_metrics
    from recloop.experiment import split_data
    from recloop.models.tiger import TIGER
    from recloop.runconfig import load_run_config

    model = TIGER.load(CHECKPOINTS / "loo-TIGER-seed0")
    run = load_run_config(config_path("loo", "TIGER"))
    dataset = movielens_100k()
    test = split_data(dataset, run.data, 0).evaluation_set("test")
    records = []
    for constrained in (True, False):
        items, _ = model.recommend(test.queries, 10, constrained=constrained)
        invalid = float((items < 0).mean())
        metrics = ranking_metrics(items, test.targets_indptr, test.targets_items, (10,))
        records.append(
            make_record(
                dataset="ml-100k",
                protocol="loo",
                seed=0,
                model="TIGER",
                config={"decoding": "trie" if constrained else "free", "beam": model.config.beam},
                metrics={"invalid_share@10": invalid, **metrics.means},
            )
        )
        print(constrained, records[-1].metrics, file=sys.stderr)
    write_results(
        "generative_ablations",
        records,
        title="TIGER ablations: constrained vs free decoding",
        command="python bench/bench_generative.py ablations",
        description=(
            "The seed-0 `loo` TIGER checkpoint, test set. 'trie': beam search masked by the "
            "prefix trie and the query's exclusions (the default); 'free': the same beam search "
            "over every token at every level, history excluded afterwards. invalid_share@10: "
            "share of the top-10 slots holding an ID that is no item (or an excluded one), "
            "counted as misses in the metrics."
        ),
        columns=["invalid_share@10", "ndcg@10", "recall@10", "hit@10"],
        results_dir=RESULTS,
    )


# (levels L, codebook size K) points of the Semantic-ID ablation; (3, 256) is the shipped config
LEVEL_GRID = ((2, 256), (3, 256), (4, 256), (3, 64), (3, 16))


def levels_worker(levels: int, size: int, out: Path) -> None:
    """Fit TIGER on `loo` seed 0 with L levels of K codes (else the shipped config); record it."""
    from recloop.benchmark import peak_rss_mb
    from recloop.datasets import movielens_100k
    from recloop.experiment import fit_and_evaluate, split_data
    from recloop.models.registry import build_model

    run = load_run_config_for("loo", "TIGER")
    cfg = json.loads(json.dumps(run.model.config))
    sid = cfg.setdefault("semantic_ids", {})
    sid.setdefault("rqvae", {}).update({"levels": levels, "codebook_size": size})
    cfg.update({"seed": 0, "cold_share": 0.0})  # cold_share: 0.0 was chosen on loo validation
    dataset = movielens_100k()
    split = split_data(dataset, run.data, 0)
    model = build_model("TIGER", cfg)
    result = fit_and_evaluate(model, split, dataset, progress=False)
    record = result.record("ml-100k", split).model_copy(
        update={
            "model": f"TIGER L={levels} K={size}",
            "peak_rss_mb": peak_rss_mb(),
            "metrics": {**result.test.metrics, **_collision_stats(model.sids_.codes)},
        }
    )
    print(
        f"L={levels} K={size}: test ndcg@10 {result.test.metrics['ndcg@10']:.4f} "
        f"(valid {result.valid.metrics['ndcg@10']:.4f}) in {result.train_seconds:.0f} s",
        file=sys.stderr,
    )
    (out / f"levels-{levels}-{size}.json").write_text(record.model_dump_json())


def load_run_config_for(protocol: str, label: str) -> Any:
    from recloop.runconfig import load_run_config

    return load_run_config(config_path(protocol, label))


def _collision_stats(codes: np.ndarray) -> dict[str, float]:
    """Share of items whose semantic codes (suffix excluded) another item shares; top suffix."""
    _, group, sizes = np.unique(codes[:, :-1], axis=0, return_inverse=True, return_counts=True)
    return {
        "collision_rate": float((sizes[group.ravel()] > 1).mean()),
        "max_suffix": float(codes[:, -1].max()),
    }


def shipped_point() -> BenchRecord:
    """(L=3, K=256) is the shipped config: its seed-0 `loo` record from the accuracy table,
    with the collision figures of the same Semantic IDs rebuilt as TIGER.fit builds them."""
    from recloop.datasets import movielens_100k
    from recloop.experiment import split_data
    from recloop.semantic_ids.build import SemanticIdConfig, SemanticIds

    loo = read_results(RESULTS / "generative_loo.json").records
    base = next(r for r in loo if r.model == "TIGER" and r.seed == 0)
    run = load_run_config_for("loo", "TIGER")
    dataset = movielens_100k()
    train = split_data(dataset, run.data, 0).train.positive()
    warm = np.bincount(train.item, minlength=train.n_items) > 0
    sid_config = SemanticIdConfig.model_validate(base.config["semantic_ids"])
    sids = SemanticIds.build(dataset.catalog, sid_config, fit_items=np.flatnonzero(warm))
    metrics = {**base.metrics, **_collision_stats(sids.codes)}
    return base.model_copy(update={"model": "TIGER L=3 K=256", "metrics": metrics})


def levels(points: list[tuple[int, int]]) -> None:
    """TIGER with each (L, K) of ``points`` in its own process; merged into the results file."""
    tmp = ROOT / "runs" / "bench" / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "generative_levels.json"
    for level_count, size in points:
        if (level_count, size) == (3, 256):
            record = shipped_point()
        else:
            cmd = [sys.executable, __file__, "--levels-worker", str(level_count), str(size)]
            subprocess.run(cmd, check=True)
            record = BenchRecord.model_validate_json(
                (tmp / f"levels-{level_count}-{size}.json").read_text()
            )
        write_levels(merge(path, [record], key=lambda r: r.model))


def write_levels(records: list[BenchRecord]) -> None:
    """The levels part's results file from its records (also `levels --rewrite`)."""
    write_results(
        "generative_levels",
        sorted(records, key=lambda r: r.model),
        title="TIGER ablation: Semantic-ID levels × codebook size",
        command="python bench/bench_generative.py levels",
        description=(
            "TIGER on `loo`, seed 0, the shipped config (`configs/ml-100k/loo/TIGER.toml`) "
            "with only the RQ-VAE's levels L and codebook size K changed; cold_share 0 (its "
            "value chosen on loo validation). L=3, K=256 is the shipped config: its row is "
            "the seed-0 record of the accuracy table (`generative_loo.json`) with the "
            "collision figures of its Semantic IDs rebuilt the same way. Wall times of the "
            "other rows include pauses while service benchmarks had the machine. Test "
            "NDCG@10 etc.; collision_rate: share of "
            "items whose L codes another item also has (before the suffix); max_suffix: the "
            "largest suffix code. One seed: differences under about 0.01 are within the "
            "seed-to-seed spread of the loo table."
        ),
        columns=["ndcg@10", "recall@10", "hit@10", "collision_rate", "max_suffix"],
        results_dir=RESULTS,
    )


def diagnostics() -> None:
    """The two facts the cold-start tables lean on, measured: how item index follows
    popularity, and how many cold items share a prefix with an item the decoder saw."""
    from scipy.stats import spearmanr

    from recloop.datasets import movielens_100k
    from recloop.experiment import split_data
    from recloop.runconfig import load_run_config
    from recloop.semantic_ids.build import SemanticIdConfig, SemanticIds

    dataset = movielens_100k()
    counts = np.bincount(dataset.interactions.item, minlength=dataset.interactions.n_items)
    rho = float(spearmanr(np.arange(len(counts)), counts).statistic)
    records = [
        make_record(
            dataset="ml-100k",
            protocol="all",
            seed=0,
            model="item index vs interactions",
            metrics={"spearman": rho},
        )
    ]
    run = load_run_config(config_path("cold_items", "TIGER"))
    sid_config = load_run_config(config_path("loo", "TIGER")).model.config["semantic_ids"]
    for seed in SEEDS:
        split = split_data(dataset, run.data, seed)
        warm = np.bincount(split.train.positive().item, minlength=split.n_items) > 0
        sids = SemanticIds.build(
            dataset.catalog,
            SemanticIdConfig.model_validate(sid_config),
            fit_items=np.flatnonzero(warm),
        )
        cold = np.flatnonzero(~warm)
        metrics: dict[str, float] = {"cold_items": float(len(cold))}
        for depth in range(1, sids.levels + 1):
            seen = {tuple(c) for c in sids.codes[warm, :depth]}
            shared = sum(tuple(c) in seen for c in sids.codes[cold, :depth])
            metrics[f"share_{depth}_codes"] = shared / max(len(cold), 1)
        records.append(
            make_record(
                dataset="ml-100k",
                protocol="cold_items",
                seed=seed,
                model="cold items sharing a warm prefix",
                metrics=metrics,
            )
        )
        print(seed, metrics, file=sys.stderr)
    write_results(
        "generative_diagnostics",
        records,
        title="Cold-start diagnostics",
        command="python bench/bench_generative.py diagnostics",
        description=(
            "Spearman correlation between an item's index (order of first appearance in "
            "MovieLens-100K) and its interaction count: the tie order that ID-only models' "
            "cold-only figures reflect. Then, per `cold_items` seed, the share of cold items "
            "whose first 1, 2, 3 Semantic-ID codes (TIGER's tokenizer, fitted on the items with "
            "train interactions) also start some item with train interactions: only those can "
            "be matched to a prefix the decoder was trained to generate."
        ),
        columns=["spearman", "cold_items", "share_1_codes", "share_2_codes", "share_3_codes"],
        results_dir=RESULTS,
    )


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        part, label, seeds = sys.argv[2], sys.argv[3], sys.argv[4]
        out = ROOT / "runs" / "bench" / "tmp"
        worker(part, label, [int(s) for s in seeds.split(",")], out)
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--levels-worker":
        levels_worker(int(sys.argv[2]), int(sys.argv[3]), ROOT / "runs" / "bench" / "tmp")
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "part",
        choices=["loo", "cold", "tokenizers", "latency", "ablations", "diagnostics", "levels"],
    )
    parser.add_argument("-m", "--model", action="append", help="labels to run (default: all)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument(
        "--points", help="levels part: comma-separated L:K pairs (default: the whole grid)"
    )
    parser.add_argument(
        "--rewrite", action="store_true", help="only re-write the part's JSON from its records"
    )
    args = parser.parse_args()
    if args.rewrite and args.part == "levels":
        write_levels(read_results(RESULTS / "generative_levels.json").records)
        subprocess.run([sys.executable, str(ROOT / "bench" / "make_docs.py")], check=True)
        return 0
    if args.rewrite and args.part in PARTS:
        write_accuracy(args.part, [])
        subprocess.run([sys.executable, str(ROOT / "bench" / "make_docs.py")], check=True)
        return 0
    if args.part in PARTS:
        labels = args.model or list(PARTS[args.part])
        unknown = set(labels) - set(PARTS[args.part])
        if unknown:
            parser.error(f"unknown model label(s) {sorted(unknown)} for {args.part}")
        accuracy(args.part, labels, [int(s) for s in args.seeds.split(",")])
        return 0
    elif args.part == "tokenizers":
        tokenizers()
    elif args.part == "latency":
        latency()
    elif args.part == "diagnostics":
        diagnostics()
    elif args.part == "levels":
        points = (
            [tuple(map(int, p.split(":"))) for p in args.points.split(",")]
            if args.points
            else list(LEVEL_GRID)
        )
        levels([(p[0], p[1]) for p in points])
    else:
        ablations()
    subprocess.run([sys.executable, str(ROOT / "bench" / "make_docs.py")], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
