"""The prefix trie: lookups, batched next-token masks, exclusions, updates."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from recloop.errors import ConfigError
from recloop.semantic_ids.trie import PrefixTrie

CODES = np.array(
    [
        [0, 1, 0],
        [0, 1, 1],
        [0, 2, 0],
        [3, 1, 0],
    ]
)


def brute_next(codes: np.ndarray, prefix: tuple[int, ...], vocab: int) -> np.ndarray:
    allowed = np.zeros(vocab, dtype=bool)
    for row in codes:
        if tuple(row[: len(prefix)]) == prefix:
            allowed[row[len(prefix)]] = True
    return allowed


def test_lookup_and_codes() -> None:
    trie = PrefixTrie(CODES, items=np.array([10, 11, 12, 13]))
    assert trie.lookup(CODES).tolist() == [10, 11, 12, 13]
    assert trie.lookup(np.array([[0, 1, 2], [9, 9, 9]])).tolist() == [-1, -1]
    assert trie.codes_of(np.array([12, 10])).tolist() == [[0, 2, 0], [0, 1, 0]]
    assert sorted(trie.items_with_prefix(np.array([0, 1])).tolist()) == [10, 11]
    assert trie.vocab == (4, 3, 2)


def test_next_tokens_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    codes = np.unique(rng.integers(0, 4, size=(60, 3)), axis=0)
    trie = PrefixTrie(codes)
    vocab = trie.vocab
    for depth in range(3):
        prefixes = list(itertools.product(*(range(v) for v in vocab[:depth])))
        arr = np.array(prefixes, dtype=np.int64).reshape(len(prefixes), depth)
        nodes = trie.walk(arr)
        nxt = trie.next_tokens(depth, nodes)
        for row, prefix in enumerate(prefixes):
            assert ((nxt[row] >= 0) == brute_next(codes, prefix, vocab[depth])).all()


def test_exclusions_block_exhausted_prefixes() -> None:
    trie = PrefixTrie(CODES)
    # query 0 excludes both items under (0, 1); query 1 excludes only item 0
    indptr, items = np.array([0, 2, 3]), np.array([0, 1, 0])
    blocked = trie.blocked_counts((indptr, items))
    root = np.zeros(2, dtype=np.int64)
    level0 = trie.next_tokens(0, root, blocked, rows=np.array([0, 1]))
    assert (level0[:, 0] >= 0).all() and (level0[:, 3] >= 0).all()
    node_0 = level0[:, 0]
    level1 = trie.next_tokens(1, node_0, blocked, rows=np.array([0, 1]))
    assert level1[0, 1] == -1 and level1[0, 2] >= 0  # (0,1,*) all excluded for query 0
    assert level1[1, 1] >= 0
    node_01 = trie.step(1, np.array([node_0[1]]), np.array([1]))
    level2 = trie.next_tokens(2, node_01, blocked, rows=np.array([1]))
    assert level2[0, 0] == -1 and level2[0, 1] >= 0


def test_repeated_exclusions_count_once() -> None:
    """An item excluded twice (a history with repeats) must not hide its prefix siblings."""
    trie = PrefixTrie(CODES, items=np.array([10, 11, 12, 13]))
    once = trie.blocked_counts((np.array([0, 1, 2]), np.array([10, 13])))
    twice = trie.blocked_counts((np.array([0, 3, 5]), np.array([10, 10, 99, 13, 13])))
    rows = np.array([0, 1])
    for level in range(trie.depth + 1):
        np.testing.assert_array_equal(twice.per_level[level][0], once.per_level[level][0])
        np.testing.assert_array_equal(twice.per_level[level][1], once.per_level[level][1])
    node_01 = trie.walk(np.array([[0, 1], [0, 1]]))
    level2 = trie.next_tokens(2, node_01, twice, rows=rows)
    assert level2[0, 0] == -1 and level2[0, 1] >= 0  # item 11 stays reachable for query 0
    root = np.zeros(2, dtype=np.int64)
    assert (trie.next_tokens(0, root, twice, rows=rows)[1] >= 0).tolist() == [
        True,
        False,
        False,
        False,  # item 13 is the only one under (3, …) and query 1 excludes it
    ]


def test_add_and_remove() -> None:
    trie = PrefixTrie(CODES)
    trie.add(np.array([4]), np.array([[3, 1, 1]]))
    assert trie.lookup(np.array([[3, 1, 1]])).tolist() == [4]
    assert (trie.next_tokens(2, trie.walk(np.array([[3, 1]])))[0] >= 0).tolist() == [True, True]
    trie.remove(np.array([0, 1]))
    assert trie.lookup(CODES[:2]).tolist() == [-1, -1]
    assert (trie.next_tokens(1, trie.walk(np.array([[0]])))[0] >= 0).tolist() == [
        False,
        False,
        True,
    ]
    with pytest.raises(ConfigError, match="share one Semantic ID"):
        trie.add(np.array([9]), np.array([[0, 2, 0]]))
    with pytest.raises(ConfigError, match="already in it"):
        trie.add(np.array([2]), np.array([[1, 1, 1]]))
    with pytest.raises(ConfigError, match="not in the trie"):
        trie.remove(np.array([0]))


def test_vocab_bounds_are_checked() -> None:
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        PrefixTrie(CODES, vocab=(4, 2, 2))
    with pytest.raises(ConfigError, match="depth"):
        PrefixTrie(np.zeros(3))
