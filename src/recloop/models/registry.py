"""The explicit table of model names → classes (no importlib lookups by string)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from recloop.errors import ConfigError
from recloop.models.attribute_ease import AttributeEASE
from recloop.models.base import ScoringRecommender
from recloop.models.bpr import BPR
from recloop.models.content_knn import ContentKNN
from recloop.models.diffrec import DiffRec
from recloop.models.dp import DPMultDAE
from recloop.models.ease import EASE
from recloop.models.ips_bpr import IPSBPR
from recloop.models.itemknn import ItemKNN
from recloop.models.multvae import MultDAE, MultVAE
from recloop.models.popular import Popular
from recloop.models.sasrec import SASRec
from recloop.models.sid_sasrec import SIDSASRec
from recloop.models.tiger import TIGER

Model = ScoringRecommender | TIGER
"""Every registered model: the scoring models and the generative retriever."""

MODELS: dict[str, type[Model]] = {
    "Popular": Popular,
    "ItemKNN": ItemKNN,
    "EASE": EASE,
    "BPR": BPR,
    "MultVAE": MultVAE,
    "MultDAE": MultDAE,
    "DPMultDAE": DPMultDAE,
    "DiffRec": DiffRec,
    "SASRec": SASRec,
    "ContentKNN": ContentKNN,
    "SIDSASRec": SIDSASRec,
    "TIGER": TIGER,
    "AttributeEASE": AttributeEASE,
    "IPSBPR": IPSBPR,
}


def model_class(name: str) -> type[Model]:
    try:
        return MODELS[name]
    except KeyError:
        known = ", ".join(MODELS)
        raise ConfigError(f"unknown model {name!r} (known: {known})") from None


def build_model(name: str, config: dict[str, Any] | None = None) -> Model:
    """A model from its class name and a plain dict of hyper-parameters, validated."""
    cls = model_class(name)
    try:
        cfg = cls.config_class(**(config or {}))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "config"
        raise ConfigError(f"{name} config field '{where}': {err['msg']}") from None
    return cls(cfg)
