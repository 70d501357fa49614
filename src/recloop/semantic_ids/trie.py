"""A prefix trie over Semantic IDs, compiled to arrays for batched constrained decoding.

Every item owns one code tuple ``(c1, …, cD)`` (the tokenizer's levels plus the collision
suffix), and no two items share one. Beam search asks, for a batch of partial IDs, which next
tokens still lead to at least one item; with per-query exclusions it asks which lead to an
item the query may still receive. The trie answers both without Python loops over beams:
each level is compiled into sorted ``parent * vocab + token`` keys with child node ids and
the number of items below each node, rebuilt lazily after :meth:`PrefixTrie.add` or
:meth:`PrefixTrie.remove`.

Node ids are per level: level ``l`` holds the distinct prefixes of length ``l`` (level 0 is
the root, node 0); a node at level ``D`` is one item.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recloop.errors import ConfigError


@dataclass(frozen=True)
class _Level:
    """Transitions from the nodes of one level to the next."""

    keys: np.ndarray  # sorted parent * vocab + token, int64
    child: np.ndarray  # child node id at the next level for each key
    indptr: np.ndarray  # CSR over parents: keys of parent p are keys[indptr[p]:indptr[p+1]]
    vocab: int


class PrefixTrie:
    """All valid Semantic IDs of a set of items; updatable, queried in batches.

    ``codes`` is ``(n, depth)`` with non-negative integer tokens; ``items`` names each row
    (default ``0..n-1``). Token ``t`` at level ``l`` must be below ``vocab[l]`` when vocab
    sizes are given, so masks line up with a model's output layer.
    """

    def __init__(
        self,
        codes: np.ndarray,
        items: np.ndarray | None = None,
        vocab: tuple[int, ...] | None = None,
    ) -> None:
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[1] < 1:
            raise ConfigError(f"trie codes must be (items, depth), not shape {codes.shape}")
        self.depth = int(codes.shape[1])
        if vocab is not None and len(vocab) != self.depth:
            raise ConfigError(f"trie vocab has {len(vocab)} levels, codes have {self.depth}")
        self._vocab = vocab
        self._codes = np.zeros((0, self.depth), dtype=np.int64)
        self._items = np.zeros(0, dtype=np.int64)
        self._compiled: list[_Level] | None = None
        self.add(np.arange(len(codes)) if items is None else np.asarray(items), codes)

    # -- contents -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._items)

    @property
    def items(self) -> np.ndarray:
        """The items in the trie, in insertion order."""
        return self._items.copy()

    @property
    def vocab(self) -> tuple[int, ...]:
        """Tokens per level (given, or one past the largest token present)."""
        if self._vocab is not None:
            return self._vocab
        return tuple(int(v) + 1 for v in self._codes.max(axis=0, initial=0))

    def add(self, items: np.ndarray, codes: np.ndarray) -> None:
        """Insert items with their codes; an item or a code already present is an error."""
        items = np.asarray(items, dtype=np.int64).ravel()
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape != (len(items), self.depth):
            raise ConfigError(
                f"adding {len(items)} items needs codes of shape ({len(items)}, {self.depth}), "
                f"not {codes.shape}"
            )
        if not np.issubdtype(codes.dtype, np.integer):
            raise ConfigError(f"trie codes must be integers, not {codes.dtype}")
        codes = codes.astype(np.int64)
        if len(codes) and codes.min() < 0:
            raise ConfigError("trie codes must be non-negative")
        if self._vocab is not None and len(codes):
            over = np.flatnonzero((codes >= np.asarray(self._vocab)).any(axis=0))
            if len(over):
                lvl = int(over[0])
                raise ConfigError(
                    f"code {int(codes[:, lvl].max())} at level {lvl + 1} is outside the "
                    f"vocabulary of {self._vocab[lvl]} tokens"
                )
        all_items = np.concatenate([self._items, items])
        if len(np.unique(all_items)) != len(all_items):
            raise ConfigError("an item added to the trie is already in it (or listed twice)")
        all_codes = np.concatenate([self._codes, codes])
        if len(np.unique(all_codes, axis=0)) != len(all_codes):
            raise ConfigError(
                "two items would share one Semantic ID; give colliding items distinct "
                "suffixes (recloop.semantic_ids.tokenizers.add_suffix)"
            )
        self._items, self._codes, self._compiled = all_items, all_codes, None

    def remove(self, items: np.ndarray) -> None:
        """Delete items (unknown items are an error)."""
        items = np.asarray(items, dtype=np.int64).ravel()
        missing = np.setdiff1d(items, self._items)
        if len(missing):
            raise ConfigError(f"items not in the trie: {missing[:10].tolist()}")
        keep = ~np.isin(self._items, items)
        self._items, self._codes, self._compiled = self._items[keep], self._codes[keep], None

    def codes_of(self, items: np.ndarray) -> np.ndarray:
        """The codes of the given items, (m, depth); unknown items are an error."""
        rows = self._leaf_of(np.asarray(items, dtype=np.int64).ravel())
        if (rows < 0).any():
            raise ConfigError(
                f"codes_of: items not in the trie: {np.asarray(items)[rows < 0][:10]}"
            )
        return self._codes[rows]

    def lookup(self, codes: np.ndarray) -> np.ndarray:
        """The item owning each full code row, or −1 where none does."""
        codes = np.asarray(codes, dtype=np.int64).reshape(-1, self.depth)
        nodes = self.walk(codes)
        out = np.full(len(codes), -1, dtype=np.int64)
        ok = nodes >= 0
        out[ok] = self._leaf_items()[nodes[ok]]
        return out

    def items_with_prefix(self, prefix: np.ndarray) -> np.ndarray:
        """Items whose codes start with ``prefix`` (any length up to depth), in trie order."""
        prefix = np.asarray(prefix, dtype=np.int64).ravel()
        if len(prefix) > self.depth:
            raise ConfigError(f"prefix of length {len(prefix)} is deeper than {self.depth}")
        match = np.all(self._codes[:, : len(prefix)] == prefix, axis=1)
        return self._items[match]

    def leaf_items(self, nodes: np.ndarray) -> np.ndarray:
        """The item of each node at the deepest level (−1 stays −1)."""
        nodes = np.asarray(nodes, dtype=np.int64)
        return np.where(nodes >= 0, self._leaf_items()[np.maximum(nodes, 0)], -1)

    # -- batched queries -------------------------------------------------------------
    def walk(self, prefixes: np.ndarray) -> np.ndarray:
        """Node id (at level ``prefixes.shape[1]``) of each prefix row, −1 for dead prefixes."""
        prefixes = np.asarray(prefixes, dtype=np.int64)
        nodes = np.zeros(len(prefixes), dtype=np.int64)
        for lvl in range(prefixes.shape[1]):
            nodes = self.step(lvl, nodes, prefixes[:, lvl])
        return nodes

    def step(self, level: int, nodes: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Child node of each (node at ``level``, token) pair; −1 where there is none."""
        lv = self._levels()[level]
        nodes = np.asarray(nodes, dtype=np.int64)
        tokens = np.asarray(tokens, dtype=np.int64)
        out = np.full(len(nodes), -1, dtype=np.int64)
        ok = (nodes >= 0) & (tokens >= 0) & (tokens < lv.vocab)
        if not len(lv.keys):
            return out
        key = nodes[ok] * lv.vocab + tokens[ok]
        pos = np.minimum(np.searchsorted(lv.keys, key), len(lv.keys) - 1)
        hit = lv.keys[pos] == key
        res = np.full(len(key), -1, dtype=np.int64)
        res[hit] = lv.child[pos[hit]]
        out[ok] = res
        return out

    def next_tokens(
        self,
        level: int,
        nodes: np.ndarray,
        blocked: Blocked | None = None,
        rows: np.ndarray | None = None,
    ) -> np.ndarray:
        """Child node ids ``(len(nodes), vocab[level])``: −1 where a token leads nowhere.

        With ``blocked`` (a :meth:`blocked_counts` result) and each node's query ``rows``, a
        token is also −1 when every item below it is excluded for that query.
        """
        lv = self._levels()[level]
        nodes = np.asarray(nodes, dtype=np.int64)
        out = np.full((len(nodes), lv.vocab), -1, dtype=np.int64)
        live = np.flatnonzero(nodes >= 0)
        starts, ends = lv.indptr[nodes[live]], lv.indptr[nodes[live] + 1]
        counts = ends - starts
        r = np.repeat(live, counts)
        k = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        children = lv.child[k]
        tokens = lv.keys[k] - nodes[r] * lv.vocab
        if blocked is not None:
            if rows is None:
                raise ConfigError("next_tokens with blocked counts needs each node's query row")
            remaining = self._counts()[level + 1][children] - blocked.count(
                level + 1, np.asarray(rows)[r], children
            )
            keep = remaining > 0
            r, tokens, children = r[keep], tokens[keep], children[keep]
        out[r, tokens] = children
        return out

    def blocked_counts(self, excluded: tuple[np.ndarray, np.ndarray]) -> Blocked:
        """Per query, how many excluded items lie below each node (for :meth:`next_tokens`).

        ``excluded`` is a CSR pair ``(indptr, items)`` of each query's excluded items; items
        not in the trie are ignored, and an item listed twice for a query (a history with
        repeats) counts once, so it cannot hide the other items under its prefixes.
        """
        indptr, ex_items = np.asarray(excluded[0]), np.asarray(excluded[1])
        rows = np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))
        leaf = self._leaf_of(ex_items.astype(np.int64))
        keep = leaf >= 0
        pairs = np.unique(rows[keep] * max(len(self), 1) + leaf[keep])
        rows, leaf = np.divmod(pairs, max(len(self), 1))
        per_level = []
        for lvl in range(self.depth + 1):
            nodes = self._item_nodes()[lvl][leaf]
            n_nodes = len(self._counts()[lvl])
            keys, counts = np.unique(rows * n_nodes + nodes, return_counts=True)
            per_level.append((keys, counts, n_nodes))
        return Blocked(per_level)

    # -- compilation ------------------------------------------------------------------
    def _levels(self) -> list[_Level]:
        if self._compiled is None:
            self._compile()
        assert self._compiled is not None
        return self._compiled

    def _compile(self) -> None:
        vocab = self.vocab
        n = len(self._items)
        node = np.zeros(n, dtype=np.int64)
        item_nodes = [node]
        counts = [np.array([n], dtype=np.int64)]
        levels = []
        n_parents = 1
        for lvl in range(self.depth):
            key = node * vocab[lvl] + self._codes[:, lvl]
            uniq, child_of_item, per_child = np.unique(key, return_inverse=True, return_counts=True)
            parent = uniq // vocab[lvl]
            indptr = np.zeros(n_parents + 1, dtype=np.int64)
            np.cumsum(np.bincount(parent, minlength=n_parents), out=indptr[1:])
            levels.append(_Level(uniq, np.arange(len(uniq)), indptr, vocab[lvl]))
            node = child_of_item.astype(np.int64).ravel()
            item_nodes.append(node)
            counts.append(per_child.astype(np.int64))
            n_parents = len(uniq)
        self._compiled = levels
        self._item_nodes_cache = item_nodes
        self._counts_cache = counts
        leaf_items = np.empty(n_parents, dtype=np.int64)
        leaf_items[node] = self._items
        self._leaf_items_cache = leaf_items
        self._item_order = np.argsort(self._items, kind="stable")

    def _item_nodes(self) -> list[np.ndarray]:
        self._levels()
        return self._item_nodes_cache

    def _counts(self) -> list[np.ndarray]:
        self._levels()
        return self._counts_cache

    def _leaf_items(self) -> np.ndarray:
        self._levels()
        return self._leaf_items_cache

    def _leaf_of(self, items: np.ndarray) -> np.ndarray:
        """Row index of each item in the trie, −1 for items not in it."""
        self._levels()
        order = self._item_order
        if not len(order):
            return np.full(len(items), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self._items, items, sorter=order), len(order) - 1)
        row = order[pos]
        return np.where(self._items[row] == items, row, -1)


@dataclass(frozen=True)
class Blocked:
    """Excluded-item counts per (query, node), one sorted table per trie level."""

    per_level: list[tuple[np.ndarray, np.ndarray, int]]

    def count(self, level: int, rows: np.ndarray, nodes: np.ndarray) -> np.ndarray:
        keys, counts, n_nodes = self.per_level[level]
        out = np.zeros(len(nodes), dtype=np.int64)
        if not len(keys):
            return out
        key = np.asarray(rows, dtype=np.int64) * n_nodes + nodes
        pos = np.minimum(np.searchsorted(keys, key), len(keys) - 1)
        hit = keys[pos] == key
        out[hit] = counts[pos[hit]]
        return out
