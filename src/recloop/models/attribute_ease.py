"""AttributeEASE: EASE over the items plus one-hot user attributes as "pseudo-items".

The binary users × items matrix ``X`` is widened with ``α·A``, where ``A`` one-hot encodes each
user's attributes (age band, gender, occupation by default): ``X' = [X | α·A]``. EASE's closed
form (Steck 2019) on ``X'`` gives ``B' = I − P · diag(1/diag(P))`` with ``P = (X'ᵀX' + λI)⁻¹``
and a zero diagonal; only the item columns of ``B'`` are kept, so

    score(u) = history_u · B'[items, items] + α · a_u · B'[attributes, items].

The attribute rows learn which items users of an age band, gender or occupation take beyond
what their history says, and the item-item block is fitted with the attributes as extra
regressors. Why this model: it is the smallest change to the strongest baseline that makes the
scores depend on user attributes, so the counterfactual flip test has something to measure,
and it is closed form (about EASE's cost: the catalogue plus a few dozen columns).

Attributes at recommendation time come from ``Queries.user_attributes`` when the query carries
them (per attribute), else from the attributes the model was fitted with for a known user;
an unknown user without attributes gets none (a zero ``a_u``: plain EASE on the history). A
value never seen in training also encodes as zero.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from pydantic import Field

from recloop.data.types import Catalog, Interactions, Queries, Users
from recloop.errors import ConfigError, RecloopError
from recloop.eval.segments import age_band
from recloop.models.base import ModelConfig, ScoringRecommender
from recloop.models.ease import GIB, available_memory_bytes, estimate_memory_bytes

ATTRIBUTES_FILE = "attributes.json"
BANDED = frozenset({"age"})
"""Attributes encoded by band (``recloop.eval.segments.age_band``) rather than by value."""


class AttributeEASEConfig(ModelConfig):
    """EASE's L2 penalty, the weight of the attribute columns and which attributes to read."""

    l2: float = Field(default=300.0, gt=0.0, description="λ added to the Gram diagonal.")
    attribute_weight: float = Field(
        default=1.0,
        gt=0.0,
        allow_inf_nan=False,
        description="α: the value of an attribute pseudo-item in X' (a history item is 1).",
    )
    attributes: tuple[str, ...] = Field(
        default=("age", "gender", "occupation"),
        min_length=1,
        description="User attributes to encode; 'age' is encoded by age band.",
    )


def _encode(attribute: str, value: Any) -> str | None:
    """The category of one attribute value, or ``None`` when it is missing."""
    if attribute in BANDED:
        return age_band(value)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value)
    return text or None


class AttributeEASE(ScoringRecommender):
    """EASE with user-attribute pseudo-items, so protected attributes can move the scores."""

    config_class = AttributeEASEConfig
    config: AttributeEASEConfig

    def _fit(self, train: Interactions, catalog: Catalog | None, users: Users | None) -> None:
        cfg = self.config
        if users is None:
            raise ConfigError("AttributeEASE reads user attributes: pass users to fit()")
        if len(users) < train.n_users:
            raise ConfigError(
                f"users has {len(users)} entries, the interactions {train.n_users} users"
            )
        missing = [a for a in cfg.attributes if a not in users.attributes]
        if missing:
            known = ", ".join(sorted(users.attributes)) or "none"
            raise ConfigError(f"users have no attribute {missing[0]!r} (known: {known})")
        self.vocabulary_ = {
            attribute: sorted(
                {c for v in users.attributes[attribute] if (c := _encode(attribute, v))}
            )
            for attribute in cfg.attributes
        }
        self._offsets()
        raw = {a: users.attributes[a][: train.n_users] for a in cfg.attributes}
        self.user_codes_ = self._codes(raw, train.n_users)
        n_items, n_attr = train.n_items, self.n_attribute_columns_
        width = n_items + n_attr
        self._check_memory(width)
        x = sp.hstack(
            [
                train.to_csr().astype(np.float64),
                cfg.attribute_weight * self._one_hot(self.user_codes_),
            ],
            format="csr",
        )
        gram = np.asarray((x.T @ x).toarray(), dtype=np.float64, order="F")
        gram[np.diag_indices(width)] += cfg.l2
        inverse = scipy.linalg.inv(gram, overwrite_a=True, check_finite=False)
        weights = inverse / -np.diag(inverse)[None, :]
        weights[np.diag_indices(width)] = 0.0
        self.weights_ = np.ascontiguousarray(weights[:, :n_items], dtype=np.float32)

    def _check_memory(self, width: int) -> None:
        available = available_memory_bytes()
        need = estimate_memory_bytes(width, np.float64)
        if available is not None and need > available:
            raise RecloopError(
                f"AttributeEASE needs about {need / GIB:.1f} GiB for its {width:,} × {width:,} "
                f"matrix but only {available / GIB:.1f} GiB is available; filter the catalogue"
            )

    def _offsets(self) -> None:
        """First column of each attribute's block among the attribute columns."""
        self.offsets_: dict[str, int] = {}
        start = 0
        for attribute in self.config.attributes:
            self.offsets_[attribute] = start
            start += len(self.vocabulary_[attribute])
        self.n_attribute_columns_ = start

    def _codes(self, values: dict[str, Any], n: int) -> np.ndarray:
        """(n × attributes) column index within each attribute's block, −1 where unknown."""
        codes = np.full((n, len(self.config.attributes)), -1, dtype=np.int32)
        for j, attribute in enumerate(self.config.attributes):
            column = values.get(attribute)
            if column is None:
                continue
            if len(column) != n:
                raise RecloopError(f"attribute {attribute!r} has {len(column)} values for {n}")
            lookup = {c: i for i, c in enumerate(self.vocabulary_[attribute])}
            for row, value in enumerate(column):
                code = _encode(attribute, value)
                codes[row, j] = lookup.get(code, -1) if code is not None else -1
        return codes

    def _one_hot(self, codes: np.ndarray) -> sp.csr_matrix:
        """The attribute block ``A`` (rows × attribute columns) from per-attribute codes."""
        starts = np.array([self.offsets_[a] for a in self.config.attributes], dtype=np.int64)
        known = codes >= 0
        rows = np.nonzero(known)[0]
        cols = (codes + starts[None, :])[known]
        return sp.csr_matrix(
            (np.ones(len(rows)), (rows, cols)), shape=(len(codes), self.n_attribute_columns_)
        )

    def query_codes(self, queries: Queries) -> np.ndarray:
        """Each query's attribute codes: its own attributes first, else the fitted user's."""
        n = len(queries)
        user = queries.user.astype(np.int64)
        known = (user >= 0) & (user < self.n_users_)
        codes = np.full((n, len(self.config.attributes)), -1, dtype=np.int32)
        codes[known] = self.user_codes_[user[known]]
        given = queries.user_attributes
        if given:
            mine = {a: given[a] for a in self.config.attributes if a in given}
            if mine:
                override = self._codes(mine, n)
                for j, attribute in enumerate(self.config.attributes):
                    if attribute in mine:
                        codes[:, j] = override[:, j]
        return codes

    def _score(self, queries: Queries) -> np.ndarray:
        n_items = self.n_items_
        history = queries.history_csr(n_items)
        attrs = self._one_hot(self.query_codes(queries)).astype(np.float32)
        scores = history @ self.weights_[:n_items]
        scores += self.config.attribute_weight * (attrs @ self.weights_[n_items:])
        return np.asarray(scores, dtype=np.float32)

    def _state(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights_, "user_codes": self.user_codes_}

    def _set_state(self, arrays: dict[str, np.ndarray], manifest: dict[str, Any]) -> None:
        self.weights_ = arrays["weights"]
        self.user_codes_ = arrays["user_codes"]

    def _save_extra(self, path: Path) -> None:
        (path / ATTRIBUTES_FILE).write_text(json.dumps(self.vocabulary_, indent=2) + "\n")

    def _load_extra(self, path: Path) -> None:
        try:
            vocabulary = json.loads((path / ATTRIBUTES_FILE).read_text())
        except FileNotFoundError:
            raise RecloopError(
                f"{path}: no {ATTRIBUTES_FILE}; the artifact is incomplete"
            ) from None
        except json.JSONDecodeError as exc:
            raise RecloopError(f"{path / ATTRIBUTES_FILE}: invalid JSON ({exc})") from None
        if sorted(vocabulary) != sorted(self.config.attributes):
            raise RecloopError(f"{path / ATTRIBUTES_FILE}: attributes do not match the config")
        self.vocabulary_ = {a: [str(v) for v in vocabulary[a]] for a in self.config.attributes}
        self._offsets()
