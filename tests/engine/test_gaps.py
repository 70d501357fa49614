"""Gap analysis: the poorly served group ranks first, hand-checked formulas, JSON, validation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.sparse as sp
from pydantic import ValidationError

from recloop.data import IdMap, Interactions, SyntheticConfig, Users, generate, make_split
from recloop.data.types import Queries
from recloop.engine import gaps
from recloop.engine.gaps import GapConfig, GapReport, Segment, analyse_gaps
from recloop.errors import ConfigError
from recloop.models import EASE, EASEConfig, Popular

# Group A (users 0-5) holds every pair of the popular items 0-3; group B (users 6-9) pairs of
# the niche items 4-7. Popular recommends the next popular items, which serve A (its held-out
# item is always its first recommendation) and never B.
A_TRAIN = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
B_TRAIN = [(4, 5), (6, 7), (4, 6), (5, 7)]
A_HELD = [2, 1, 1, 0, 0, 0]  # the lower of the two popular items not in train
B_HELD = [6, 4, 5, 4]
USERS = IdMap(f"u{u}" for u in range(10))
ITEMS = IdMap(f"i{i}" for i in range(8))
CFG = GapConfig(n_segments=2, embedding_dim=4, k=2, min_users=1, seed=0)


def _interactions(rows: list[tuple[int, int]]) -> Interactions:
    user = [u for u, _ in rows]
    item = [i for _, i in rows]
    return Interactions.from_arrays(user, item, users=USERS, items=ITEMS)


def _toy() -> tuple[Interactions, Interactions]:
    train = [(u, i) for u, pair in enumerate(A_TRAIN + B_TRAIN) for i in pair]
    held = list(enumerate(A_HELD + B_HELD))
    return _interactions(train), _interactions(held)


@pytest.fixture(scope="module")
def toy() -> tuple[Interactions, Interactions, Popular]:
    train, held = _toy()
    return train, held, Popular().fit(train)


def _by_users(report: GapReport) -> dict[tuple[int, ...], Segment]:
    return {tuple(s.users.tolist()): s for s in report.segments}


def test_poorly_served_group_ranks_first(toy: tuple[Interactions, Interactions, Popular]) -> None:
    train, held, model = toy
    report = analyse_gaps(train, model, CFG, heldout=held)
    assert [s.users.tolist() for s in report.segments] == [[6, 7, 8, 9], [0, 1, 2, 3, 4, 5]]
    assert report.segments[0].gap > report.segments[1].gap


def test_hand_checked_formulas(toy: tuple[Interactions, Interactions, Popular]) -> None:
    train, held, model = toy
    report = analyse_gaps(train, model, CFG, heldout=held)
    b, a = report.segments
    # overall: NDCG (6·1 + 4·0) / 10; coverage = size-weighted mean (6·1 + 4·0) / 10;
    # head = items 0-3 (12 of 20 rows reach half), so 8 of 20 rows are on the tail.
    assert report.overall["satisfaction"] == pytest.approx(0.6)
    assert report.overall["coverage"] == pytest.approx(0.6)
    assert report.overall["tail_demand"] == pytest.approx(0.4)
    assert report.overall["tail_supply"] == pytest.approx(0.0)
    assert report.overall["hit_rate"] == pytest.approx(0.6)
    assert report.overall["head_items"] == 4
    assert (a.size, a.satisfaction, a.coverage, a.tail_demand, a.tail_supply) == (6, 1, 1, 0, 0)
    assert (b.size, b.satisfaction, b.coverage, b.tail_demand, b.tail_supply) == (4, 0, 0, 1, 0)
    assert a.satisfaction_kind == b.satisfaction_kind == "observed"
    # gap = 1·(1 − sat/0.6) + 0.5·(1 − cov/0.6) + 0.5·max(0, demand − supply)
    assert a.gap == pytest.approx(1.5 * (1 - 1 / 0.6))
    assert b.gap == pytest.approx(1.0 + 0.5 + 0.5)
    # lift: B's items (2 of 4 users vs 2 of 10) beat nothing else; ties go to the lower index
    assert b.top_items == [4, 5]
    assert a.top_items == [0, 1]
    assert a.attributes["hit_rate"] == 1.0 and b.attributes["users_evaluated"] == 4


def test_predicted_satisfaction_without_heldout(
    toy: tuple[Interactions, Interactions, Popular],
) -> None:
    train, _, model = toy
    report = analyse_gaps(train, model, CFG)
    b, a = report.segments
    assert b.users.tolist() == [6, 7, 8, 9]
    # every user's top-2 scores are the counts 3 and 3: normalised satisfaction is 1 for all
    assert a.satisfaction_kind == "predicted" and a.satisfaction == b.satisfaction == 1.0
    assert b.gap == pytest.approx(0.5 * 1 + 0.5 * 1)
    assert a.gap == pytest.approx(0.5 * (1 - 1 / 0.6))


def test_min_users_ranks_small_clusters_last(
    toy: tuple[Interactions, Interactions, Popular],
) -> None:
    train, held, model = toy
    report = analyse_gaps(train, model, CFG.model_copy(update={"min_users": 5}), heldout=held)
    assert [s.size for s in report.segments] == [6, 4]
    assert report.segments[1].gap > report.segments[0].gap


def test_weights_pick_signals(toy: tuple[Interactions, Interactions, Popular]) -> None:
    train, held, model = toy
    cfg = CFG.model_copy(update={"weights": {"tail": 2.0}})
    b, a = analyse_gaps(train, model, cfg, heldout=held).segments
    assert (b.gap, a.gap) == (pytest.approx(2.0), 0.0)


def test_embeddings_and_user_attributes(toy: tuple[Interactions, Interactions, Popular]) -> None:
    train, held, model = toy
    emb = np.zeros((10, 2))
    emb[:6, 0] = 1.0
    emb[6:, 1] = 1.0
    users = Users(
        USERS,
        {"gender": ["F"] * 5 + ["M"] * 5, "age": [20, 30, 40, 50, 60, 70, 10, 12, 14, 16]},
    )
    report = analyse_gaps(train, model, CFG, heldout=held, user_embeddings=emb, users=users)
    b, a = report.segments
    assert b.users.tolist() == [6, 7, 8, 9]
    assert a.attributes["gender"] == {"majority": "F", "share": pytest.approx(5 / 6)}
    assert b.attributes["gender"] == {"majority": "M", "share": 1.0}
    assert b.attributes["age"] == {"median": 13.0}


def test_segment_without_heldout_has_undefined_satisfaction(
    toy: tuple[Interactions, Interactions, Popular],
) -> None:
    train, held, model = toy
    only_a = held.select(held.user < 6)
    report = analyse_gaps(train, model, CFG, heldout=only_a)
    by = _by_users(report)
    b = by[(6, 7, 8, 9)]
    assert math.isnan(b.satisfaction) and b.attributes["users_evaluated"] == 0
    assert b.gap == pytest.approx(0.5 + 0.5)  # the satisfaction term contributes 0
    assert report.to_json()["segments"][0]["satisfaction"] is None


def test_heldout_items_in_train_are_not_targets(
    toy: tuple[Interactions, Interactions, Popular],
) -> None:
    train, held, model = toy
    repeat = _interactions([(6, 4)])  # user 6 already has item 4 in train
    report = analyse_gaps(train, model, CFG, heldout=held.concat(repeat))
    assert report.overall["users_evaluated"] == 10
    assert report.overall["satisfaction"] == pytest.approx(0.6)


def test_json_round_trip(toy: tuple[Interactions, Interactions, Popular]) -> None:
    train, held, model = toy
    users = Users(USERS, {"gender": ["F"] * 10})
    report = analyse_gaps(train, model, CFG, heldout=held, users=users)
    data = report.to_json()
    text = json.dumps(data, allow_nan=False)
    assert json.loads(text) == data
    back = GapReport.from_json(json.loads(text))
    assert back.to_json() == data
    assert [s.users.tolist() for s in back.segments] == [s.users.tolist() for s in report.segments]
    assert set(data["segments"][0]) >= {"segment", "users", "size", "gap", "top_items"}
    slim = report.to_json(include_users=False)
    assert "users" not in slim["segments"][0]
    assert GapReport.from_json(slim).segments[0].size == 4


def test_batched_recommend_calls(
    toy: tuple[Interactions, Interactions, Popular], monkeypatch: pytest.MonkeyPatch
) -> None:
    train, held, _ = toy
    calls: list[int] = []

    class CountingPopular(Popular):
        def recommend(
            self, queries: Queries, k: int, exclude: object = None
        ) -> tuple[np.ndarray, np.ndarray]:
            calls.append(len(queries))
            return super().recommend(queries, k)

    model = CountingPopular().fit(train)
    whole = analyse_gaps(train, model, CFG, heldout=held).to_json()
    assert calls == [10]
    calls.clear()
    monkeypatch.setattr(gaps, "RECOMMEND_BATCH", 4)
    assert analyse_gaps(train, model, CFG, heldout=held).to_json() == whole
    assert calls == [4, 4, 2]


def test_deterministic_with_seed() -> None:
    data = generate(
        SyntheticConfig(n_users=300, n_items=120, n_interactions=6000, seed=3)
    ).dataset.interactions
    split = make_split(data, "ratio", seed=0)
    model = EASE(EASEConfig(l2=50.0)).fit(split.train)
    cfg = GapConfig(n_segments=5, embedding_dim=8, seed=7)
    held = split.valid.concat(split.test)
    first = analyse_gaps(split.train, model, cfg, heldout=held).to_json()
    second = analyse_gaps(split.train, model, cfg, heldout=held).to_json()
    assert first == second
    assert len(first["segments"]) == 5
    assert sum(s["size"] for s in first["segments"]) == first["overall"]["users"] == 300
    gaps_ranked = [s["gap"] for s in first["segments"] if s["size"] >= cfg.min_users]
    assert gaps_ranked == sorted(gaps_ranked, reverse=True)
    binary = cfg.model_copy(update={"item_weighting": "binary"})
    assert analyse_gaps(split.train, model, binary, heldout=held).to_json() != first


def test_users_without_history_are_skipped() -> None:
    users = IdMap(f"u{u}" for u in range(4))
    items = IdMap(f"i{i}" for i in range(3))
    train = Interactions.from_arrays([0, 0, 1, 2], [0, 1, 1, 2], users=users, items=items)
    report = analyse_gaps(train, Popular().fit(train), GapConfig(n_segments=2, k=1, seed=0))
    assert report.overall["users"] == 3 and report.overall["users_skipped"] == 1
    assert sorted(u for s in report.segments for u in s.users.tolist()) == [0, 1, 2]


# ------------------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    "bad",
    [
        {"n_segments": 0},
        {"embedding_dim": 0},
        {"k": 0},
        {"tail_share": 1.0},
        {"tail_share": 0.0},
        {"min_users": 0},
        {"n_init": 2},
        {"seed": -1},
        {"weights": {"novelty": 1.0}},
        {"weights": {"tail": -1.0}},
        {"weights": {"tail": float("nan")}},
        {"weights": {"tail": 0.0}},
        {"item_weighting": "tfidf"},
        {"threads": 0},
        {"colour": "red"},
    ],
)
def test_config_validation(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        GapConfig(**bad)  # type: ignore[arg-type]


def test_config_is_frozen_and_hashable() -> None:
    cfg = GapConfig()
    with pytest.raises(ValidationError):
        cfg.k = 5  # type: ignore[misc]
    assert hash(cfg) == hash(GapConfig())
    assert cfg.weights == {"satisfaction": 1.0, "coverage": 0.5, "tail": 0.5}


def test_dict_config_errors_are_one_line(toy: tuple[Interactions, Interactions, Popular]) -> None:
    train, _, model = toy
    with pytest.raises(ConfigError, match=r"^config: field 'k'") as info:
        analyse_gaps(train, model, {"k": 0})
    assert "\n" not in str(info.value)
    report = analyse_gaps(train, model, {"n_segments": 2, "k": 2, "embedding_dim": 4})
    assert len(report.segments) == 2


def test_input_validation(toy: tuple[Interactions, Interactions, Popular]) -> None:
    train, _, model = toy
    other = Interactions.from_arrays([0], [0])
    cases: list[tuple[dict[str, object], str]] = [
        ({"train": "x"}, "^train must be Interactions"),
        ({"model": object()}, "^model must have recommend"),
        ({"config": 3}, "^config must be a GapConfig"),
        ({"heldout": "x"}, "^heldout must be Interactions"),
        ({"heldout": other}, "^heldout has 1 users"),
        ({"user_embeddings": np.zeros((3, 2))}, "^user_embeddings must have shape"),
        ({"user_embeddings": np.full((10, 2), np.nan)}, "^user_embeddings must be finite"),
        ({"users": {"gender": ["F"]}}, "^users: attribute 'gender' has 1 values"),
        ({"users": {"gender": "FFFFFFFFFF"}}, "^users: attribute 'gender' must be a list"),
        ({"users": 5}, "^users must be Users"),
    ]
    for override, pattern in cases:
        kwargs: dict[str, object] = {"train": train, "model": model, "config": CFG, **override}
        with pytest.raises(ConfigError, match=pattern) as info:
            analyse_gaps(**kwargs)  # type: ignore[arg-type]
        assert "\n" not in str(info.value)
    empty = Interactions.from_arrays([], [], users=USERS, items=ITEMS)
    with pytest.raises(ConfigError, match=r"^train: no user"):
        analyse_gaps(empty, model, CFG)


def test_model_output_is_checked(toy: tuple[Interactions, Interactions, Popular]) -> None:
    train, _, _ = toy

    class ShortPopular(Popular):
        def recommend(
            self, queries: Queries, k: int, exclude: object = None
        ) -> tuple[np.ndarray, np.ndarray]:
            items, scores = super().recommend(queries, k)
            return items[:, :1], scores[:, :1]

    with pytest.raises(ConfigError, match=r"^model: recommend\(queries, 2\) returned shape"):
        analyse_gaps(train, ShortPopular().fit(train), CFG)


def test_top_items_need_support() -> None:
    # a 40-user segment: item 0 has 1 of its users (and only them: the highest lift), item 1
    # has 3 (support max(2, 5 % of 40) = 2 reached), item 2 has 10 but is everywhere
    counts = sp.csr_matrix(np.array([[1.0, 3.0, 10.0]]))
    everyone = np.array([1.0, 6.0, 100.0])
    assert gaps._top_items(counts, 0, 40, everyone, 100, 5) == [1, 2]
    assert gaps._top_items(counts, 0, 40, everyone, 100, 1) == [1]
    lonely = sp.csr_matrix(np.array([[1.0, 0.0, 1.0]]))  # nothing reaches support: keep all
    assert gaps._top_items(lonely, 0, 40, everyone, 100, 5) == [0, 2]
