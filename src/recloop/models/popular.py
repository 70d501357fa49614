"""Most-popular items: the non-personalised reference every model must beat."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from recloop.data.types import Catalog, Interactions, Queries, Users
from recloop.models.base import ModelConfig, ScoringRecommender


class PopularConfig(ModelConfig):
    """Popularity counts distinct users per item (``users``) or all positive rows."""

    count: Literal["users", "interactions"] = Field(default="users")


class Popular(ScoringRecommender):
    """Scores every item by its train popularity; the same list for every user."""

    config_class = PopularConfig
    config: PopularConfig

    def _fit(self, train: Interactions, catalog: Catalog | None, users: Users | None) -> None:
        # the configured count is the popularity: empty histories get the same list
        if self.config.count == "interactions":
            self.popularity_ = np.bincount(train.item, minlength=train.n_items).astype(np.float32)

    def _score(self, queries: Queries) -> np.ndarray:
        return np.broadcast_to(self.popularity_, (len(queries), self.n_items_)).copy()

    def _state(self) -> dict[str, np.ndarray]:
        return {}

    def _set_state(self, arrays: dict[str, np.ndarray], manifest: dict[str, object]) -> None:
        if "counts" in arrays:  # artifacts saved before the count was the popularity itself
            self.popularity_ = arrays["counts"]
