"""Evidence: drivers from the model's attribution, what they share with the item, JSON form."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pytest

from recloop.data.types import Catalog, IdMap, Interactions, Queries
from recloop.generative.evidence import (
    Attribution,
    Evidence,
    EvidenceError,
    ItemFacts,
    build_evidence,
    catalog_facts,
    model_attribution,
    reading_title,
    sid_lookup,
    split_title_year,
)
from recloop.models import BPR, EASE, BPRConfig, ItemKNN
from recloop.models.base import ScoringRecommender

FACTS = {
    "a": ItemFacts("a", "Toy Story", 1995, ("Animation", "Comedy")),
    "b": ItemFacts("b", "Aladdin", 1992, ("Animation", "Comedy", "Musical")),
    "c": ItemFacts("c", "Heat", 1995, ("Action", "Crime")),
    "d": ItemFacts("d", "Casablanca", 1942, ("Drama", "Romance")),
    "e": ItemFacts("e", "Lion King, The", 1994, ("Animation", "Musical")),
}


def fixed(weights: dict[str, float]) -> Attribution:
    """An attribution that gives each history item a fixed contribution."""

    def contributions(history: Sequence[str], item_id: str) -> list[float]:
        return [weights.get(h, 0.0) for h in history]

    return Attribution("fixed", contributions)


def test_drivers_are_the_history_items_that_raise_the_score_most() -> None:
    ev = build_evidence(
        "a",
        ["b", "c", "d", "e"],
        FACTS,
        attribution=fixed({"b": 0.2, "c": -0.5, "d": 0.0, "e": 0.7}),
        source="EASE",
        score=0.9,
    )
    assert [d.item.item_id for d in ev.drivers] == ["e", "b"]  # positive ones, largest first
    assert [d.weight for d in ev.drivers] == [0.7, 0.2]
    assert ev.method == "fixed" and ev.source == "EASE" and ev.score == 0.9
    assert ev.drivers[0].shared_genres == ("Animation",)
    assert ev.drivers[1].shared_genres == ("Animation", "Comedy")
    assert ev.shared_genres == ("Animation", "Comedy")  # most shared first
    assert ev.drivers[0].same_decade and not ev.drivers[0].same_year
    assert ev.shared_decade == "1990s" and ev.shared_year is None
    assert {
        "Toy Story (1995)",
        "Aladdin",
        "The Lion King",
        "Musical",
        "1992",
        "1990s",
        "EASE",
    } <= set(ev.allowed_names)
    assert "Heat" not in ev.allowed_names and "Crime" not in ev.allowed_names


def test_without_a_useful_attribution_drivers_are_the_most_similar_items() -> None:
    for attribution in (None, fixed({})):
        ev = build_evidence("a", ["d", "c", "b", "e"], FACTS, attribution=attribution)
        assert ev.method == "similarity"
        # Aladdin shares both genres; The Lion King one; both are from the 1990s
        assert [d.item.item_id for d in ev.drivers] == ["b", "e", "c"]


def test_an_empty_history_has_no_drivers() -> None:
    ev = build_evidence("a", [], FACTS, source="popular")
    assert ev.drivers == () and ev.method == "none" and not ev.has_personal_data
    assert ev.shared_genres == () and ev.shared_decade is None


def test_the_item_itself_and_repeats_are_not_drivers_and_history_is_capped() -> None:
    ev = build_evidence("a", ["a", "b", "b", "e", "c"], FACTS, attribution=fixed({"b": 1, "e": 1}))
    assert sorted(d.item.item_id for d in ev.drivers) == ["b", "e"]
    capped = build_evidence(
        "a", ["b", "e", "c"], FACTS, attribution=fixed({"b": 1, "e": 1}), max_history=1
    )
    # only the most recent ("c") was considered; it adds nothing to the score, so the
    # drivers fall back to similarity: Heat is from the same year
    assert [d.item.item_id for d in capped.drivers] == ["c"]
    assert capped.method == "similarity" and capped.drivers[0].same_year


def test_shared_semantic_id_prefix_ignores_the_collision_suffix() -> None:
    sids = {"a": (3, 7, 1, 0), "b": (3, 7, 2, 0), "e": (3, 9, 1, 1)}
    ev = build_evidence(
        "a", ["b", "e"], FACTS, attribution=fixed({"b": 1, "e": 2}), semantic_ids=sids
    )
    assert ev.item_sid == (3, 7, 1, 0)
    assert {d.item.item_id: d.shared_sid_prefix for d in ev.drivers} == {"e": (3,), "b": (3, 7)}
    assert ev.shared_sid_prefix == (3, 7)
    same_but_suffix = build_evidence(
        "a", ["b"], FACTS, attribution=fixed({"b": 1}), semantic_ids={"a": (1, 2), "b": (1, 3)}
    )
    assert same_but_suffix.drivers[0].shared_sid_prefix == (1,)
    codes = np.array([[1, 2, 0], [1, 2, 1]])
    lookup = sid_lookup(codes, IdMap(["x", "y"]))
    assert lookup("y") == (1, 2, 1) and lookup("unknown") is None


def test_evidence_round_trips_through_json() -> None:
    ev = build_evidence(
        "a", ["b", "e"], FACTS, attribution=fixed({"b": 1, "e": 2}), source="EASE", score=1.5
    )
    back = Evidence.from_dict(json.loads(ev.to_json()))
    assert back == ev
    with pytest.raises(EvidenceError, match="item"):
        Evidence.from_dict({"drivers": []})


def test_unknown_item_and_bad_arguments_are_errors() -> None:
    with pytest.raises(EvidenceError, match="unknown item 'zz'"):
        build_evidence("zz", ["a"], FACTS)
    with pytest.raises(EvidenceError, match="n_drivers"):
        build_evidence("a", ["b"], FACTS, n_drivers=-1)


def test_item_facts_from_plain_attributes() -> None:
    facts = ItemFacts.from_attributes(
        "7",
        "Usual Suspects, The (1995)",
        {"genres": "Crime|Thriller|unknown", "director": "Bryan Singer", "runtime": 106},
    )
    assert facts.title == "Usual Suspects, The" and facts.year == 1995
    assert facts.genres == ("Crime", "Thriller")
    assert facts.attributes == (("director", ("Bryan Singer",)),)
    assert facts.name == "The Usual Suspects" and facts.display == "The Usual Suspects (1995)"
    assert split_title_year("Heat") == ("Heat", None)
    assert reading_title("City of Lost Children, The (Cité des enfants perdus, La)") == (
        "The City of Lost Children"
    )
    assert reading_title("Femme Nikita, La") == "La Femme Nikita"


def tiny_catalogue() -> tuple[Interactions, Catalog]:
    rng = np.random.default_rng(3)
    users, items = [], []
    for u in range(40):
        group = range(0, 5) if u < 20 else range(5, 10)
        for i in rng.permutation(list(group))[:3]:
            users.append(u)
            items.append(int(i))
    item_map = IdMap(f"i{i}" for i in range(10))
    inter = Interactions.from_arrays(
        users, items, list(range(len(users))), users=IdMap(range(40)), items=item_map
    )
    catalog = Catalog(
        item_map,
        [f"Film {i}" for i in range(10)],
        [""] * 10,
        {
            "genres": [["A"] if i < 5 else ["B"] for i in range(10)],
            "year": [1990 + i for i in range(10)],
        },
    )
    return inter, catalog


@pytest.mark.parametrize("model", [EASE(), ItemKNN()])
def test_item_weights_equal_leave_one_out_for_linear_models(model: ScoringRecommender) -> None:
    inter, catalog = tiny_catalogue()
    model.fit(inter)
    fast = model_attribution(model, inter.items)
    assert fast is not None and fast.method == "item_weights"
    history = ["i0", "i1", "i2", "i6"]
    generic = Attribution("leave_one_out", _loo(model, inter.items))
    for target in ("i3", "i4", "i7"):
        assert np.allclose(
            fast.contributions(history, target), generic.contributions(history, target), atol=1e-5
        )
    facts = catalog_facts(catalog)
    ev = build_evidence("i3", history, facts, attribution=fast, source=model.name)
    assert ev.drivers and all(d.item.item_id in {"i0", "i1", "i2"} for d in ev.drivers)
    assert all(d.shared_genres == ("A",) for d in ev.drivers)


def _loo(model: ScoringRecommender, items: IdMap):  # type: ignore[no-untyped-def]
    """Leave-one-out by hand: the score with the whole history minus the score without h."""

    def contributions(history: Sequence[str], item_id: str) -> list[float]:
        target = int(items.index([item_id])[0])
        rows = items.index(list(history)).tolist()
        full = model.score(Queries.from_lists([-1], [rows]))[0, target]
        return [
            float(
                full - model.score(Queries.from_lists([-1], [rows[:j] + rows[j + 1 :]]))[0, target]
            )
            for j in range(len(rows))
        ]

    return contributions


def test_other_scoring_models_get_leave_one_out() -> None:
    inter, _ = tiny_catalogue()
    model = BPR(BPRConfig(factors=4, epochs=2)).fit(inter)
    attribution = model_attribution(model, inter.items)
    assert attribution is not None and attribution.method == "leave_one_out"
    values = attribution.contributions(["i0", "i1", "unknown-item"], "i2")
    assert len(values) == 3 and values[2] == 0.0
    assert model_attribution(object(), inter.items) is None


def test_movielens_evidence_names_real_titles(ml100k) -> None:  # type: ignore[no-untyped-def]
    facts = catalog_facts(ml100k.catalog)
    assert facts["50"].display == "Star Wars (1977)"
    assert "Sci-Fi" in facts["50"].genres
    usual = next(f for f in facts.values() if f.title == "Usual Suspects, The")
    assert usual.display == "The Usual Suspects (1995)"
