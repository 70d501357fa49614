"""ContentKNN: the shared contract and scoring by text alone."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest

from recloop.errors import RecloopError
from recloop.models.base import ModelConfig
from recloop.models.content_knn import ContentKNN, ContentKNNConfig

from .contract import ModelContract, planted, planted_catalog

FAST = {"embedder": {"kind": "tfidf", "dim": 16}}


class TestContentKNNContract(ModelContract):
    model_class = ContentKNN
    uses_catalog = True
    artifact_files: ClassVar = ["embedder", "manifest.json", "weights.safetensors"]
    invalid_configs: ClassVar = [{"max_len": 0}, {"embedder": {"kind": "word2vec"}}]

    def make_config(self) -> ModelConfig:
        return ContentKNNConfig(**FAST)  # type: ignore[arg-type]


def test_scores_are_cosine_to_the_mean_history_vector() -> None:
    data = planted()
    model = ContentKNN(ContentKNNConfig(**FAST)).fit(data.train, catalog=planted_catalog())  # type: ignore[arg-type]
    v = model.vectors_
    history = data.queries.history(0)
    profile = v[history[-50:]].sum(axis=0)
    profile /= np.linalg.norm(profile)
    np.testing.assert_allclose(model.score(data.queries)[0], v @ profile, rtol=1e-5, atol=1e-6)


def test_max_len_keeps_the_most_recent_items() -> None:
    data = planted()
    model = ContentKNN(ContentKNNConfig(**FAST, max_len=2)).fit(  # type: ignore[arg-type]
        data.train, catalog=planted_catalog()
    )
    v = model.vectors_
    last = data.queries.history(0)[-2:]
    profile = v[last].sum(axis=0)
    profile /= np.linalg.norm(profile)
    np.testing.assert_allclose(model.score(data.queries)[0], v @ profile, rtol=1e-5, atol=1e-6)


def test_new_items_scored_from_text() -> None:
    data = planted()
    model = ContentKNN(ContentKNNConfig(**FAST)).fit(data.train, catalog=planted_catalog())  # type: ignore[arg-type]
    new = model.add_items(["Film 900. Genres: drama, drama cinema"])
    scores = model.score(data.queries)
    fans = data.group == 0
    assert scores[fans, new[0]].mean() > scores[~fans, new[0]].mean()


def test_needs_a_catalogue() -> None:
    with pytest.raises(RecloopError, match="catalog"):
        ContentKNN(ContentKNNConfig(**FAST)).fit(planted().train)  # type: ignore[arg-type]
