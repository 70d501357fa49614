"""How good are a tokenizer's Semantic IDs? Usage, fidelity, collisions and coherence per level.

Coherence is measured by behaviour, not by the text that was embedded: items that share a
prefix ``c1..cl`` should be consumed by the same users. For item pairs sharing the prefix and
for random item pairs we take the co-interaction Jaccard ``|U_i ∩ U_j| / |U_i ∪ U_j|`` (``U_i``:
the users who interacted with item ``i``); their ratio is the lift. A lift near 1 means the
prefix groups items no more alike in behaviour than chance.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recloop.errors import ConfigError
from recloop.semantic_ids.tokenizers import Tokenizer, check_codes, check_embeddings

COHERENCE_KEYS = ("coherence_prefix_jaccard", "coherence_random_jaccard", "coherence_lift")


def level_report(
    embeddings: np.ndarray,
    codes: np.ndarray,
    tokenizer: Tokenizer,
    interactions: sp.csr_matrix | None,
    *,
    pairs: int = 20000,
    seed: int = 0,
) -> list[dict[str, float | None]]:
    """One dict per level ``l = 1..L`` of ``codes`` (n, L), the suffix-free tokenizer output.

    Keys: ``level``; ``utilisation`` (share of the K codes used at level l); ``perplexity``
    (exp of the entropy, in nats, of level-l code usage); ``reconstruction_mse`` (mean over
    items and dimensions of the squared error of ``tokenizer.reconstruct(codes, l)``);
    ``collision_rate`` (share of items whose prefix ``c1..cl`` another item shares; at l = L,
    the collision rate before the suffix); and, given a users × items ``interactions`` matrix,
    ``coherence_prefix_jaccard``, ``coherence_random_jaccard`` and ``coherence_lift`` (their
    ratio). Each Jaccard is the mean over ``pairs`` pairs sampled uniformly (seeded) from the
    pairs sharing the prefix, resp. all pairs of distinct items, or over every such pair when
    there are no more than ``pairs`` of them. Coherence values are None without interactions,
    when no two items share the prefix, or (the lift) when random pairs have Jaccard 0.
    """
    x = check_embeddings(embeddings)
    shape = np.shape(codes)
    if shape != (len(x), tokenizer.levels):
        raise ConfigError(
            f"codes must be (items, levels) = ({len(x)}, {tokenizer.levels}) without the "
            f"suffix, not {shape}"
        )
    codes = check_codes(codes, tokenizer.codebook_size, columns=tokenizer.levels)
    if pairs < 1:
        raise ConfigError(f"pairs must be positive, not {pairs}")
    items_users = _item_user_sets(interactions, len(x)) if interactions is not None else None

    n = len(x)
    rows: list[dict[str, float | None]] = []
    group = np.zeros(n, dtype=np.int64)  # prefix group of each item, refined level by level
    for level in range(tokenizer.levels):
        counts = np.bincount(codes[:, level], minlength=tokenizer.codebook_size)
        share = counts[counts > 0] / n
        _, group = np.unique(np.column_stack([group, codes[:, level]]), axis=0, return_inverse=True)
        group = group.reshape(-1)
        group_sizes = np.bincount(group)
        reconstructed = tokenizer.reconstruct(codes, level + 1)
        row: dict[str, float | None] = {
            "level": level + 1,
            "utilisation": float(np.count_nonzero(counts) / tokenizer.codebook_size),
            "perplexity": float(np.exp(-(share * np.log(share)).sum())),
            "reconstruction_mse": float(np.mean((reconstructed - x) ** 2, dtype=np.float64)),
            "collision_rate": float(np.mean(group_sizes[group] > 1)),
        }
        row.update(dict.fromkeys(COHERENCE_KEYS))
        if items_users is not None and n >= 2:
            rng = np.random.default_rng([seed, level])
            prefix = _mean_jaccard(items_users, *_sample_pairs(group, pairs, rng))
            chance = _mean_jaccard(items_users, *_sample_pairs(np.zeros(n, np.int64), pairs, rng))
            row["coherence_prefix_jaccard"] = prefix
            row["coherence_random_jaccard"] = chance
            if prefix is not None and chance:
                row["coherence_lift"] = prefix / chance
        rows.append(row)
    return rows


def _item_user_sets(interactions: sp.csr_matrix, n_items: int) -> sp.csr_matrix:
    """The binary items × users CSR of a users × items matrix."""
    if not sp.issparse(interactions):
        raise ConfigError(f"interactions must be a scipy sparse matrix, not {type(interactions)}")
    if interactions.shape[1] != n_items:
        raise ConfigError(
            f"interactions have {interactions.shape[1]} item columns for {n_items} items "
            "(orientation is users × items)"
        )
    item_users = sp.csr_matrix(interactions).T.tocsr()
    item_users.sum_duplicates()
    item_users.eliminate_zeros()
    item_users.data = np.ones_like(item_users.data, dtype=np.float64)
    return item_users


def _sample_pairs(
    group: np.ndarray, pairs: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Item pairs (i, j), i ≠ j, from the same group: all of them if at most ``pairs``, else
    ``pairs`` drawn uniformly over such pairs (a group ∝ its pair count, then two members)."""
    order = np.argsort(group, kind="stable")  # members of each group, contiguous
    sizes = np.bincount(group)
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    group_pairs = sizes * (sizes - 1) // 2
    total = int(group_pairs.sum())
    if total == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    if total <= pairs:  # enumerate: member a pairs with members a+1..s-1 of its group
        size_of = sizes[group[order]]
        local = np.arange(len(order)) - np.repeat(starts, sizes)
        partners = size_of - 1 - local
        first = np.repeat(np.arange(len(order)), partners)
        offsets = np.arange(len(first)) - np.repeat(np.cumsum(partners) - partners, partners)
        return order[first], order[first + 1 + offsets]
    chosen = rng.choice(len(sizes), size=pairs, p=group_pairs / total)
    size = sizes[chosen]
    a = rng.integers(0, size)
    b = rng.integers(0, size - 1)
    b += b >= a
    return order[starts[chosen] + a], order[starts[chosen] + b]


def _mean_jaccard(item_users: sp.csr_matrix, i: np.ndarray, j: np.ndarray) -> float | None:
    """Mean co-interaction Jaccard of the pairs (i, j); 0 for two items nobody consumed."""
    if len(i) == 0:
        return None
    degree = np.diff(item_users.indptr)
    inter = np.asarray(item_users[i].multiply(item_users[j]).sum(axis=1)).ravel()
    union = degree[i] + degree[j] - inter
    jaccard = np.divide(inter, union, out=np.zeros(len(i)), where=union > 0)
    return float(jaccard.mean())
