"""The benchmark guard: a stored figure must still be reproducible by today's code.

Re-runs EASE on MovieLens-100K, seed 0, ``ratio``, with the stored record's config, and
checks NDCG@10 against ``bench/results/models.json`` within ±0.002.
"""

from __future__ import annotations

from pathlib import Path

from recloop.benchmark import read_results
from recloop.data import Dataset, make_split
from recloop.eval import evaluate
from recloop.models.registry import build_model

RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results" / "models.json"
TOLERANCE = 0.002


def test_ease_ndcg_matches_the_stored_record(ml100k: Dataset) -> None:
    stored = read_results(RESULTS)
    (record,) = [
        r
        for r in stored.records
        if r.model == "EASE" and r.protocol == "ratio" and r.seed == 0 and r.dataset == "ml-100k"
    ]
    split = make_split(ml100k.interactions, "ratio", seed=0)
    model = build_model("EASE", record.config).fit(split)
    result = evaluate(model, split.evaluation_set("test"), ks=(10,), progress=False)
    ndcg = result.metrics["ndcg@10"]
    assert abs(ndcg - record.metrics["ndcg@10"]) <= TOLERANCE, (
        f"EASE ndcg@10 {ndcg:.4f} differs from the stored {record.metrics['ndcg@10']:.4f}"
    )
