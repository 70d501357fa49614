"""Core data types: id maps, interactions views, queries, exclusions, filters."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from recloop.data import (
    Catalog,
    Dataset,
    EventKind,
    Exclusions,
    IdMap,
    Interactions,
    Queries,
    deduplicate,
    k_core,
)
from recloop.errors import DataError, UnknownIdError


def test_idmap_is_stable_and_strict() -> None:
    ids = IdMap(["b", "a", "josé"])
    assert ids.index(["a", "josé"]).tolist() == [1, 2]
    assert ids.add(["c", "a"]).tolist() == [3, 1]  # append-only: existing ids keep their index
    assert ids.ids() == ["b", "a", "josé", "c"]
    with pytest.raises(UnknownIdError, match="'zzz'"):
        ids.index(["a", "zzz"])
    assert ids.index(["a", "zzz"], unknown="new").tolist() == [1, -1]
    with pytest.raises(DataError, match="duplicate id 'x'"):
        IdMap(["x", "x"])


def test_event_kind_parse() -> None:
    assert EventKind.parse("Dislike") is EventKind.DISLIKE
    assert EventKind.parse("3") is EventKind.PURCHASE
    assert EventKind.DISLIKE.is_negative and not EventKind.LIKE.is_negative
    with pytest.raises(ValueError, match="unknown event kind"):
        EventKind.parse("love")


def test_histories_use_a_stable_time_sort() -> None:
    data = Interactions.from_arrays([1, 0, 1, 1, 0], [9, 3, 7, 8, 4], [5, 2, 5, 1, 1])
    indptr, items = data.histories()
    assert indptr.tolist() == [0, 2, 5]
    assert items[:2].tolist() == [4, 3]
    assert items[2:].tolist() == [8, 9, 7]  # 9 and 7 tie at t=5 and keep input order


def test_negatives_are_kept_but_not_positive() -> None:
    ev = [int(EventKind.CLICK), int(EventKind.DISLIKE), int(EventKind.SKIP)]
    data = Interactions.from_arrays([0, 0, 0], [0, 1, 2], event=ev)
    assert len(data) == 3
    assert data.positive().item.tolist() == [0]
    assert data.to_csr().toarray().tolist() == [[1, 0, 0]]
    assert data.to_csr(positive_only=False).nnz == 3


def test_to_csr_counts_repeats_once() -> None:
    data = Interactions.from_arrays([0, 0, 1], [2, 2, 0], value=[3.0, 5.0, 1.0])
    assert data.to_csr().toarray().tolist() == [[0, 0, 1], [1, 0, 0]]
    assert data.to_csr(binary=False).toarray().tolist() == [[0, 0, 8], [1, 0, 0]]


def test_interactions_validate_indices() -> None:
    with pytest.raises(ValueError, match="outside the item IdMap"):
        Interactions.from_arrays([0], [5], items=IdMap(["a"]))


def test_queries_take_and_csr() -> None:
    q = Queries.from_lists([0, -1, 2], [[1, 2], [], [3]])
    sub = q.take(np.array([2, 0]))
    assert sub.user.tolist() == [2, 0]
    assert sub.history(0).tolist() == [3] and sub.history(1).tolist() == [1, 2]
    assert q.history_lengths().tolist() == [2, 0, 1]
    assert q.history_csr(4).toarray().sum(axis=1).tolist() == [2, 0, 1]


def test_exclusions_union() -> None:
    a = Exclusions.from_lists([[1], [2, 3]])
    b = Exclusions.from_lists([[0, 1], []])
    u = a.union(b)
    assert u.to_csr(4).toarray().tolist() == [[1, 1, 0, 0], [0, 0, 1, 1]]


def test_dataset_requires_shared_maps() -> None:
    data = Interactions.from_arrays([0], [0])
    cat = Catalog(IdMap(["0"]), ["t"], ["text"])
    with pytest.raises(ValueError, match="share"):
        Dataset("x", data, catalog=cat)
    Dataset("x", data, catalog=Catalog(data.items, ["t"], ["text"]))


def test_deduplicate_policies() -> None:
    data = Interactions.from_arrays([0, 0, 0, 1], [5, 5, 6, 5], [3, 1, 2, 1], value=[1, 2, 3, 4])
    last = deduplicate(data, "keep_last")
    assert sorted(zip(last.user.tolist(), last.value.tolist(), strict=True)) == [
        (0, 1.0),  # (0, 5) at t=3 is the last
        (0, 3.0),
        (1, 4.0),
    ]
    first = deduplicate(data, "keep_first")
    assert sorted(first.value.tolist()) == [2.0, 3.0, 4.0]
    assert len(deduplicate(data, "keep_all")) == 4


def test_k_core_is_iterative() -> None:
    # item 2 has one interaction; dropping it leaves user 1 with one → user 1 goes too
    data = Interactions.from_arrays([0, 0, 1, 1, 2, 2], [0, 1, 1, 2, 0, 1])
    core = k_core(data, user_core=2, item_core=2)
    assert sorted(set(core.user.tolist())) == [0, 2]
    assert (np.bincount(core.item) >= 2).all() or len(core) == 0


def test_csr_views_never_rewrite_their_source() -> None:
    ex = Exclusions.from_lists([[9, 4, 4], [1, 0]])
    q = Queries.from_lists([0, 1], [[7, 3, 3, 1], [2, 0]])
    before = [ex.items.copy(), ex.indptr.copy(), q.history_items.copy()]
    ex.to_csr(10)
    q.history_csr(10)
    for a, b in zip(before, [ex.items, ex.indptr, q.history_items], strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize(
    ("history", "message"),
    [
        ([1, -1], "out of range"),  # -1 is IdMap's "new item": never an index
        ([2**32 + 3], "out of range"),  # would wrap around to item 3
        ([2.9, 7.5], "whole numbers"),  # would be truncated to items 2 and 7
        ([float("nan")], "whole numbers"),
        (["3"], "integer indices"),
    ],
)
def test_queries_refuse_indices_a_cast_would_change(history: list[Any], message: str) -> None:
    with pytest.raises(DataError, match=message):
        Queries.from_lists([0], [history])


def test_queries_and_exclusions_take_exact_indices() -> None:
    queries = Queries.from_lists([-1, 4], [[1.0, 2.0], []])  # whole floats are exact
    assert queries.history_items.dtype == np.int32 and queries.history_items.tolist() == [1, 2]
    with pytest.raises(DataError, match="user: index -2"):
        Queries.from_lists([-2], [[1]])
    with pytest.raises(DataError, match="Exclusions: item: index -1"):
        Exclusions.from_lists([[0], [-1]])  # would exclude the last item through wrap-around
    assert Exclusions.from_lists([[], [3, 3]]).items.tolist() == [3, 3]
