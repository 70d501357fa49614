"""Recommendation models, all behind the :class:`Recommender` contract."""

from recloop.models.base import ModelConfig, Recommender, top_k
from recloop.models.popular import Popular, PopularConfig

__all__ = ["ModelConfig", "Popular", "PopularConfig", "Recommender", "top_k"]
