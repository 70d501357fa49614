"""The exposure audit of the running service: who and what the logged slates show.

From the slates logged over a window: the Gini coefficient of impressions over the whole
catalogue, the share of impressions going to head, mid and tail items (by stored positive
events: head = the most popular items that together hold half of them, mid = the next 30%,
tail = the rest) against each band's share of the catalogue, the same by genre, and each user
segment's slates and reward rate. Served at ``GET /v1/fairness``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from recloop.eval.beyond import gini
from recloop.store.events import ItemRecord

BANDS = (("head", 0.5), ("mid", 0.8), ("tail", 1.0))  # cumulative share of positive events


def popularity_bands(item_ids: Sequence[str], counts: Mapping[str, int]) -> dict[str, str]:
    """Each item's band by its share of the stored positive events (module docstring)."""
    pop = np.asarray([counts.get(i, 0) for i in item_ids], dtype=np.float64)
    order = np.argsort(-pop, kind="stable")
    total = pop.sum()
    cumulative = np.cumsum(pop[order]) / total if total > 0 else np.ones(len(order))
    out: dict[str, str] = {}
    for rank, index in enumerate(order):
        before = cumulative[rank - 1] if rank else 0.0
        band = next(name for name, upper in BANDS if before < upper or upper == 1.0)
        out[item_ids[index]] = band
    return out


def _genres(item: ItemRecord) -> list[str]:
    value = item.attributes.get("genres")
    if isinstance(value, str):
        return [g for g in value.replace("|", " ").split() if g]
    if isinstance(value, list):
        return [str(g) for g in value]
    return []


def exposure_audit(
    items: Sequence[ItemRecord],
    positive_counts: Mapping[str, int],
    shown: Mapping[str, int],
    segments: Mapping[str, tuple[int, int]],
    window_s: float,
) -> dict[str, Any]:
    """The audit's JSON (see the module docstring)."""
    ids = [item.item_id for item in items]
    impressions = np.asarray([shown.get(i, 0) for i in ids], dtype=np.float64)
    total = float(impressions.sum())
    bands = popularity_bands(ids, positive_counts)
    by_band: dict[str, dict[str, float]] = {}
    for name, _ in BANDS:
        members = [k for k, i in enumerate(ids) if bands.get(i) == name]
        by_band[name] = {
            "items": float(len(members)),
            "catalogue_share": len(members) / len(ids) if ids else 0.0,
            "impressions_share": float(impressions[members].sum()) / total if total else 0.0,
        }
    genre_shown: dict[str, float] = {}
    genre_items: dict[str, float] = {}
    for item, count in zip(items, impressions, strict=True):
        genres = _genres(item)
        for genre in genres:
            genre_shown[genre] = genre_shown.get(genre, 0.0) + count / len(genres)
            genre_items[genre] = genre_items.get(genre, 0.0) + 1.0 / len(genres)
    by_genre = {
        genre: {
            "catalogue_share": genre_items[genre] / len(ids),
            "impressions_share": genre_shown[genre] / total if total else 0.0,
        }
        for genre in sorted(genre_items)
    }
    return {
        "window_s": window_s,
        "computed_at": time.time(),
        "impressions": int(total),
        "items_shown": int((impressions > 0).sum()),
        "catalogue": len(ids),
        "exposure_gini": float(gini(impressions)) if total else None,
        "by_popularity_band": by_band,
        "by_genre": by_genre,
        "by_segment": {
            segment: {"slates": n, "ctr": hits / n if n else 0.0}
            for segment, (n, hits) in sorted(segments.items())
        },
    }
