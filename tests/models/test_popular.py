"""Popular: the shared contract (exempt from the planted Hit@10 floor) and its count option."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from recloop.data import Exclusions, Interactions, Queries
from recloop.models.base import ModelConfig
from recloop.models.popular import Popular, PopularConfig

from .contract import ModelContract


class TestPopularContract(ModelContract):
    model_class = Popular
    personalised = False
    invalid_configs: ClassVar = [{"count": "clicks"}, {"count": None}]

    def make_config(self) -> ModelConfig:
        return PopularConfig()


def test_counts_users_or_interactions() -> None:
    # item 0: one user three times; item 1: two users once each; item 2: once
    data = Interactions.from_arrays([0, 0, 0, 1, 2, 3], [0, 0, 0, 1, 1, 2])
    query = Queries.from_lists([-1], [[2]])
    by_users = Popular(PopularConfig(count="users")).fit(data)
    by_rows = Popular(PopularConfig(count="interactions")).fit(data)
    np.testing.assert_array_equal(by_users.score(query)[0], [1, 2, 1])
    np.testing.assert_array_equal(by_rows.score(query)[0], [3, 2, 1])
    assert by_users.recommend(query, 1)[0][0, 0] == 1
    assert by_rows.recommend(query, 1)[0][0, 0] == 0


def test_empty_histories_get_the_configured_counts() -> None:
    """count="interactions" serves one list to everyone, empty history or not."""
    # item 0: one user three times (most rows); item 1: two users (most users)
    data = Interactions.from_arrays([0, 0, 0, 1, 2, 3], [0, 0, 0, 1, 1, 2])
    model = Popular(PopularConfig(count="interactions")).fit(data)
    queries = Queries.from_lists([-1, 0, -1], [[], [], [2]])
    scores = model.score(queries)
    np.testing.assert_array_equal(scores, np.tile([3.0, 2.0, 1.0], (3, 1)))
    none = Exclusions.from_lists([[], [], []])
    items, _ = model.recommend(queries, 3, none)
    assert (items == [0, 1, 2]).all()
    assert model.recommend_labelled(queries, 3)[2].tolist() == ["popular", "popular", "Popular"]
