"""Segment labels, head/tail bands and breakdown tables, checked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recloop.data import IdMap, Interactions, Users
from recloop.eval import (
    activity_terciles,
    age_band,
    band_ranking_metrics,
    breakdown,
    exposure_share,
    head_items,
    item_band_breakdown,
    user_segments,
)


@pytest.mark.parametrize(
    ("age", "band"),
    [
        (1, "<18"),
        (17, "<18"),
        (17.9, "<18"),
        (18, "18-24"),
        (24, "18-24"),
        (25, "25-34"),
        (34, "25-34"),
        (35, "35-44"),
        (44, "35-44"),
        (45, "45-55"),
        (50, "45-55"),
        (55, "45-55"),
        (55.5, "45-55"),
        (56, "56+"),
        (90, "56+"),
        ("56", "56+"),
        ("25-34", "25-34"),
        (None, None),
        ("unknown", None),
        (float("nan"), None),
    ],
)
def test_age_band_boundaries(age: object, band: str | None) -> None:
    assert age_band(age) == band


def test_activity_terciles() -> None:
    # sorted counts [1..6], n = 6: c1 = 2nd value = 2, c2 = 4th value = 4
    labels = activity_terciles(np.array([6, 1, 4, 3, 2, 5]))
    assert labels.tolist() == ["high", "low", "mid", "mid", "low", "high"]
    # ties share a band: [1, 1, 1, 1, 5, 6] -> c1 = c2 = 1, so four lows, no mid, two highs
    labels = activity_terciles(np.array([1, 1, 1, 1, 5, 6]))
    assert labels.tolist() == ["low"] * 4 + ["high"] * 2
    # n = 7: c1 = 3rd value, c2 = 5th value -> 3 low, 2 mid, 2 high
    labels = activity_terciles(np.arange(7))
    assert labels.tolist() == ["low"] * 3 + ["mid"] * 2 + ["high"] * 2
    assert activity_terciles(np.array([], dtype=int)).tolist() == []


def counts_train(counts: list[int]) -> Interactions:
    """Train data in which item i has counts[i] rows, one user per row."""
    items = np.repeat(np.arange(len(counts)), counts)
    return Interactions.from_arrays(
        np.arange(len(items)), items, items=IdMap(str(i) for i in range(len(counts)))
    )


def test_head_items() -> None:
    # counts [5, 3, 1, 1, 0], total 10, half 5: item 0 alone covers 5 -> head {0}
    assert head_items(counts_train([5, 3, 1, 1, 0])).tolist() == [True] + [False] * 4
    # [3, 3, 2, 2]: 3 < 5, 3 + 3 = 6 >= 5 -> head {0, 1}
    assert head_items(counts_train([3, 3, 2, 2])).tolist() == [True, True, False, False]
    # ties go to the lower index: [2, 3, 3, 2] -> order 1, 2, 0, 3; 3 + 3 >= 5 -> head {1, 2}
    assert head_items(counts_train([2, 3, 3, 2])).tolist() == [False, True, True, False]
    # negative events do not count towards popularity
    train = Interactions.from_arrays([0, 1, 2], [0, 1, 1], event=[1, 5, 5])
    assert head_items(train).tolist() == [True, False]


def test_band_metrics_by_hand() -> None:
    head = np.array([True, True, False, False, False, False, False, False])
    # user 0: R = [0, 5, 1], T = {1, 5, 7}: head T = {1} (hit at rank 3),
    #   tail T = {5, 7} (5 hit at rank 2): recall@3 head = 1/1, tail = 1/2
    #   ndcg@3 head = (1/log2 4) / 1 = 0.5; tail = (1/log2 3) / (1 + 1/log2 3) = 0.38685
    # user 1: R = [2, 3, -1], T = {0}: head only, no hit; no tail targets -> not in tail
    recs = np.array([[0, 5, 1], [2, 3, -1]])
    indptr = np.array([0, 3, 4])
    items = np.array([1, 5, 7, 0])
    bands = band_ranking_metrics(recs, indptr, items, head, ks=(3,))
    assert bands["head"].rows.tolist() == [0, 1]
    assert bands["tail"].rows.tolist() == [0]
    assert bands["head"].per_user["recall@3"].tolist() == [1.0, 0.0]
    assert bands["tail"].per_user["recall@3"].tolist() == [0.5]
    assert bands["head"].per_user["ndcg@3"][0] == pytest.approx(0.5)
    assert bands["tail"].per_user["ndcg@3"][0] == pytest.approx(0.38685, abs=1e-5)
    # exposure@3: shown slots 0, 5, 1, 2, 3 -> head 2 of 5 = 0.4, tail 0.6
    share = exposure_share(recs, head, 3)
    assert share["head"] == pytest.approx(0.4) and share["tail"] == pytest.approx(0.6)
    table = item_band_breakdown(recs, indptr, items, head, ks=(3,))
    assert table["head"]["users"] == 2 and table["tail"]["users"] == 1
    assert table["head"]["items"] == 2 and table["tail"]["items"] == 6
    assert table["head"]["recall@3"] == pytest.approx(0.5)
    assert table["tail"]["exposure_share@3"] == pytest.approx(0.6)
    with pytest.raises(ValueError, match="head mask"):
        band_ranking_metrics(recs, indptr, items, head[:5], ks=(3,))


def test_breakdown_table() -> None:
    per_user = {
        "recall@10": np.array([1.0, 0.0, 0.5, 0.25]),
        "ild@10": np.array([0.2, np.nan, 0.4, 0.6]),
    }
    segments = {
        "gender": np.array(["F", "M", "F", None], dtype=object),
        "age": np.array(["56+", "<18", "56+", "25-34"], dtype=object),
    }
    table = breakdown(per_user, segments)
    assert table["gender"]["F"] == {"recall@10": 0.75, "ild@10": pytest.approx(0.3), "users": 2}
    assert table["gender"]["M"]["users"] == 1
    assert math.isnan(table["gender"]["M"]["ild@10"])  # its only value is undefined
    assert list(table["gender"]) == ["F", "M"]  # the unknown user is left out
    assert list(table["age"]) == ["<18", "25-34", "56+"]  # band order, not string order
    with pytest.raises(ValueError, match="users"):
        breakdown({"recall@10": np.zeros(2)}, segments)


def test_user_segments_sources() -> None:
    ids = IdMap(["u0", "u1", "u2", "u3"])
    users = Users(ids, {"gender": ["M", "F", None, "F"], "age": [23, 56, 45, "n/a"]})
    train = Interactions.from_arrays([0, 1, 1, 2, 2, 2, 3, 3, 3, 3], [0] * 10, users=ids)
    labels = user_segments(np.array([0, 1, 2, 3, -1]), users=users, train=train)
    assert labels["gender"].tolist() == ["M", "F", None, "F", None]
    assert labels["age"].tolist() == ["18-24", "56+", "45-55", None, None]
    # train sizes of known users [1, 2, 3, 4]: c1 = 2nd = 2, c2 = 3rd = 3
    assert labels["activity"].tolist() == ["low", "low", "mid", "high", None]
    # missing sources are skipped, not errors
    assert user_segments(np.array([0]), users=Users(ids, {"gender": ["M"] * 4})).keys() == {
        "gender"
    }
    assert user_segments(np.array([0])) == {}


def test_head_share_products_that_round_up_add_no_item() -> None:
    """0.55 × 100 is 55.000000000000007 in floats: item 0 alone covers 55 of 100 rows."""
    from recloop.eval.fairness import bands_from_counts

    counts = [55, 30, 15]
    users = np.repeat(np.arange(100), 1)
    items = np.repeat([0, 1, 2], counts)
    train = Interactions.from_arrays(user=users, item=items)
    assert head_items(train, 0.55).tolist() == [True, False, False]
    assert list(bands_from_counts(counts, 0.55, 0.2)) == ["head", "mid", "tail"]
