"""Popular: the shared contract (exempt from the planted Hit@10 floor) and its count option."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from recloop.data import Interactions, Queries
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
