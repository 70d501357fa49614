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
        if self.config.count == "interactions":
            self.counts_ = np.bincount(train.item, minlength=train.n_items).astype(np.float32)
        else:
            self.counts_ = self.popularity_.copy()

    def _score(self, queries: Queries) -> np.ndarray:
        return np.broadcast_to(self.counts_, (len(queries), self.n_items_)).copy()

    def score(self, queries: Queries) -> np.ndarray:
        """The configured counts for every query: an empty history gets them too, not the
        distinct-user popularity the base class fills in, so everyone gets one list."""
        scores = super().score(queries)
        scores[queries.history_lengths() == 0] = self.counts_
        return scores

    def _state(self) -> dict[str, np.ndarray]:
        return {"counts": self.counts_}

    def _set_state(self, arrays: dict[str, np.ndarray], manifest: dict[str, object]) -> None:
        self.counts_ = arrays["counts"]
