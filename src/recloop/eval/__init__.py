"""Evaluation: full-ranking metrics, beyond-accuracy metrics, segment breakdowns, bootstrap.

Definitions match docs/evaluation.md (and the literature) exactly; every metric has a plain
per-user reference implementation in the tests.
"""

from recloop.eval.beyond import (
    BEYOND_METRICS,
    BeyondAccuracy,
    average_popularity,
    beyond_accuracy,
    coverage,
    exposure_counts,
    exposure_gini,
    genre_matrix,
    gini,
    intra_list_diversity,
    item_popularity,
    novelty,
)
from recloop.eval.bootstrap import BootstrapResult, compare, paired_bootstrap
from recloop.eval.evaluate import PROTOCOL, EvalResult, Ranker, evaluate
from recloop.eval.metrics import (
    METRICS,
    RankingMetrics,
    hit_matrix,
    ideal_dcg,
    metric_name,
    metrics_from_hits,
    ranking_metrics,
)
from recloop.eval.segments import (
    ACTIVITY_LEVELS,
    AGE_BANDS,
    ITEM_BANDS,
    SegmentTable,
    activity_terciles,
    age_band,
    band_ranking_metrics,
    breakdown,
    exposure_share,
    head_items,
    item_band_breakdown,
    user_segments,
)

__all__ = [
    "ACTIVITY_LEVELS",
    "AGE_BANDS",
    "BEYOND_METRICS",
    "ITEM_BANDS",
    "METRICS",
    "PROTOCOL",
    "BeyondAccuracy",
    "BootstrapResult",
    "EvalResult",
    "Ranker",
    "RankingMetrics",
    "SegmentTable",
    "activity_terciles",
    "age_band",
    "average_popularity",
    "band_ranking_metrics",
    "beyond_accuracy",
    "breakdown",
    "compare",
    "coverage",
    "evaluate",
    "exposure_counts",
    "exposure_gini",
    "exposure_share",
    "genre_matrix",
    "gini",
    "head_items",
    "hit_matrix",
    "ideal_dcg",
    "intra_list_diversity",
    "item_band_breakdown",
    "item_popularity",
    "metric_name",
    "metrics_from_hits",
    "novelty",
    "paired_bootstrap",
    "ranking_metrics",
    "user_segments",
]
