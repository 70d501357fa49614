"""Re-ranking trade-off: NDCG@10 against intra-list diversity and novelty as MMR's λ varies.

python bench/bench_loop_rerank.py              # writes bench/results/loop_rerank.json
python bench/bench_loop_rerank.py --no-text    # genre embeddings only (skips MiniLM)

MovieLens-100K, ``ratio`` split seed 0, EASE with its tuned config
(``configs/ml-100k/ratio/EASE.toml``) fitted on train. Each test user's EASE top 100 (train
and validation items excluded, as in evaluation) is the one candidate source of
:class:`recloop.engine.blend.Blender`, which re-ranks it with MMR over item embeddings: the
genre multi-hot vectors, and the all-MiniLM-L6-v2 text embeddings when available. Metrics come
from ``recloop.eval`` (the definitions of every other benchmark).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from recloop.benchmark import BenchRecord, make_record, write_results
from recloop.engine.blend import BlendConfig, Blender, SourceCandidates
from recloop.eval import (
    coverage,
    genre_matrix,
    intra_list_diversity,
    item_popularity,
    novelty,
    ranking_metrics,
)
from recloop.experiment import load_data, split_data
from recloop.models import EASE, build_model, top_k
from recloop.runconfig import load_run_config

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "ml-100k" / "ratio" / "EASE.toml"
LAMBDAS = (1.0, 0.9, 0.8, 0.7, 0.5, 0.3)
NOVELTY_WEIGHT = 0.2
POOL = 100
K = 10
TEXT_BUDGET_S = 60.0
COLUMNS = ["ndcg@10", "recall@10", "ild@10", "novelty@10", "coverage@10", "blend_us_per_user"]
DESCRIPTION = (
    "A trade-off curve, not a tuning: no λ is chosen here, every value is reported on the test "
    "set. MovieLens-100K, ratio split seed 0; EASE (tuned config) fitted on train gives each "
    f"test user its top {POOL} (train and validation items excluded) as the one candidate "
    "source; `recloop.engine.blend.Blender` (rank normalisation) re-ranks it to a top 10 with "
    "greedy MMR, λ·relevance − (1−λ)·max cosine to the items already chosen, over the items' "
    "genre multi-hot vectors (`embeddings=genres`) or all-MiniLM-L6-v2 embeddings of "
    "'Title (Year). Genres: …' (`embeddings=minilm`). λ = 1 is plain EASE. One row adds "
    f"novelty_weight {NOVELTY_WEIGHT} × novelty (−log2 p scaled to [0, 1]) to relevance at "
    "λ = 1. ild@10 is the mean pairwise 1 − Jaccard of genres and novelty@10 the mean −log2 p "
    "(p = (train users + 1) / (users + 1)), both from `recloop.eval`. blend_us_per_user: mean "
    "wall time of one user's blend (100 candidates, 1 source, k = 10), single process."
)


def text_embeddings(texts: list[str], budget_s: float) -> np.ndarray | None:
    """MiniLM embeddings of ``texts`` (disk-cached), or None if unavailable or too slow."""
    try:
        from recloop.semantic_ids.embed import EmbedderConfig, embed_items, make_embedder

        started = time.perf_counter()
        vectors = embed_items(texts, make_embedder(EmbedderConfig()))
    except Exception as exc:  # optional part: a missing model must not stop the bench
        print(f"skipping MiniLM embeddings: {exc}")
        return None
    seconds = time.perf_counter() - started
    print(f"MiniLM embeddings: {vectors.shape} in {seconds:.1f} s")
    if seconds > budget_s:
        print(f"skipping MiniLM rows: embedding took more than {budget_s:.0f} s")
        return None
    return vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-text", action="store_true", help="skip the MiniLM embeddings")
    args = parser.parse_args()
    began = time.perf_counter()

    run = load_run_config(CONFIG)
    dataset, name = load_data(run.data)
    split = split_data(dataset, run.data, seed=0)
    model = build_model(run.model.name, run.model.config)
    assert isinstance(model, EASE) and dataset.catalog is not None
    started = time.perf_counter()
    model.fit(split, catalog=dataset.catalog, users=dataset.users)
    train_seconds = time.perf_counter() - started

    eval_set = split.evaluation_set("test")
    n_items = split.n_items
    scores = model.score(eval_set.queries)
    pool, pool_scores = top_k(scores, POOL, eval_set.exclude.to_csr(n_items))
    popularity = item_popularity(split.train)
    genres = dataset.catalog.attribute("genres")
    genre_mat = genre_matrix(genres)

    embeddings: dict[str, np.ndarray] = {"genres": genre_mat.toarray()}
    if not args.no_text:
        from recloop.semantic_ids.embed import MOVIELENS_TEMPLATE, ItemTextBuilder

        texts = ItemTextBuilder(template=MOVIELENS_TEMPLATE).texts(dataset.catalog)
        vectors = text_embeddings(texts, TEXT_BUDGET_S)
        if vectors is not None:
            embeddings["minilm"] = vectors

    settings = [("genres", lam, 0.0) for lam in LAMBDAS] + [("genres", 1.0, NOVELTY_WEIGHT)]
    settings += [(e, lam, 0.0) for e in embeddings if e != "genres" for lam in LAMBDAS]
    records: list[BenchRecord] = []
    print(f"{'embeddings':>10} {'λ':>4} {'nov.w':>5}  ndcg@10 recall@10 ild@10 novelty@10  µs/user")
    for emb_name, lam, weight in settings:
        config = BlendConfig(mmr_lambda=lam, novelty_weight=weight)
        blender = Blender(config, embeddings=embeddings[emb_name], popularity=popularity)
        recs = np.full((len(eval_set), K), -1, dtype=np.int64)
        started = time.perf_counter()
        for row in range(len(eval_set)):
            keep = pool[row] >= 0
            source = SourceCandidates("EASE", pool[row][keep], pool_scores[row][keep])
            out = blender.blend([source], K)
            recs[row, : len(out)] = out.items
        blend_us = (time.perf_counter() - started) / len(eval_set) * 1e6
        ranking = ranking_metrics(
            recs, eval_set.targets_indptr, eval_set.targets_items, (K,), ("ndcg", "recall")
        )
        metrics = dict(ranking.means)
        metrics["ild@10"] = float(np.nanmean(intra_list_diversity(recs, genre_mat, K)))
        metrics["novelty@10"] = float(np.nanmean(novelty(recs, popularity, K)))
        metrics["coverage@10"] = coverage(recs, n_items, K)
        metrics["blend_us_per_user"] = blend_us
        print(
            f"{emb_name:>10} {lam:>4} {weight:>5}  {metrics['ndcg@10']:.4f}  "
            f"{metrics['recall@10']:.4f}    {metrics['ild@10']:.4f} {metrics['novelty@10']:.4f}"
            f"      {blend_us:.0f}"
        )
        cfg: dict[str, object] = {"mmr_lambda": lam, "embeddings": emb_name}
        if weight:
            cfg["novelty_weight"] = weight
        records.append(
            make_record(
                dataset=name,
                protocol="ratio",
                seed=0,
                model="EASE+MMR",
                config=cfg,
                metrics=metrics,
                train_seconds=train_seconds,
            )
        )
    path = write_results(
        "loop_rerank",
        records,
        title="Re-ranking trade-off: relevance against diversity and novelty (EASE + MMR)",
        command="python bench/bench_loop_rerank.py",
        description=DESCRIPTION,
        columns=COLUMNS,
    )
    print(f"wrote {path} in {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
