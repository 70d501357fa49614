"""Most-popular items: the non-personalised reference every model must beat."""

from __future__ import annotations

from pathlib import Path
from typing import Self

import numpy as np
from pydantic import Field

from recloop.data.split import Split
from recloop.data.types import Catalog, Exclusions, Interactions, Queries, Users
from recloop.models.base import (
    FittedState,
    ModelConfig,
    exclusion_matrix,
    read_artifact,
    top_k,
    train_interactions,
    write_artifact,
)


class PopularConfig(ModelConfig):
    """Popularity counts distinct users per item (``users``) or all rows (``interactions``)."""

    count: str = Field(default="users", pattern="^(users|interactions)$")


class Popular(FittedState):
    """Scores every item by its train popularity; the same list for every user."""

    def __init__(self, config: PopularConfig | None = None) -> None:
        self.config = config or PopularConfig()

    def fit(
        self,
        data: Split | Interactions,
        catalog: Catalog | None = None,
        users: Users | None = None,
    ) -> Self:
        train = train_interactions(data).positive()
        if self.config.count == "users":
            counts = np.asarray(train.to_csr().sum(axis=0)).ravel()
        else:
            counts = np.bincount(train.item, minlength=train.n_items)
        self.popularity_ = counts.astype(np.float32)
        self.n_items_ = train.n_items
        return self

    def score(self, queries: Queries) -> np.ndarray:
        self._check_fitted()
        return np.broadcast_to(self.popularity_, (len(queries), self.n_items_)).copy()

    def recommend(
        self, queries: Queries, k: int, exclude: Exclusions | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        self._check_fitted()
        return top_k(self.score(queries), k, exclusion_matrix(queries, exclude, self.n_items_))

    def save(self, path: Path) -> None:
        self._check_fitted()
        write_artifact(path, "Popular", self.config, {"popularity": self.popularity_})

    @classmethod
    def load(cls, path: Path) -> Self:
        manifest, arrays = read_artifact(path, "Popular")
        model = cls(PopularConfig(**manifest["config"]))
        model.popularity_ = arrays["popularity"]
        model.n_items_ = len(model.popularity_)
        return model
