"""The shared contract every scoring model passes, subclassed once per model.

A test module declares ``class TestFoo(ModelContract)`` with the model class, a tiny fast
config and a few invalid config values. The data are planted so each user's best next items
are known: users fall into groups of unequal size, each group consuming its own block of
items, so only a model that learns who co-consumes what reaches Hit@10 ≥ 0.9 while
popularity serves the largest group alone.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from pydantic import ValidationError

from recloop.data import Catalog, Exclusions, IdMap, Interactions, Queries, Split
from recloop.errors import ConfigError, RecloopError
from recloop.models.base import ModelConfig, Recommender, ScoringRecommender, top_k

GROUP_SIZES = (30, 20, 12, 8)  # users per group; unequal so popularity is not enough
BLOCK = 20  # items per group's block
SEEN = 12  # block items each user has in train; one of the other 8 is held out
K = 10


@dataclass(frozen=True)
class Planted:
    """Train interactions, each user's held-out item and their train-history queries."""

    train: Interactions
    heldout: np.ndarray  # one item per user
    queries: Queries  # every user (by index) with their train history
    group: np.ndarray  # each user's group

    @property
    def n_items(self) -> int:
        return self.train.n_items

    def unknown_queries(self) -> Queries:
        """The same histories from users the model has never seen (−1)."""
        q = self.queries
        return Queries(np.full(len(q), -1), q.history_indptr, q.history_items)


@lru_cache(maxsize=1)
def planted() -> Planted:
    """Block-structured data: each user sees 12 of their group's 20 items plus one stray item.

    Histories are in time order and the stray sits at a random place in them, so that no
    position of a sequence (for a sequential model) is always out of the user's group.
    """
    rng = np.random.default_rng(7)
    n_groups = len(GROUP_SIZES)
    users: list[int] = []
    items: list[int] = []
    heldout: list[int] = []
    group: list[int] = []
    u = 0
    for g, size in enumerate(GROUP_SIZES):
        for _ in range(size):
            block = g * BLOCK + rng.permutation(BLOCK)
            other = rng.choice([h for h in range(n_groups) if h != g])
            stray = other * BLOCK + int(rng.integers(BLOCK))
            history = block[:SEEN].tolist()
            history.insert(int(rng.integers(SEEN + 1)), stray)
            users += [u] * len(history)
            items += history
            heldout.append(int(block[SEEN + rng.integers(BLOCK - SEEN)]))
            group.append(g)
            u += 1
    n_items = n_groups * BLOCK
    train = Interactions.from_arrays(users, items)
    assert train.n_items == n_items
    indptr, hist = train.histories()
    queries = Queries(np.arange(train.n_users), indptr, hist)
    return Planted(train, np.asarray(heldout), queries, np.asarray(group))


GENRES = ("drama", "comedy", "horror", "western")


@lru_cache(maxsize=1)
def planted_catalog() -> Catalog:
    """Item text for the planted data: a block's items share their genre word."""
    n = len(GROUP_SIZES) * BLOCK
    genre = [GENRES[i // BLOCK] for i in range(n)]
    return Catalog(
        IdMap([str(i) for i in range(n)]),
        [f"Film {i}" for i in range(n)],
        [f"Film {i}. Genres: {g}, {g} cinema" for i, g in enumerate(genre)],
        {"genres": [[g] for g in genre]},
    )


def hit_rate(recommended: np.ndarray, heldout: np.ndarray) -> float:
    """Hit@K straight from ``recommend`` output: share of rows whose list holds their item."""
    return float((recommended == heldout[:, None]).any(axis=1).mean())


class RecommenderContract:
    """Contract tests every model passes through ``recommend`` alone (TIGER included).

    Subclasses set ``model_class`` and the config hooks; models that read item text set
    ``uses_catalog`` and are fitted with :func:`planted_catalog`.
    """

    model_class: ClassVar[type[Any]]
    personalised: ClassVar[bool] = True  # False only for Popular: exempt from the Hit@10 floor
    uses_catalog: ClassVar[bool] = False  # fit with the planted item text
    artifact_files: ClassVar[list[str]] = ["manifest.json", "weights.safetensors"]
    invalid_configs: ClassVar[list[dict[str, Any]]] = []  # field values that must be refused

    def make_config(self) -> ModelConfig:
        """A tiny, fast config that still solves the planted data."""
        raise NotImplementedError

    def make_model(self) -> Any:
        return self.model_class(self.make_config())

    def fit(self, model: Any, data: Split | Interactions) -> Any:
        return model.fit(data, catalog=planted_catalog() if self.uses_catalog else None)

    @pytest.fixture(scope="class")
    @classmethod
    def fitted(cls) -> Recommender:
        contract = cls()
        return contract.fit(contract.make_model(), planted().train)  # type: ignore[no-any-return]

    def outputs(self, model: Any, queries: Queries) -> list[np.ndarray]:
        """What must not change across save/load, refits and calls: the full ranking."""
        items, scores = model.recommend(queries, planted().n_items)
        return [items, scores]

    # -- (a) quality on planted data ---------------------------------------------------
    def test_planted_hit_at_10(self, fitted: Any) -> None:
        data = planted()
        items, _ = fitted.recommend(data.queries, K)
        hit = hit_rate(items, data.heldout)
        if self.personalised:
            assert hit >= 0.9, f"{fitted.name} Hit@10 {hit:.3f} < 0.9 on planted data"
        else:  # the data need personalisation: popularity must not solve them
            assert hit < 0.9

    def test_unknown_users_scored_by_the_model(self, fitted: Any) -> None:
        data = planted()
        items, _, source = fitted.recommend_labelled(data.unknown_queries(), K)
        assert (source == fitted.name).all()
        if self.personalised:
            hit = hit_rate(items, data.heldout)
            assert hit >= 0.9, f"{fitted.name} Hit@10 {hit:.3f} < 0.9 for unknown users"

    # -- (b) save / load ---------------------------------------------------------------
    def test_save_load_round_trip(self, fitted: Any, tmp_path: Path) -> None:
        fitted.save(tmp_path / "model")
        assert sorted(p.name for p in (tmp_path / "model").iterdir()) == sorted(self.artifact_files)
        manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
        assert manifest["model"] == fitted.name
        loaded = self.model_class.load(tmp_path / "model")
        assert loaded.config == fitted.config
        for queries in self._mixed_queries():
            for a, b in zip(
                self.outputs(loaded, queries), self.outputs(fitted, queries), strict=True
            ):
                np.testing.assert_array_equal(a, b)
            for a, b in zip(
                loaded.recommend_labelled(queries, K),
                fitted.recommend_labelled(queries, K),
                strict=True,
            ):
                np.testing.assert_array_equal(a, b)

    def test_load_refuses_another_model(self, fitted: Any, tmp_path: Path) -> None:
        fitted.save(tmp_path / "model")
        manifest = tmp_path / "model" / "manifest.json"
        text = json.loads(manifest.read_text())
        text["model"] = "SomethingElse"
        manifest.write_text(json.dumps(text))
        with pytest.raises(RecloopError, match="SomethingElse"):
            self.model_class.load(tmp_path / "model")

    @pytest.mark.parametrize(
        ("damage", "file"),
        [
            ("truncated", "weights.safetensors"),
            ("deleted", "weights.safetensors"),
            ("a list", "manifest.json"),
            ("no config", "manifest.json"),
        ],
    )
    def test_load_names_a_damaged_file(
        self, fitted: Any, tmp_path: Path, damage: str, file: str
    ) -> None:
        """A damaged artifact is one RecloopError naming it, never a traceback."""
        folder = tmp_path / "model"
        fitted.save(folder)
        path = folder / file
        if damage == "truncated":
            path.write_bytes(path.read_bytes()[:20])
        elif damage == "deleted":
            path.unlink()
        elif damage == "a list":
            path.write_text("[]")
        else:
            manifest = json.loads(path.read_text())
            del manifest["config"]
            path.write_text(json.dumps(manifest))
        with pytest.raises(RecloopError, match=re.escape(str(folder))):
            self.model_class.load(folder)

    # -- (c) exclusions ----------------------------------------------------------------
    def test_history_excluded_by_default(self, fitted: Any) -> None:
        data = planted()
        items, scores = fitted.recommend(data.queries, K)
        for row in range(len(data.queries)):
            assert not set(items[row].tolist()) & set(data.queries.history(row).tolist())
        assert (np.diff(scores, axis=1) <= 0).all()

    def test_custom_exclusions_exclude_exactly_what_they_say(self, fitted: Any) -> None:
        data = planted()
        queries = data.queries.take(np.arange(6))
        n = data.n_items
        rng = np.random.default_rng(1)
        custom = [sorted(rng.choice(n, size=int(rng.integers(0, 6)), replace=False).tolist())
                  for _ in range(len(queries))]  # fmt: skip
        items, scores = fitted.recommend(queries, n, Exclusions.from_lists(custom))
        for row, banned in enumerate(custom):
            shown = items[row][items[row] >= 0]
            assert set(shown.tolist()) == set(range(n)) - set(banned)
            assert len(shown) == len(set(shown.tolist()))
            assert (items[row][len(shown) :] == -1).all()
            assert np.isneginf(scores[row][len(shown) :]).all()

    def test_empty_custom_exclusions_allow_history(self, fitted: Any) -> None:
        data = planted()
        n = data.n_items
        queries = data.queries.take(np.arange(4))
        items, _ = fitted.recommend(queries, n, Exclusions.from_lists([[]] * len(queries)))
        for row in range(len(queries)):
            assert set(queries.history(row).tolist()) <= set(items[row].tolist())

    def test_padding_when_k_exceeds_available_items(self, fitted: Any) -> None:
        data = planted()
        n = data.n_items
        items, scores = fitted.recommend(data.queries, n + 5)
        assert items.shape == scores.shape == (len(data.queries), n + 5)
        lengths = data.queries.history_lengths()
        pads = (items == -1).sum(axis=1)
        assert (pads == lengths + 5).all()  # every score is finite, so only history is cut
        for row in range(len(data.queries)):
            m = n + 5 - int(pads[row])
            assert (items[row, :m] >= 0).all() and (items[row, m:] == -1).all()
            assert np.isneginf(scores[row, m:]).all() and np.isfinite(scores[row, :m]).all()

    def test_non_positive_k_rejected(self, fitted: Any) -> None:
        with pytest.raises(ConfigError):
            fitted.recommend(planted().queries, 0)

    # -- (d) the popularity fallback is for empty histories only ----------------------
    def test_empty_history_gets_popularity_labelled_popular(self, fitted: Any) -> None:
        data = planted()
        queries = Queries.from_lists([0, -1, 3, -1], [[], [], data.queries.history(3), [5, 6]])
        items, _, source = fitted.recommend_labelled(queries, K)
        assert source.tolist() == ["popular", "popular", fitted.name, fitted.name]
        expected, _ = top_k(fitted.popularity_[None, :], K)
        np.testing.assert_array_equal(items[0], expected[0])
        np.testing.assert_array_equal(items[1], expected[0])

    def test_histories_are_not_served_popularity(self, fitted: Any) -> None:
        data = planted()
        popular = np.broadcast_to(fitted.popularity_, (len(data.queries), data.n_items))
        as_popular, _ = top_k(
            popular, K, Exclusions.from_history(data.queries).to_csr(data.n_items)
        )
        for queries in (data.queries, data.unknown_queries()):
            items, _ = fitted.recommend(queries, K)
            differs = (items != as_popular).any(axis=1).mean()
            if self.personalised:
                assert differs > 0.5
            else:
                assert differs == 0

    def test_queries_and_exclusions_are_not_mutated(self, fitted: Any) -> None:
        queries = Queries.from_lists([0, -1, 2], [[7, 3, 3, 1], [2, 0], []])
        exclude = Exclusions.from_lists([[9, 4, 4], [], [1, 0]])
        copies = [a.copy() for a in (queries.history_indptr, queries.history_items)]
        copies += [a.copy() for a in (exclude.indptr, exclude.items)]
        fitted.recommend(queries, K)
        fitted.recommend(queries, K, exclude)
        self.outputs(fitted, queries)
        now = [queries.history_indptr, queries.history_items, exclude.indptr, exclude.items]
        for before, after in zip(copies, now, strict=True):
            np.testing.assert_array_equal(after, before)

    # -- (e) determinism ---------------------------------------------------------------
    def test_deterministic(self, fitted: Any) -> None:
        again = self.fit(self.make_model(), planted().train)
        for queries in self._mixed_queries():
            for a, b in zip(
                self.outputs(again, queries), self.outputs(fitted, queries), strict=True
            ):
                np.testing.assert_array_equal(a, b)

    def test_fit_on_split_learns_from_train_only(self, fitted: Any) -> None:
        data = planted()
        extra = Interactions.from_arrays(
            np.arange(10), np.full(10, 0), users=data.train.users, items=data.train.items
        )
        split = Split("loo", 0, data.train, extra, extra)
        model = self.fit(self.make_model(), split)
        for a, b in zip(
            self.outputs(model, data.queries), self.outputs(fitted, data.queries), strict=True
        ):
            np.testing.assert_array_equal(a, b)

    # -- (f) configs ---------------------------------------------------------------------
    def test_wrong_config_type_rejected(self) -> None:
        with pytest.raises(ConfigError, match=self.model_class.config_class.__name__):
            self.model_class(_OtherConfig())

    def test_invalid_config_values_rejected(self) -> None:
        cls = self.model_class.config_class
        for values in [*self.invalid_configs, {"no_such_field": 1}]:
            with pytest.raises(ValidationError):
                cls(**values)

    def test_config_is_frozen(self) -> None:
        config = self.make_config()
        name = next(iter(type(config).model_fields))
        with pytest.raises(ValidationError):
            setattr(config, name, getattr(config, name))

    def test_default_config(self) -> None:
        model = self.model_class()
        assert model.config == self.model_class.config_class()

    # -- (g) unfitted models and bad queries ---------------------------------------------
    def test_unfitted_model_raises(self, tmp_path: Path) -> None:
        model = self.make_model()
        with pytest.raises(RecloopError, match="not fitted"):
            model.recommend(planted().queries, K)
        with pytest.raises(RecloopError, match="not fitted"):
            model.save(tmp_path / "model")

    def test_item_beyond_catalogue_raises(self, fitted: Any) -> None:
        queries = Queries.from_lists([-1], [[planted().n_items + 3]])
        with pytest.raises(RecloopError, match="beyond"):
            fitted.recommend(queries, K)

    # -- helpers -------------------------------------------------------------------------
    def _mixed_queries(self) -> list[Queries]:
        """Known users, unknown users, empty and changed histories."""
        data = planted()
        first = data.queries.history(0).tolist()
        unseen = next(i for i in range(data.n_items) if i not in first)
        changed = Queries.from_lists(
            [0, 1, -1, 2, 50],
            [
                [*first, unseen],
                [],
                [BLOCK + 1, BLOCK + 2],
                data.queries.history(2)[:4],
                data.queries.history(50),
            ],
        )
        return [data.queries, data.unknown_queries(), changed]


class ModelContract(RecommenderContract):
    """The contract for models that score the whole catalogue (all but TIGER)."""

    model_class: ClassVar[type[ScoringRecommender]]

    def outputs(self, model: Any, queries: Queries) -> list[np.ndarray]:
        return [model.score(queries)]

    def test_score_shape_and_type(self, fitted: ScoringRecommender) -> None:
        data = planted()
        scores = fitted.score(data.queries)
        assert scores.shape == (len(data.queries), data.n_items)
        assert scores.dtype == np.float32
        assert np.isfinite(scores).all()

    def test_ranking_is_the_score_order(self, fitted: ScoringRecommender) -> None:
        data = planted()
        queries = data.queries.take(np.arange(6))
        n = data.n_items
        rng = np.random.default_rng(1)
        custom = Exclusions.from_lists(
            [sorted(rng.choice(n, size=int(rng.integers(0, 6)), replace=False).tolist())
             for _ in range(len(queries))]
        )  # fmt: skip
        items, _ = fitted.recommend(queries, n, custom)
        # the ranking is the model's score order with ties to the lower item index
        expected, _ = top_k(fitted.score(queries), n, custom.to_csr(n))
        np.testing.assert_array_equal(items, expected)

    def test_empty_history_scores_are_popularity(self, fitted: ScoringRecommender) -> None:
        queries = Queries.from_lists([0, -1], [[], []])
        scores = fitted.score(queries)
        np.testing.assert_array_equal(scores[0], fitted.popularity_)
        np.testing.assert_array_equal(scores[1], fitted.popularity_)

    def test_unfitted_model_cannot_score(self) -> None:
        with pytest.raises(RecloopError, match="not fitted"):
            self.make_model().score(planted().queries)

    def test_load_refuses_sizes_its_arrays_do_not_have(
        self, fitted: ScoringRecommender, tmp_path: Path
    ) -> None:
        """A manifest edited or copied from another fit must not load as a smaller model."""
        fitted.save(tmp_path / "model")
        path = tmp_path / "model" / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest["n_items"] -= 1
        path.write_text(json.dumps(manifest))
        with pytest.raises(RecloopError, match=re.escape(str(tmp_path / "model"))):
            self.model_class.load(tmp_path / "model")


class _OtherConfig(ModelConfig):
    """A config no model accepts."""

    whatever: int = 1
