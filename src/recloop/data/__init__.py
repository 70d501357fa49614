"""Data layer: ids, interactions, catalogue, users, loaders, filters, splits, synthetic data."""

from recloop.data.filters import Filters, apply_filters, deduplicate, k_core, rating_threshold
from recloop.data.split import (
    PROTOCOLS,
    EvalSet,
    Split,
    cold_items,
    loo,
    make_split,
    ratio,
    recbole_split_counts,
    temporal,
)
from recloop.data.types import (
    NEGATIVE_EVENTS,
    Catalog,
    Dataset,
    EventKind,
    Exclusions,
    IdMap,
    Interactions,
    Queries,
    Users,
)

__all__ = [
    "NEGATIVE_EVENTS",
    "PROTOCOLS",
    "Catalog",
    "Dataset",
    "EvalSet",
    "EventKind",
    "Exclusions",
    "Filters",
    "IdMap",
    "Interactions",
    "Queries",
    "Split",
    "Users",
    "apply_filters",
    "cold_items",
    "deduplicate",
    "k_core",
    "loo",
    "make_split",
    "rating_threshold",
    "ratio",
    "recbole_split_counts",
    "temporal",
]
