"""Recommendation models, all behind the :class:`Recommender` contract."""

from recloop.models.base import ModelConfig, Recommender, ScoringRecommender, top_k
from recloop.models.bpr import BPR, BPRConfig
from recloop.models.ease import EASE, EASEConfig
from recloop.models.itemknn import ItemKNN, ItemKNNConfig
from recloop.models.multvae import MultDAE, MultDAEConfig, MultVAE, MultVAEConfig
from recloop.models.popular import Popular, PopularConfig
from recloop.models.registry import MODELS, build_model, model_class

__all__ = [
    "BPR",
    "EASE",
    "MODELS",
    "BPRConfig",
    "EASEConfig",
    "ItemKNN",
    "ItemKNNConfig",
    "ModelConfig",
    "MultDAE",
    "MultDAEConfig",
    "MultVAE",
    "MultVAEConfig",
    "Popular",
    "PopularConfig",
    "Recommender",
    "ScoringRecommender",
    "build_model",
    "model_class",
    "top_k",
]
