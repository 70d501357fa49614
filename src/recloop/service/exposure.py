"""The exposure audit of the running service: who and what the logged slates show.

From the slates logged over a window, with the offline audit's definitions
(:func:`recloop.eval.fairness.exposure_from_counts`): the Gini coefficient of impressions
over the whole catalogue, the share of impressions going to head, mid and tail items (by
stored positive events: head = the most popular items holding half of them, tail = the least
popular holding the last 20%, mid = the rest) and to each genre (an item of g genres counts
1/g to each), each against its share of the catalogue and of the stored interactions; and
each user segment's slates and reward rate. Served at ``GET /v1/fairness``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from recloop.eval.fairness import exposure_from_counts
from recloop.store.events import ItemRecord


def _share_table(table: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float | None]]:
    def num(value: float) -> float | None:
        return None if math.isnan(value) else float(value)

    return {
        name: {
            "items": num(row["items"]),
            "catalogue_share": num(row["catalog_share"]),
            "interaction_share": num(row["interaction_share"]),
            "impressions_share": num(row["exposure_share"]),
        }
        for name, row in table.items()
    }


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
    interactions = np.asarray([positive_counts.get(i, 0) for i in ids], dtype=np.float64)
    audit = exposure_from_counts(
        impressions, interactions, genres=[item.attributes.get("genres") for item in items]
    )
    total = int(impressions.sum())
    return {
        "window_s": window_s,
        "computed_at": time.time(),
        "impressions": total,
        "items_shown": int((impressions > 0).sum()),
        "catalogue": len(ids),
        "exposure_gini": float(audit.gini) if total else None,
        "bands": audit.band_rule,
        "by_popularity_band": _share_table(audit.bands),
        "by_genre": _share_table(audit.genres),
        "by_segment": {
            segment: {"slates": n, "ctr": hits / n if n else 0.0}
            for segment, (n, hits) in sorted(segments.items())
        },
    }
