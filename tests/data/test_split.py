"""Split protocols: the edge cases the architecture pins down."""

from __future__ import annotations

import numpy as np
import pytest

from recloop.data import (
    EventKind,
    Filters,
    Interactions,
    cold_items,
    loo,
    make_split,
    ratio,
    recbole_split_counts,
    temporal,
)
from recloop.errors import ConfigError


def _random_log(seed: int = 0, n_users: int = 40, n_items: int = 60, n: int = 900) -> Interactions:
    rng = np.random.default_rng(seed)
    return Interactions.from_arrays(
        rng.integers(0, n_users, n),
        rng.integers(0, n_items, n),
        rng.integers(0, 50, n),  # few distinct timestamps: many ties
        rng.integers(1, 6, n).astype(np.float32),
        users=None,
        items=None,
    )


def _pairs(data: Interactions) -> set[tuple[int, int, int]]:
    return set(zip(data.user.tolist(), data.item.tolist(), data.timestamp.tolist(), strict=True))


# ----------------------------------------------------------------------------- loo
def test_loo_ties_keep_input_order() -> None:
    # user 0: items 5, 6, 7 all at t=10 → stable order keeps file order: 7 is last
    data = Interactions.from_arrays([0, 0, 0, 0], [4, 5, 6, 7], [1, 10, 10, 10])
    s = loo(data)
    assert s.test.item.tolist() == [7]
    assert s.valid.item.tolist() == [6]
    assert sorted(s.train.item.tolist()) == [4, 5]


def test_loo_users_with_fewer_than_three_stay_in_train() -> None:
    data = Interactions.from_arrays([0, 0, 1, 2, 2, 2], [0, 1, 0, 0, 1, 2], [1, 2, 1, 1, 2, 3])
    s = loo(data)
    assert set(s.train.user.tolist()) == {0, 1, 2}
    assert s.valid.user.tolist() == [2] and s.test.user.tolist() == [2]
    assert s.meta["users_wholly_in_train"] == 2
    assert len(s.evaluation_set("test")) == 1


def test_loo_partition_is_exact_and_chronological() -> None:
    data = _random_log()
    s = loo(data)
    assert len(s.train) + len(s.valid) + len(s.test) == len(data)
    assert _pairs(s.train) | _pairs(s.valid) | _pairs(s.test) == _pairs(data)
    for u in np.unique(s.test.user):
        t_test = s.test.timestamp[s.test.user == u][0]
        t_valid = s.valid.timestamp[s.valid.user == u][0]
        assert t_valid <= t_test
        assert (s.train.timestamp[s.train.user == u] <= t_valid).all()


def test_loo_queries_follow_the_protocol() -> None:
    data = Interactions.from_arrays([0, 0, 0, 0], [3, 1, 2, 0], [1, 2, 3, 4])
    s = loo(data)
    valid = s.evaluation_set("valid")
    test = s.evaluation_set("test")
    assert valid.queries.history(0).tolist() == [3, 1]  # train, time order
    assert valid.targets(0).tolist() == [2]
    assert test.queries.history(0).tolist() == [3, 1, 2]  # train + valid item, no refit
    assert test.targets(0).tolist() == [0]
    assert test.exclude.items.tolist() == [3, 1, 2]  # exclusions are exactly the history


def test_loo_negatives_are_never_targets() -> None:
    dislike, click = int(EventKind.DISLIKE), int(EventKind.CLICK)
    data = Interactions.from_arrays(
        [0, 0, 0, 0, 0],
        [0, 1, 2, 3, 4],
        [1, 2, 3, 4, 5],
        event=[click, click, click, click, dislike],
    )
    s = loo(data)
    assert s.test.positive().item.tolist() == [3]  # the dislike at t=5 is not the test item
    assert s.evaluation_set("test").targets(0).tolist() == [3]
    assert 4 in s.test.item.tolist()  # kept, in the part whose time window holds it


def test_ml100k_ties_at_last_timestamp(ml100k) -> None:  # type: ignore[no-untyped-def]
    data = ml100k.interactions
    order = np.lexsort((data.timestamp, data.user))
    users, ts = data.user[order], data.timestamp[order]
    last = np.r_[users[1:] != users[:-1], True]
    prev_same = np.r_[False, (users[1:] == users[:-1]) & (ts[1:] == ts[:-1])]
    assert int((last & prev_same).sum()) == 415  # the architecture's figure
    s = loo(data)
    assert len(s.test) == 943 and len(s.valid) == 943
    # under ties the test item is the last of the tied rows in file order
    for u in range(0, 943, 97):
        rows = np.flatnonzero(data.user == u)
        rows = rows[np.argsort(data.timestamp[rows], kind="stable")]
        assert s.test.item[s.test.user == u][0] == data.item[rows[-1]]


# ----------------------------------------------------------------------------- ratio
@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (1, [1, 0, 0]),  # train keeps its only row
        (2, [1, 0, 1]),  # test gets one, train keeps one, valid none
        (3, [1, 1, 1]),
        (9, [7, 1, 1]),
        (10, [8, 1, 1]),
        (19, [17, 1, 1]),
        (20, [16, 2, 2]),
        (25, [21, 2, 2]),
        (30, [24, 3, 3]),
        (70, [56, 7, 7]),
        (737, [591, 73, 73]),
    ],
)
def test_recbole_rounding(n: int, expected: list[int]) -> None:
    assert recbole_split_counts(n) == expected
    assert sum(expected) == n


def test_ratio_counts_per_user_and_determinism() -> None:
    data = _random_log(seed=1)
    a, b, c = ratio(data, seed=0), ratio(data, seed=0), ratio(data, seed=1)
    assert _pairs(a.test) == _pairs(b.test) and _pairs(a.valid) == _pairs(b.valid)
    assert _pairs(a.test) != _pairs(c.test)
    counts = data.user_counts()
    for u in range(data.n_users):
        exp = recbole_split_counts(int(counts[u]))
        got = [int((p.user == u).sum()) for p in (a.train, a.valid, a.test)]
        assert got == exp


def test_ratio_test_excludes_validation_items() -> None:
    data = Interactions.from_arrays([0] * 20, list(range(20)))
    s = ratio(data, seed=3)
    ev = s.evaluation_set("test")
    train_items = set(s.train.item.tolist())
    valid_items = set(s.valid.item.tolist())
    assert set(ev.queries.history(0).tolist()) == train_items  # query holds train items only
    assert set(ev.exclude.items.tolist()) == train_items | valid_items
    assert set(ev.targets(0).tolist()) == set(s.test.item.tolist())


# ----------------------------------------------------------------------------- temporal
def test_temporal_cuts_are_global_and_ties_stay_together() -> None:
    data = Interactions.from_arrays(
        [0, 1, 2, 0, 1, 2, 0, 1, 2, 0], list(range(10)), [1, 2, 3, 4, 5, 6, 7, 8, 8, 8]
    )
    s = temporal(data, valid_share=0.2, test_share=0.2)
    assert s.test.timestamp.min() >= s.meta["test_start"] == 8
    assert len(s.test) == 3  # all three rows at t=8, though 20% would be 2
    assert (s.train.timestamp < s.meta["valid_start"]).all()
    fixed = temporal(data, valid_start=5, test_start=7)
    assert sorted(fixed.valid.timestamp.tolist()) == [5, 6]
    with pytest.raises(ConfigError):
        temporal(data, valid_start=8, test_start=2)


# ----------------------------------------------------------------------------- cold items
def test_cold_items_never_leak_into_train() -> None:
    data = _random_log(seed=2, n_items=100, n=3000)
    s = cold_items(data, seed=0, share=0.1)
    assert s.cold_valid_items is not None and s.cold_test_items is not None
    cold = np.concatenate([s.cold_valid_items, s.cold_test_items])
    assert len(cold) == 10 and len(np.unique(cold)) == 10
    assert not np.isin(s.train.item, cold).any()
    assert set(s.valid.item.tolist()) <= set(s.cold_valid_items.tolist())
    assert set(s.test.item.tolist()) <= set(s.cold_test_items.tolist())
    assert len(s.train) + len(s.valid) + len(s.test) == len(data)
    again = cold_items(data, seed=0, share=0.1)
    assert np.array_equal(again.cold_test_items, s.cold_test_items)
    other = cold_items(data, seed=1, share=0.1)
    assert not np.array_equal(other.cold_test_items, s.cold_test_items)


# ----------------------------------------------------------------------------- make_split
def test_make_split_records_filters() -> None:
    data = _random_log(seed=4)
    s = make_split(data, "loo", seed=2, filters=Filters(min_rating=4, user_core=5))
    assert s.protocol == "loo" and s.seed == 2
    assert s.meta["filters"]["min_rating"] == 4
    assert s.meta["rows_out"] == len(s.train) + len(s.valid) + len(s.test)
    assert (s.train.value >= 4).all()
    with pytest.raises(ConfigError, match="unknown protocol"):
        make_split(data, "random")
