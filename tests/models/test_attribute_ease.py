"""AttributeEASE: the shared contract, the closed form and how attributes move the scores."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from recloop.data import IdMap, Interactions, Queries, Split, Users
from recloop.errors import ConfigError, RecloopError
from recloop.models.attribute_ease import AttributeEASE, AttributeEASEConfig
from recloop.models.base import ModelConfig
from recloop.models.registry import build_model

from .contract import BLOCK, ModelContract, planted

AGES = (16, 22, 30, 40)  # one age band per planted group
JOBS = ("student", "artist", "engineer", "doctor")


@lru_cache(maxsize=1)
def planted_users() -> Users:
    """Attributes that lean towards the planted groups: the age band and the occupation match
    the user's group for about 70% of users (else are random); gender is random."""
    data = planted()
    rng = np.random.default_rng(3)
    n = len(data.group)

    def noisy(values: tuple[Any, ...]) -> list[Any]:
        match = rng.random(n) < 0.7
        return [
            values[g] if m else values[rng.integers(len(values))]
            for g, m in zip(data.group, match, strict=True)
        ]

    return Users(
        data.train.users,
        {
            "age": noisy(AGES),
            "gender": rng.choice(["M", "F"], size=n).tolist(),
            "occupation": noisy(JOBS),
        },
    )


class TestAttributeEASEContract(ModelContract):
    model_class = AttributeEASE
    artifact_files: ClassVar[list[str]] = [
        "manifest.json",
        "weights.safetensors",
        "attributes.json",
    ]
    invalid_configs: ClassVar = [
        {"l2": 0.0},
        {"attribute_weight": 0.0},
        {"attribute_weight": float("inf")},
        {"attributes": ()},
        {"l2": "lots"},
    ]

    def make_config(self) -> ModelConfig:
        return AttributeEASEConfig(l2=10.0)

    def fit(self, model: Any, data: Split | Interactions) -> Any:
        return model.fit(data, users=planted_users())


@pytest.fixture(scope="module")
def model() -> AttributeEASE:
    return AttributeEASE(AttributeEASEConfig(l2=10.0, attribute_weight=2.0)).fit(
        planted().train, users=planted_users()
    )


def _small() -> tuple[Interactions, Users]:
    rng = np.random.default_rng(0)
    mask = rng.random((30, 8)) < 0.35
    users, items = np.nonzero(mask)
    data = Interactions.from_arrays(users, items)
    attrs = Users(
        data.users,
        {
            "age": [17, 20, 33, 47, 60, None] * 5,
            "gender": ["F", "M", "M"] * 10,
            "occupation": ["a", "b", "c", "d", "e"] * 6,
        },
    )
    return data, attrs


def test_closed_form_matches_a_direct_solve_on_the_widened_matrix() -> None:
    data, users = _small()
    alpha, l2 = 1.5, 4.0
    model = AttributeEASE(AttributeEASEConfig(l2=l2, attribute_weight=alpha)).fit(data, users=users)
    # hand-built one-hot blocks: age bands, genders, occupations (sorted within each)
    ages = ["<18", "18-24", "25-34", "45-55", "56+"]
    band = {17: "<18", 20: "18-24", 33: "25-34", 47: "45-55", 60: "56+"}
    columns = [*(f"age={a}" for a in sorted(ages)), "gender=F", "gender=M"]
    columns += [f"occupation={o}" for o in "abcde"]
    a = np.zeros((data.n_users, len(columns)))
    for u in range(data.n_users):
        age = users.attributes["age"][u]
        if age is not None:
            a[u, columns.index(f"age={band[age]}")] = 1
        a[u, columns.index(f"gender={users.attributes['gender'][u]}")] = 1
        a[u, columns.index(f"occupation={users.attributes['occupation'][u]}")] = 1
    x = np.hstack([data.to_csr().toarray(), alpha * a])
    p = np.linalg.inv(x.T @ x + l2 * np.eye(x.shape[1]))
    b = np.eye(x.shape[1]) - p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    np.testing.assert_allclose(model.weights_, b[:, : data.n_items], rtol=1e-4, atol=1e-6)
    assert model.vocabulary_["age"] == sorted(ages)  # no user is 35-44: no column for it

    query = Queries(np.array([2]), np.array([0, 2]), np.array([1, 5]))
    expected = b[[1, 5], : data.n_items].sum(axis=0) + alpha * (
        a[2] @ b[data.n_items :, : data.n_items]
    )
    np.testing.assert_allclose(model.score(query)[0], expected, rtol=1e-4, atol=1e-6)


def test_attributes_move_the_ranking_towards_the_users_group(model: AttributeEASE) -> None:
    # one item from group 1's block; the attributes say group 0 or group 2
    history = [BLOCK + 3]
    queries = Queries(
        np.array([-1, -1, -1]),
        np.array([0, 1, 2, 3]),
        np.array(history * 3),
        {"age": [AGES[0], AGES[2], None], "occupation": [JOBS[0], JOBS[2], None]},
    )
    items, _ = model.recommend(queries, 10)
    group = items // BLOCK
    assert (group[2] == 1).mean() >= 0.7  # no attributes: mostly the history item's block
    assert (group[0] == 0).mean() >= 0.8  # the attributes of group 0 outweigh one item
    assert (group[1] == 2).mean() >= 0.8


def test_query_attributes_override_the_fitted_ones(model: AttributeEASE) -> None:
    data = planted()
    user = 0  # group 0
    history = data.queries.history(user)
    plain = Queries(np.array([user]), np.array([0, len(history)]), history)
    same = Queries(plain.user, plain.history_indptr, plain.history_items,
                   {"gender": [planted_users().attributes["gender"][user]]})  # fmt: skip
    other = Queries(plain.user, plain.history_indptr, plain.history_items,
                    {"age": [AGES[3]], "occupation": [JOBS[3]]})  # fmt: skip
    np.testing.assert_array_equal(model.score(plain), model.score(same))
    assert not np.allclose(model.score(plain), model.score(other))


def test_unseen_attribute_values_encode_as_nothing(model: AttributeEASE) -> None:
    history = planted().queries.history(5)
    indptr = np.array([0, len(history)])
    unknown = Queries(np.array([-1]), indptr, history)
    strange = {"age": ["not an age"], "gender": ["X"], "occupation": ["astronaut"]}
    novel = Queries(np.array([-1]), indptr, history, strange)
    np.testing.assert_array_equal(model.score(unknown), model.score(novel))


def test_fit_needs_users_with_the_configured_attributes() -> None:
    data = planted()
    with pytest.raises(ConfigError, match="pass users to fit"):
        AttributeEASE().fit(data.train)
    users = Users(data.train.users, {"age": [30] * data.train.n_users})
    with pytest.raises(ConfigError, match="'gender'"):
        AttributeEASE().fit(data.train, users=users)
    few = Users(IdMap(["a"]), {"age": [1], "gender": ["M"], "occupation": ["x"]})
    with pytest.raises(ConfigError, match="users has 1 entries"):
        AttributeEASE().fit(data.train, users=few)


def test_load_checks_the_attributes_file(model: AttributeEASE, tmp_path: Path) -> None:
    model.save(tmp_path / "m")
    (tmp_path / "m" / "attributes.json").write_text(json.dumps({"age": []}))
    with pytest.raises(RecloopError, match="do not match"):
        AttributeEASE.load(tmp_path / "m")
    (tmp_path / "m" / "attributes.json").unlink()
    with pytest.raises(RecloopError, match=r"attributes\.json"):
        AttributeEASE.load(tmp_path / "m")


def test_registered() -> None:
    built = build_model("AttributeEASE", {"l2": 50.0, "attributes": ["gender"]})
    assert isinstance(built, AttributeEASE)
    assert built.config.attributes == ("gender",)
