"""Which catalogue items may be shown right now: the cached visibility windows.

Shared by every route that recommends (recommendations, similar items, onboarding,
conversations), so hidden and unavailable items are excluded the same way everywhere.
"""

from __future__ import annotations

import json
from typing import Any

ITEM_WINDOWS = "item-windows"  # cache key of the restricted items' visibility


def blocked_items(state: Any, now: float) -> set[str]:
    """Items that may not be shown at ``now``: hidden, or outside their availability window.

    The restricted items' windows are cached (every item change invalidates the cache in every
    worker) and the decision is made here at each request, so a window that opens or closes
    takes effect at once.
    """
    raw = state.cache.get(ITEM_WINDOWS)
    if raw is None:
        token = state.cache.token()  # an item change while we read must not be undone
        windows = state.store.item_windows()
        state.cache.set(ITEM_WINDOWS, json.dumps(windows).encode(), token=token)
    else:
        windows = json.loads(raw)
    return {
        item
        for item, hidden, start, end in windows
        if hidden or (start is not None and now < start) or (end is not None and now > end)
    }
