"""Blending and re-ranking on hand-checked cases."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from recloop.engine.blend import BlendConfig, Blended, Blender, SourceCandidates, UserControls
from recloop.errors import ConfigError, DataError


def src(
    name: str, items: list[int], scores: list[float], generated: bool = False
) -> SourceCandidates:
    return SourceCandidates(name, np.array(items), np.array(scores, dtype=float), generated)


def ranked(name: str, items: list[int], generated: bool = False) -> SourceCandidates:
    """A source whose scores decrease down its list."""
    return src(name, items, [float(len(items) - i) for i in range(len(items))], generated)


# -- normalisation --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("how", "scores", "expected"),
    [
        ("rank", [10.0, 5.0, 1.0], [1.0, 2 / 3, 1 / 3]),
        ("minmax", [10.0, 5.0, 0.0], [1.0, 0.5, 0.0]),
        ("minmax", [3.0, 3.0, 3.0], [1.0, 1.0, 1.0]),
        ("zscore", [3.0, 2.0, 1.0], [math.sqrt(1.5), 0.0, -math.sqrt(1.5)]),
        ("zscore", [2.0, 2.0, 2.0], [0.0, 0.0, 0.0]),
    ],
)
def test_normalisation(how: str, scores: list[float], expected: list[float]) -> None:
    blender = Blender(BlendConfig(normalisation=how))
    out = blender.blend([src("m", [7, 3, 9], scores)], 3)
    assert out.items.tolist() == ([3, 7, 9] if len(set(scores)) == 1 else [7, 3, 9])
    by_item = dict(zip(out.items.tolist(), out.scores.tolist(), strict=True))
    np.testing.assert_allclose([by_item[i] for i in (7, 3, 9)], expected, atol=1e-12)


def test_rank_normalisation_is_per_source_and_ignores_scale() -> None:
    out = Blender().blend([src("a", [1, 2], [1000.0, 999.0]), src("b", [3, 4], [0.2, 0.1])], 4)
    assert out.items.tolist() == [1, 3, 2, 4]  # 1 and 3 both 1.0: lower index first
    np.testing.assert_allclose(out.scores, [1.0, 1.0, 0.5, 0.5])


def test_padding_nonfinite_and_duplicates_are_dropped() -> None:
    cand = src("m", [4, 2, 4, -1, 6], [0.9, 0.8, 0.1, -np.inf, np.nan])
    out = Blender().blend([cand], 10)
    assert out.items.tolist() == [4, 2]  # rank over the 2 valid entries
    np.testing.assert_allclose(out.scores, [1.0, 0.5])


# -- merging, provenance, weights ------------------------------------------------------------
def test_merge_sums_normalised_scores_and_keeps_the_largest_contributor() -> None:
    a = ranked("A", [1, 2, 3])  # 1, 2/3, 1/3
    b = ranked("B", [3, 4])  # 1, 1/2
    out = Blender().blend([a, b], 10)
    assert out.items.tolist() == [3, 1, 2, 4]
    np.testing.assert_allclose(out.scores, [4 / 3, 1.0, 2 / 3, 0.5])
    assert out.sources == ("B", "A", "A", "B")
    assert out.generated.tolist() == [False] * 4


def test_provenance_tie_goes_to_the_first_source_given() -> None:
    a, b = ranked("A", [5]), ranked("B", [5])
    assert Blender().blend([a, b], 1).sources == ("A",)
    assert Blender().blend([b, a], 1).sources == ("B",)


def test_weights_scale_contributions_and_zero_drops_a_source() -> None:
    a, b = ranked("A", [1, 2, 3]), ranked("B", [3, 4])
    out = Blender().blend([a, b], 10, weights={"A": 2.0})  # B defaults to 1
    by_item = dict(zip(out.items.tolist(), out.scores.tolist(), strict=True))
    assert by_item == pytest.approx({1: 2.0, 2: 4 / 3, 3: 2 / 3 + 1.0, 4: 0.5})
    assert out.sources[out.items.tolist().index(3)] == "B"  # 1.0 > 2/3

    zero = Blender().blend([a, b], 10, weights={"B": 0.0})
    assert zero.items.tolist() == [1, 2, 3]
    assert zero.sources == ("A", "A", "A")
    np.testing.assert_allclose(zero.scores, [1.0, 2 / 3, 1 / 3])


@pytest.mark.parametrize("weight", [-1.0, float("nan"), float("inf")])
def test_bad_weight_is_an_error(weight: float) -> None:
    with pytest.raises(ConfigError, match="'A'"):
        Blender().blend([ranked("A", [1])], 1, weights={"A": weight})


# -- exclusions ----------------------------------------------------------------------------
GENRES = [["Comedy"], ["Horror"], ["Horror", "Drama"], [], "Drama", ["Comedy", "Drama"]]


@pytest.mark.parametrize("exclude", [{1, 4}, [4, 1], np.array([1, 4]), (1, 4, 99)])
def test_excluded_items_are_never_shown(exclude: Any) -> None:
    out = Blender().blend([ranked("m", [0, 1, 2, 3, 4, 5])], 3, exclude=exclude)
    assert out.items.tolist() == [0, 2, 3]


def test_excluded_genres_are_never_shown() -> None:
    blender = Blender(attributes={"genres": GENRES})
    controls = UserControls(excluded_attributes={"genres": frozenset({"Horror"})})
    out = blender.blend([ranked("m", [0, 1, 2, 3, 4, 5])], 10, controls=controls)
    assert out.items.tolist() == [0, 3, 4, 5]
    prefs = UserControls.from_preferences({"excluded_genres": ["Drama", "Nope"]})
    assert blender.blend([ranked("m", [0, 1, 2, 3, 4, 5])], 10, controls=prefs).items.tolist() == [
        0,
        1,
        3,
    ]


def test_excluding_an_attribute_the_blender_lacks_is_an_error() -> None:
    controls = UserControls(excluded_attributes={"genres": frozenset({"Horror"})})
    with pytest.raises(ConfigError, match="genres"):
        Blender().blend([ranked("m", [0])], 1, controls=controls)
    with pytest.raises(DataError, match="item 9"):
        Blender(attributes={"genres": GENRES}).blend([ranked("m", [9])], 1, controls=controls)


def test_attribute_with_many_values_uses_the_general_path() -> None:
    tags = [[f"t{i}", f"t{i + 1}"] for i in range(80)]  # 81 distinct values: no bit sets
    blender = Blender(attributes={"tags": tags})
    controls = UserControls(excluded_attributes={"tags": frozenset({"t5", "t70"})})
    out = blender.blend([ranked("m", list(range(80)))], 80, controls=controls)
    assert sorted(set(range(80)) - set(out.items.tolist())) == [4, 5, 69, 70]


# -- generated items -----------------------------------------------------------------------
MODEL = ranked("model", [0, 1, 2, 3, 4, 5])
GENERATED = src("generated", [10, 11, 12, 13], [9.0, 8.0, 7.0, 6.0], generated=True)


def test_generated_cap_from_config_and_stricter_user_control() -> None:
    blender = Blender(BlendConfig(max_generated_share=0.5))
    weights = {"generated": 2.0}  # generated items all outrank the model's
    out = blender.blend([MODEL, GENERATED], 4, weights=weights)
    assert out.items.tolist() == [10, 11, 0, 1]
    assert out.generated.tolist() == [True, True, False, False]
    assert out.sources == ("generated", "generated", "model", "model")

    strict = UserControls(max_generated_share=0.25)
    assert blender.blend(
        [MODEL, GENERATED], 4, weights=weights, controls=strict
    ).items.tolist() == [
        10,
        0,
        1,
        2,
    ]
    loose = UserControls(max_generated_share=1.0)  # looser than the config: config wins
    assert blender.blend([MODEL, GENERATED], 4, weights=weights, controls=loose).items.tolist() == [
        10,
        11,
        0,
        1,
    ]
    none = UserControls.from_preferences({"max_generated_share": 0})
    assert not blender.blend([MODEL, GENERATED], 4, weights=weights, controls=none).generated.any()


def test_generated_cap_holds_with_mmr_and_when_candidates_run_out() -> None:
    emb = np.eye(14)
    blender = Blender(BlendConfig(max_generated_share=0.5, mmr_lambda=0.5), embeddings=emb)
    out = blender.blend([MODEL, GENERATED], 6, weights={"generated": 2.0})
    assert int(out.generated.sum()) == 3 and len(out) == 6
    # one real item only: 2 generated + 1 real would be 2/3 generated, so one is dropped
    short = Blender(BlendConfig(max_generated_share=0.5)).blend(
        [ranked("model", [0]), GENERATED], 4, weights={"generated": 2.0}
    )
    assert short.items.tolist() == [10, 0]


def test_generated_flag_follows_the_item_whoever_proposes_it() -> None:
    out = Blender().blend([ranked("model", [10, 1]), src("gen", [10], [1.0], True)], 2)
    assert out.items.tolist() == [10, 1]
    assert out.sources == ("model", "model")  # tie: first source given
    assert out.generated.tolist() == [True, False]


# -- MMR ------------------------------------------------------------------------------------
EMB = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.7, 0.7]])  # 1 ≈ 0; 2 ⟂ 0; 3 between


def test_mmr_lambda_one_is_relevance_order() -> None:
    cands = [src("m", [0, 1, 2, 3], [4.0, 3.0, 2.0, 1.0])]
    plain = Blender().blend(cands, 4)
    mmr = Blender(BlendConfig(mmr_lambda=1.0), embeddings=EMB).blend(cands, 4)
    assert mmr.items.tolist() == plain.items.tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(mmr.scores, plain.scores)


def test_mmr_lambda_zero_picks_maximally_dissimilar_items() -> None:
    cands = [src("m", [0, 1, 2, 3], [4.0, 3.0, 2.0, 1.0])]
    out = Blender(BlendConfig(mmr_lambda=0.0), embeddings=EMB).blend(cands, 4)
    # first the most relevant (no penalty yet); then 2 (cos 0), then 3 (max cos .71 < .995)
    assert out.items.tolist() == [0, 2, 3, 1]
    np.testing.assert_allclose(out.scores, [1.0, 0.5, 0.25, 0.75])  # relevance, not MMR
    via_user = Blender(BlendConfig(), embeddings=EMB).blend(
        cands, 4, controls=UserControls(diversity=1.0)
    )
    assert via_user.items.tolist() == [0, 2, 3, 1]


def test_mmr_intermediate_lambda_by_hand() -> None:
    # rel scaled to [0, 1]: 1, 2/3, 1/3, 0; λ = 0.5
    # step 2: 1: .5·2/3 − .5·.995 < 0; 2: .5·1/3 − 0 = .167; 3: 0 − .5·.707 → pick 2
    # step 3: 1: .333 − .5·.995 = −.164; 3: 0 − .5·.707 = −.354 → pick 1
    cands = [src("m", [0, 1, 2, 3], [4.0, 3.0, 2.0, 1.0])]
    out = Blender(BlendConfig(mmr_lambda=0.5), embeddings=EMB).blend(cands, 4)
    assert out.items.tolist() == [0, 2, 1, 3]


def test_mmr_matches_a_plain_reference() -> None:
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(40, 5))
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    scores = rng.permutation(40).astype(float)
    items = np.argsort(-scores)
    lam = 0.6
    rel = {int(i): 1.0 - r / 40 for r, i in enumerate(items)}  # rank normalisation
    low, high = min(rel.values()), max(rel.values())
    chosen: list[int] = []
    while len(chosen) < 10:
        best, best_value = -1, -np.inf
        for i in sorted(rel, key=lambda i: -rel[i]):
            if i in chosen:
                continue
            penalty = max((float(unit[i] @ unit[j]) for j in chosen), default=0.0)
            value = lam * (rel[i] - low) / (high - low) - (1 - lam) * penalty
            if value > best_value + 1e-9:
                best, best_value = i, value
        chosen.append(best)
    out = Blender(BlendConfig(mmr_lambda=lam), embeddings=emb).blend(
        [src("m", items.tolist(), scores[items].tolist())], 10
    )
    assert out.items.tolist() == chosen


def test_without_embeddings_mmr_is_skipped() -> None:
    out = Blender(BlendConfig(mmr_lambda=0.0)).blend([ranked("m", [3, 1, 2])], 3)
    assert out.items.tolist() == [3, 1, 2]


def test_items_without_embedding_rows_are_an_error() -> None:
    blender = Blender(BlendConfig(mmr_lambda=0.5), embeddings=EMB)
    with pytest.raises(DataError, match="item 7"):
        blender.blend([ranked("m", [0, 7])], 2)


# -- novelty --------------------------------------------------------------------------------
def test_novelty_weight_moves_a_tail_item_up() -> None:
    # novelty: −log2 p = 1, 6.64, 2 scaled to [0, 1] → 0, 1, 0.18
    popularity = np.array([0.5, 0.01, 0.25])
    cands = [ranked("m", [0, 2, 1])]  # rank scores 1, 2/3, 1/3
    assert Blender(popularity=popularity).blend(cands, 3).items.tolist() == [0, 2, 1]
    out = Blender(BlendConfig(novelty_weight=0.8), popularity=popularity).blend(cands, 3)
    assert out.items.tolist() == [1, 0, 2]  # 1/3 + .8 = 1.13 > 1 > 2/3 + .8 · .18
    np.testing.assert_allclose(out.scores[0], 1 / 3 + 0.8)
    assert Blender(BlendConfig(novelty_weight=0.5), popularity=popularity * 10).blend(
        cands, 3
    ).items.tolist() == [0, 1, 2]  # scale of popularity does not matter


def test_novelty_needs_popularity() -> None:
    with pytest.raises(ConfigError, match="popularity"):
        Blender(BlendConfig(novelty_weight=0.1))
    with pytest.raises(ConfigError, match="popularity"):
        Blender(popularity=np.array([0.5, 0.0]))


# -- business filter ------------------------------------------------------------------------
def test_business_filter_is_last_and_the_list_is_still_filled() -> None:
    seen: list[list[int]] = []

    def in_stock(items: np.ndarray) -> np.ndarray:
        seen.append(items.tolist())
        return ~np.isin(items, [0, 2])

    blender = Blender(attributes={"genres": GENRES})
    controls = UserControls(excluded_attributes={"genres": frozenset({"Horror"})})
    out = blender.blend(
        [ranked("m", [0, 1, 2, 3, 4, 5])],
        3,
        exclude={4},
        controls=controls,
        business_filter=in_stock,
    )
    assert seen == [[0, 3, 5]]  # after exclusions and controls, best first
    assert out.items.tolist() == [3, 5]
    full = Blender().blend([ranked("m", [0, 1, 2, 3, 4, 5])], 3, business_filter=in_stock)
    assert full.items.tolist() == [1, 3, 4]


def test_business_filter_must_return_a_boolean_mask() -> None:
    with pytest.raises(DataError, match="business_filter"):
        Blender().blend([ranked("m", [0, 1])], 2, business_filter=lambda items: items * 1)
    with pytest.raises(DataError, match="business_filter"):
        Blender().blend([ranked("m", [0, 1])], 2, business_filter=lambda items: np.ones(1, bool))


# -- determinism and edges -----------------------------------------------------------------
def test_ties_go_to_the_lower_item_index_and_results_repeat() -> None:
    out = Blender(BlendConfig(normalisation="minmax")).blend([src("m", [5, 2, 9], [1.0] * 3)], 3)
    assert out.items.tolist() == [2, 5, 9]
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 4))
    blender = Blender(BlendConfig(mmr_lambda=0.6), embeddings=emb)
    cands = [
        src(name, rng.permutation(50)[:30].tolist(), np.round(rng.random(30), 1).tolist())
        for name in ("a", "b", "c")
    ]
    first = blender.blend(cands, 10)
    again = blender.blend(cands, 10)
    assert first.items.tolist() == again.items.tolist() and first.sources == again.sources
    assert len(set(first.items.tolist())) == 10


def test_empty_and_short_inputs() -> None:
    empty = Blender().blend([], 5)
    assert isinstance(empty, Blended) and len(empty) == 0 and empty.sources == ()
    assert Blender().blend([ranked("m", [3])], 5).items.tolist() == [3]
    with pytest.raises(ConfigError, match="k must be positive"):
        Blender().blend([ranked("m", [3])], 0)
    with pytest.raises(DataError, match="one length"):
        Blender().blend([src("m", [1, 2], [1.0])], 1)


# -- validation -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        {"mmr_lambda": 1.5},
        {"mmr_lambda": -0.1},
        {"novelty_weight": -1.0},
        {"novelty_weight": float("inf")},
        {"max_generated_share": 2.0},
        {"normalisation": "softmax"},
        {"mmr_weight": 0.5},
    ],
)
def test_config_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        BlendConfig(**kwargs)


def test_config_is_frozen() -> None:
    with pytest.raises(ValidationError):
        BlendConfig().mmr_lambda = 0.5  # type: ignore[misc]


def test_preferences_parse_and_ignore_unknown_keys() -> None:
    controls = UserControls.from_preferences(
        {
            "excluded_genres": ["Horror"],
            "blocked_genres": ["War"],
            "max_generated_share": 0.2,
            "diversity": 0.3,
            "theme": "dark",
        }
    )
    assert controls.excluded_attributes == {"genres": frozenset({"Horror", "War"})}
    assert controls.max_generated_share == 0.2 and controls.diversity == 0.3
    assert UserControls.from_preferences({}) == UserControls()


@pytest.mark.parametrize(
    ("prefs", "key"),
    [
        ({"excluded_genres": "Horror"}, "excluded_genres"),
        ({"excluded_genres": [1]}, "excluded_genres"),
        ({"max_generated_share": 1.5}, "max_generated_share"),
        ({"max_generated_share": "0.2"}, "max_generated_share"),
        ({"diversity": True}, "diversity"),
        ({"diversity": float("nan")}, "diversity"),
        ({"diversity": -0.1}, "diversity"),
    ],
)
def test_bad_preferences_name_the_key(prefs: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        UserControls.from_preferences(prefs)


def test_controls_validation() -> None:
    with pytest.raises(ConfigError, match="diversity"):
        UserControls(diversity=2.0)
    with pytest.raises(ConfigError, match="genres"):
        UserControls(excluded_attributes={"genres": "Horror"})  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="JSON object"):
        UserControls.from_preferences(["Horror"])  # type: ignore[arg-type]
