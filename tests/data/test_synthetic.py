"""The synthetic generator: seeded, well-typed, and its planted structure is recoverable."""

from __future__ import annotations

import re

import numpy as np
import pytest
from pydantic import ValidationError

from recloop.benchmark import _DATASET
from recloop.data import EventKind
from recloop.data.synthetic import (
    RowOrigin,
    SyntheticConfig,
    SyntheticData,
    dataset_name,
    generate,
)

PLANTED = SyntheticConfig(
    n_users=300,
    n_items=400,
    n_interactions=15_000,
    n_topics=8,
    drift=0.8,
    markov_p=0.4,
    negative_share=0.1,
    positive_events={"rating": 2.0, "click": 1.0},
    seed=3,
)


@pytest.fixture(scope="module")
def planted() -> SyntheticData:
    return generate(PLANTED)


@pytest.fixture(scope="module")
def plain() -> SyntheticData:
    return generate(SyntheticConfig(n_users=400, n_items=500, n_interactions=20_000, seed=1))


def _positions(user: np.ndarray) -> np.ndarray:
    """Each row's place in its user's sequence in [0, 1] (rows sorted by user and time)."""
    counts = np.bincount(user)
    starts = np.cumsum(counts) - counts
    rank = np.arange(len(user)) - np.repeat(starts, counts)
    return rank / np.repeat(np.maximum(counts - 1, 1), counts)


# ---------------------------------------------------------------------------- basics
def test_same_config_gives_identical_arrays() -> None:
    a, b = generate(PLANTED), generate(PLANTED)
    ia, ib = a.dataset.interactions, b.dataset.interactions
    for name in ("user", "item", "timestamp", "value", "event"):
        np.testing.assert_array_equal(getattr(ia, name), getattr(ib, name))
    np.testing.assert_array_equal(a.truth.taste, b.truth.taste)
    np.testing.assert_array_equal(a.truth.row_origin, b.truth.row_origin)
    assert a.dataset.catalog is not None and b.dataset.catalog is not None
    assert a.dataset.catalog.text == b.dataset.catalog.text
    other = generate(PLANTED.model_copy(update={"seed": 4}))
    assert not np.array_equal(other.dataset.interactions.item, ia.item)


def test_text_options_leave_interactions_unchanged() -> None:
    base = SyntheticConfig(n_users=50, n_items=40, n_interactions=600, n_topics=4)
    longer = base.model_copy(update={"words_per_item": 30})
    a, b = generate(base).dataset, generate(longer).dataset
    np.testing.assert_array_equal(a.interactions.item, b.interactions.item)
    np.testing.assert_array_equal(a.interactions.timestamp, b.interactions.timestamp)
    assert a.users is not None and b.users is not None
    assert a.users.attributes == b.users.attributes


def test_shapes_dtypes_and_time_order(planted: SyntheticData) -> None:
    cfg, truth, data = PLANTED, planted.truth, planted.dataset.interactions
    assert len(data) == cfg.n_interactions
    assert (data.n_users, data.n_items) == (cfg.n_users, cfg.n_items)
    assert data.user.dtype == np.int32 and data.item.dtype == np.int32
    assert data.timestamp.dtype == np.int64 and data.value.dtype == np.float32
    assert data.event.dtype == np.int8
    assert truth.taste_end is not None
    assert truth.taste.shape == truth.taste_end.shape == (cfg.n_users, cfg.n_topics)
    assert truth.item_topics.shape == (cfg.n_items, cfg.n_topics)
    assert truth.successors is not None
    assert truth.successors.shape == (cfg.n_items, cfg.n_successors)
    assert truth.row_topic.shape == truth.row_origin.shape == (len(data),)
    np.testing.assert_allclose(truth.taste.sum(axis=1), 1.0)
    np.testing.assert_allclose(truth.item_topics.sum(axis=1), 1.0)
    np.testing.assert_allclose(truth.popularity.sum(), 1.0)
    assert (np.diff(data.user) >= 0).all()  # sorted by user ...
    same_user = data.user[1:] == data.user[:-1]
    assert (np.diff(data.timestamp)[same_user] > 0).all()  # ... and strictly by time within
    assert data.user_counts().min() >= cfg.min_interactions_per_user
    assert planted.dataset.name == dataset_name(cfg)


def test_fifty_user_fixture() -> None:
    cfg = SyntheticConfig(n_users=50, n_items=30, n_interactions=400, n_topics=3)
    data = generate(cfg).dataset
    assert data.catalog is not None and data.users is not None
    assert len(data.interactions) == 400
    assert len(data.catalog) == 30 and len(data.users) == 50
    assert set(data.users.attributes) == {"gender", "age", "segment"}
    assert set(data.catalog.attributes) == {"genres", "year"}
    assert all(len(g) >= 1 for g in data.catalog.attribute("genres"))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_users": 1, "n_items": 1, "n_interactions": 5, "n_topics": 1},
        # a topic that is no item's primary topic (other slots outweigh slot 0), with Markov
        {
            "n_users": 10,
            "n_items": 12,
            "n_interactions": 100,
            "n_topics": 6,
            "topics_per_item": 4,
            "markov_p": 0.5,
            "seed": 12,
        },
        # tastes so concentrated that Gamma draws underflow, most rows negative, full drift
        {
            "taste_alpha": 0.001,
            "item_topic_alpha": 0.001,
            "popularity_exponent": 5.0,
            "drift": 1.0,
            "negative_share": 0.9,
            "markov_p": 0.95,
            "unique_pairs": True,
        },
    ],
)
def test_extreme_configs_generate(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {"n_users": 20, "n_items": 50, "n_interactions": 500}
    out = generate(SyntheticConfig(**{**base, **kwargs}))
    data = out.dataset.interactions
    assert len(data) > 0
    assert (np.diff(data.timestamp)[data.user[1:] == data.user[:-1]] > 0).all()
    assert np.isfinite(out.truth.affinity_matrix()).all()


def test_event_kinds_and_values(planted: SyntheticData) -> None:
    data = planted.dataset.interactions
    negative = data.is_negative()
    assert (data.event[negative] == EventKind.DISLIKE).all()
    assert negative.mean() == pytest.approx(PLANTED.negative_share, abs=0.02)
    np.testing.assert_array_equal(negative, planted.truth.row_origin == RowOrigin.NEGATIVE)
    rated = data.event == EventKind.RATING
    assert rated.sum() / (~negative).sum() == pytest.approx(2 / 3, abs=0.03)
    assert set(np.unique(data.value[rated]).tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert (data.value[~rated] == 1.0).all()


# ---------------------------------------------------------------------------- planted structure
def test_interactions_concentrate_on_top_taste_topics(plain: SyntheticData) -> None:
    truth, data = plain.truth, plain.dataset.interactions
    primary = truth.item_topics.argmax(axis=1)
    top2 = np.argsort(-truth.taste, axis=1)[:, :2]
    share = (primary[data.item][:, None] == top2[data.user]).any(axis=1).mean()
    assert share > 0.6 > 2 * 2 / truth.n_topics  # chance is 2 / n_topics = 0.2


def test_popularity_follows_power_law(plain: SyntheticData) -> None:
    counts = plain.dataset.interactions.item_counts()
    top = np.sort(counts)[::-1][: len(counts) // 10]
    assert top.sum() / counts.sum() > 0.4  # top 10% of items
    rank_pop = np.argsort(np.argsort(plain.truth.popularity))
    rank_count = np.argsort(np.argsort(counts))
    assert np.corrcoef(rank_pop, rank_count)[0, 1] > 0.8  # Spearman
    flat = generate(plain.config.model_copy(update={"popularity_exponent": 0.0}))
    flat_counts = np.sort(flat.dataset.interactions.item_counts())[::-1]
    assert flat_counts[: len(counts) // 10].sum() / flat_counts.sum() < 0.25


def test_affinity_is_the_sampling_distribution(plain: SyntheticData) -> None:
    truth, data = plain.truth, plain.dataset.interactions
    matrix = truth.affinity_matrix()
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0)
    pairs = truth.affinity(data.user[:50], data.item[:50])
    np.testing.assert_allclose(pairs, matrix[data.user[:50], data.item[:50]])
    expected = matrix[data.user].sum(axis=0)  # expected count of each item over all rows
    observed = data.item_counts()
    assert np.corrcoef(expected, observed)[0, 1] > 0.97


def test_markov_successors_far_above_chance(planted: SyntheticData) -> None:
    truth, data = planted.truth, planted.dataset.interactions
    assert truth.successors is not None
    keep = ~data.is_negative()
    user, item, origin = data.user[keep], data.item[keep], truth.row_origin[keep]
    same_user = user[1:] == user[:-1]
    is_successor = (truth.successors[item[:-1]] == item[1:, None]).any(axis=1)
    rate = is_successor[same_user].mean()
    chance = is_successor[same_user & (origin[1:] == RowOrigin.TASTE)].mean()
    assert rate > PLANTED.markov_p * 0.9
    assert rate > 10 * chance
    markov_rows = origin == RowOrigin.MARKOV
    assert is_successor[markov_rows[1:]].all()


def test_drift_moves_tastes_in_planted_direction(planted: SyntheticData) -> None:
    truth, data = planted.truth, planted.dataset.interactions
    assert truth.taste_end is not None
    position = _positions(data.user)
    mix = truth.item_topics[data.item]
    ok = ~data.is_negative()

    def profile(mask: np.ndarray) -> np.ndarray:
        out = np.zeros((truth.n_users, truth.n_topics))
        np.add.at(out, data.user[mask], mix[mask])
        return out / np.maximum(out.sum(axis=1, keepdims=True), 1e-12)

    moved = profile(ok & (position > 2 / 3)) - profile(ok & (position < 1 / 3))
    planted_move = truth.taste_end - truth.taste
    cos = (moved * planted_move).sum(axis=1) / (
        np.linalg.norm(moved, axis=1) * np.linalg.norm(planted_move, axis=1) + 1e-12
    )
    assert np.median(cos) > 0.5
    assert (cos > 0).mean() > 0.85


def test_negatives_are_on_low_affinity_items(planted: SyntheticData) -> None:
    truth, data = planted.truth, planted.dataset.interactions
    pref = truth.preference(data.user, data.item, _positions(data.user))
    negative = data.is_negative()
    assert pref[negative].mean() < 0.5 * pref[~negative].mean()
    assert np.median(pref[negative]) < 0.2


def test_ratings_follow_preference_exactly_without_noise() -> None:
    cfg = PLANTED.model_copy(update={"rating_noise": 0.0, "n_interactions": 5000})
    out = generate(cfg)
    data, truth = out.dataset.interactions, out.truth
    rated = data.event == EventKind.RATING
    pref = truth.preference(data.user, data.item, _positions(data.user))
    expected = np.clip(np.rint(1 + 4 * pref), 1, 5)
    assert (data.value[rated] == expected[rated]).mean() > 0.999


def test_noisy_ratings_correlate_with_preference(planted: SyntheticData) -> None:
    truth, data = planted.truth, planted.dataset.interactions
    rated = data.event == EventKind.RATING
    pref = truth.preference(data.user, data.item, _positions(data.user))
    assert np.corrcoef(data.value[rated], pref[rated])[0, 1] > 0.6


def test_unique_pairs_removes_repeats() -> None:
    cfg = PLANTED.model_copy(update={"unique_pairs": True})
    data = generate(cfg).dataset.interactions
    key = data.user.astype(np.int64) * data.n_items + data.item
    assert len(np.unique(key)) == len(data)
    assert len(data) > 0.95 * cfg.n_interactions  # heavy users run out of unseen items
    repeats = generate(PLANTED).dataset.interactions
    assert len(np.unique(repeats.user.astype(np.int64) * repeats.n_items + repeats.item)) < len(
        repeats
    )


def test_catalog_text_uses_topic_words(plain: SyntheticData) -> None:
    truth, catalog = plain.truth, plain.dataset.catalog
    assert catalog is not None
    vocab = [set(words) for words in truth.topic_words]
    for item in range(0, truth.n_items, 7):
        topics = np.flatnonzero(truth.item_topics[item] > 0)
        allowed = set().union(*(vocab[z] for z in topics))
        words = re.findall(r"[a-z]+", catalog.text[item].lower())
        assert words and set(words) <= allowed
        genres = catalog.attribute("genres")[item]
        assert truth.topic_names[int(truth.item_topics[item].argmax())] in genres
        assert set(genres) <= {truth.topic_names[z] for z in topics}
    users = plain.dataset.users
    assert users is not None
    dominant = truth.dominant_topic()
    assert users.attribute("segment") == [truth.topic_names[z] for z in dominant]


# ---------------------------------------------------------------------------- config and names
def test_dataset_name_form_and_uniqueness() -> None:
    assert dataset_name(SyntheticConfig()) == "synthetic-u1000-i500-n20000-s0"
    names = {
        dataset_name(c)
        for c in (
            SyntheticConfig(),
            PLANTED,
            PLANTED.model_copy(update={"unique_pairs": True}),
            PLANTED.model_copy(update={"taste_alpha": 0.5}),
            SyntheticConfig(popularity_exponent=0.5),
        )
    }
    assert len(names) == 5
    for name in names:
        assert _DATASET.match(name), name
        assert re.fullmatch(r"synthetic-[A-Za-z0-9_.=,-]+", name)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_users": 0},
        {"taste_alpha": 0.0},
        {"drift": 1.5},
        {"markov_p": 1.0},
        {"negative_share": -0.1},
        {"popularity_exponent": -1.0},
        {"n_items": 5, "n_topics": 10},
        {"n_interactions": 100},  # fewer than n_users * min_interactions_per_user
        {"positive_events": {}},
        {"positive_events": {"dislike": 1.0}},
        {"positive_events": {"bogus": 1.0}},
        {"positive_events": {"click": 0.0}},
        {"unique_pairs": True, "n_items": 10, "n_topics": 2, "min_interactions_per_user": 11},
        {"no_such_field": 1},
    ],
)
def test_invalid_configs_raise(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        SyntheticConfig(**kwargs)


def test_config_is_frozen_and_normalises_event_names() -> None:
    cfg = SyntheticConfig(positive_events={"CLICK": 1, "4": 1})
    assert cfg.positive_events == {"click": 1.0, "like": 1.0}
    with pytest.raises(ValidationError):
        cfg.n_users = 5  # type: ignore[misc]
