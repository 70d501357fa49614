"""Seeded synthetic data with planted structure, and the hidden truth that generated it.

Users have latent tastes over topics, items have topic mixtures and Zipf-like popularity, and
optionally tastes drift, sequences follow a sparse item-to-item Markov structure, and a share
of rows are negatives on items far from the user's taste. Tests and simulations read
:class:`SyntheticTruth` to check that a model recovers what was planted. Everything is
vectorised NumPy, so ten million interactions take seconds, not minutes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from recloop.data.types import Catalog, Dataset, EventKind, IdMap, Interactions, Users

_CONSONANTS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "sh", "th")
_SYLLABLES = tuple(c + v for c in _CONSONANTS for v in "aeiou")
_N_SYL = len(_SYLLABLES)
_WORD_CAPACITY = _N_SYL**2 + _N_SYL**3  # two- and three-syllable made-up words
_MAX_WORDS = _WORD_CAPACITY // 5  # keep rejection of repeated words cheap
_GENRE_SHARE = 0.2  # a topic is one of an item's genres when it holds this much of its mixture
_CHUNK = 1 << 20  # rows per chunk where a step gathers (rows, n_topics) blocks
_NAMED_FIELDS = ("n_users", "n_items", "n_interactions", "seed")
_DEFAULT_TOPICS = 10


class SyntheticConfig(BaseModel):
    """What the generator plants. ``SyntheticConfig()`` is a small, valid default (20k rows)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_users: int = Field(default=1000, ge=1, description="number of users")
    n_items: int = Field(default=500, ge=1, description="number of items (at least n_topics)")
    n_interactions: int = Field(
        default=20_000,
        ge=1,
        le=2**31 - 1,
        description="total rows, positives and negatives; unique_pairs may drop a few",
    )
    min_interactions_per_user: int = Field(
        default=5, ge=1, description="every user gets at least this many rows"
    )
    activity_sigma: float = Field(
        default=1.0,
        ge=0.0,
        le=5.0,
        description="log-normal spread of user activity beyond the minimum (0: equal shares)",
    )
    n_topics: int = Field(
        default=_DEFAULT_TOPICS, ge=1, le=1000, description="latent topics (genres)"
    )
    taste_alpha: float = Field(
        default=0.1,
        ge=1e-3,
        le=1e3,
        description="symmetric Dirichlet α of users' tastes over topics; small α = few topics",
    )
    topics_per_item: int = Field(
        default=2, ge=1, le=10, description="topic slots per item (drawn with replacement)"
    )
    item_topic_alpha: float = Field(
        default=1.0,
        ge=1e-3,
        le=1e3,
        description="Dirichlet α of the weights over an item's topic slots; small α = one topic",
    )
    popularity_exponent: float = Field(
        default=1.0,
        ge=0.0,
        le=5.0,
        description="Zipf exponent s: item of popularity rank r has weight r^-s (0: uniform)",
    )
    vocab_per_topic: int = Field(
        default=30, ge=2, le=5000, description="made-up words in each topic's vocabulary"
    )
    words_per_item: int = Field(
        default=12, ge=1, le=500, description="words in an item's text after its title"
    )
    drift: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="taste drift: a user's taste moves from A to (1-drift)·A + drift·A' "
        "across their sequence, A' a fresh Dirichlet draw (0: no drift)",
    )
    markov_p: float = Field(
        default=0.0,
        ge=0.0,
        le=0.95,
        description="probability that a positive row's item is a successor of the previous "
        "positive item instead of a taste draw (0: no Markov structure)",
    )
    n_successors: int = Field(
        default=3, ge=1, le=100, description="successors per item in the Markov structure"
    )
    negative_share: float = Field(
        default=0.0,
        ge=0.0,
        le=0.9,
        description="share of rows that are negatives on items far from the user's taste",
    )
    negative_event: Literal["dislike", "skip"] = Field(
        default="dislike", description="event kind of the negative rows"
    )
    positive_events: dict[str, float] = Field(
        default_factory=lambda: {"rating": 1.0},
        description="relative shares of positive event kinds, e.g. {'view': 3, 'purchase': 1}; "
        "rating rows carry a 1-5 rating as value, other kinds carry 1.0",
    )
    rating_noise: float = Field(
        default=0.5, ge=0.0, le=10.0, description="std of Gaussian noise on the rating scale"
    )
    unique_pairs: bool = Field(
        default=False,
        description="redraw repeated (user, item) pairs (up to 20 rounds, then drop the rest); "
        "False keeps repeats, as real logs have them",
    )
    start_time: int = Field(
        default=1_577_836_800, ge=0, description="earliest user start, Unix seconds"
    )
    start_spread_days: float = Field(
        default=365.0, ge=0.0, description="users start uniformly within this many days"
    )
    mean_gap_hours: float = Field(
        default=24.0, gt=0.0, description="mean exponential gap between a user's rows"
    )
    seed: int = Field(default=0, ge=0, description="seed of every random draw")

    def __hash__(self) -> int:  # the dict field would make pydantic's frozen hash fail
        return hash(self.model_dump_json())

    @field_validator("positive_events")
    @classmethod
    def _positive_kinds(cls, v: dict[str, float]) -> dict[str, float]:
        if not v:
            raise ValueError("positive_events needs at least one event kind")
        out: dict[str, float] = {}
        for name, weight in v.items():
            kind = EventKind.parse(name)
            if kind.is_negative:
                raise ValueError(f"{kind.name.lower()} is a negative kind; use negative_share")
            if not weight > 0 or not np.isfinite(weight):
                raise ValueError(f"positive_events[{name!r}] must be a positive number")
            out[kind.name.lower()] = out.get(kind.name.lower(), 0.0) + float(weight)
        return out

    @model_validator(mode="after")
    def _consistent(self) -> SyntheticConfig:
        if self.n_items < self.n_topics:
            raise ValueError(f"n_items ({self.n_items}) must be at least n_topics")
        if self.n_users * self.min_interactions_per_user > self.n_interactions:
            raise ValueError(
                "n_interactions must be at least n_users * min_interactions_per_user "
                f"({self.n_users * self.min_interactions_per_user})"
            )
        if self.unique_pairs and self.min_interactions_per_user > self.n_items:
            raise ValueError("unique_pairs needs min_interactions_per_user <= n_items")
        if self.n_topics * (self.vocab_per_topic + 1) > _MAX_WORDS:
            raise ValueError(f"n_topics * (vocab_per_topic + 1) must be at most {_MAX_WORDS}")
        return self


class RowOrigin(IntEnum):
    """How an interaction row was drawn (``SyntheticTruth.row_origin``)."""

    TASTE = 0  # topic from the user's taste, then item by popularity within the topic
    MARKOV = 1  # a successor of the user's previous positive item
    NEGATIVE = 2  # topic from the user's anti-taste, then item by popularity


@dataclass(frozen=True, eq=False)
class SyntheticTruth:
    """The hidden parameters behind a synthetic dataset, for tests and simulations.

    ``taste`` is each user's taste at the start of their sequence, ``taste_end`` at its end
    (``None`` without drift); the taste at position ``at`` ∈ [0, 1] is the linear interpolation.
    ``row_topic``/``row_origin`` align with ``dataset.interactions`` rows (topic −1 for Markov).
    """

    topic_names: list[str]
    topic_words: list[list[str]]
    taste: np.ndarray  # (n_users, n_topics) float64, rows sum to 1
    taste_end: np.ndarray | None  # (n_users, n_topics) or None without drift
    item_topics: np.ndarray  # (n_items, n_topics) float64, rows sum to 1
    popularity: np.ndarray  # (n_items,) float64 Zipf weights, sum to 1
    successors: np.ndarray | None  # (n_items, n_successors) int32 or None without Markov
    row_topic: np.ndarray  # (n_rows,) int16
    row_origin: np.ndarray  # (n_rows,) int8 RowOrigin codes

    @property
    def n_users(self) -> int:
        return int(self.taste.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.item_topics.shape[0])

    @property
    def n_topics(self) -> int:
        return int(self.taste.shape[1])

    def taste_at(self, at: float | np.ndarray = 1.0, users: np.ndarray | None = None) -> np.ndarray:
        """Tastes of ``users`` (all when omitted) at position ``at`` (scalar or one per user)."""
        rows = np.arange(self.n_users) if users is None else np.asarray(users, dtype=np.int64)
        start = self.taste[rows]
        if self.taste_end is None:
            return start
        t = np.asarray(at, dtype=np.float64)
        t = t[:, None] if t.ndim == 1 else t
        return (1.0 - t) * start + t * self.taste_end[rows]

    def item_given_topic(self) -> np.ndarray:
        """P(item | topic) as (n_topics, n_items): popularity × topic weight, row-normalised."""
        joint = self.item_topics.T * self.popularity[None, :]
        return joint / joint.sum(axis=1, keepdims=True)

    def affinity_matrix(self, users: np.ndarray | None = None, at: float = 1.0) -> np.ndarray:
        """P(item | user) of a taste draw at position ``at``, as (n_users, n_items). Dense."""
        return self.taste_at(at, users) @ self.item_given_topic()

    def affinity(
        self, users: np.ndarray, items: np.ndarray, at: float | np.ndarray = 1.0
    ) -> np.ndarray:
        """P(item | user) of a taste draw, for equal-length ``users``/``items`` pairs."""
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        p = self.item_given_topic()
        t = np.broadcast_to(np.asarray(at, dtype=np.float64), users.shape)
        out = np.empty(len(users), dtype=np.float64)
        for lo in range(0, len(users), _CHUNK):
            sl = slice(lo, lo + _CHUNK)
            taste = self.taste_at(t[sl], users[sl])
            out[sl] = np.einsum("ij,ji->i", taste, p[:, items[sl]])
        return out

    def preference(
        self, users: np.ndarray, items: np.ndarray, at: float | np.ndarray = 1.0
    ) -> np.ndarray:
        """Cosine of a user's taste and an item's topic mixture, in [0, 1], for pairs.

        Popularity plays no part: this is how much the user likes the item, which drives ratings
        and picks the negatives.
        """
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        t = np.broadcast_to(np.asarray(at, dtype=np.float64), users.shape)
        out = np.empty(len(users), dtype=np.float64)
        for lo in range(0, len(users), _CHUNK):
            sl = slice(lo, lo + _CHUNK)
            taste = self.taste_at(t[sl], users[sl])
            mix = self.item_topics[items[sl]]
            dot = np.einsum("ij,ij->i", taste, mix)
            norms = np.linalg.norm(taste, axis=1) * np.linalg.norm(mix, axis=1)
            out[sl] = dot / np.maximum(norms, 1e-300)
        return out

    def dominant_topic(self) -> np.ndarray:
        """Each user's strongest topic at the start of their sequence."""
        return np.asarray(self.taste.argmax(axis=1), dtype=np.int32)


@dataclass(frozen=True, eq=False)
class SyntheticData:
    """A generated dataset, the truth behind it and the config that made it."""

    dataset: Dataset
    truth: SyntheticTruth
    config: SyntheticConfig


def dataset_name(config: SyntheticConfig) -> str:
    """A benchmark ``dataset`` name such as ``synthetic-u1000-i500-n20000-s0``.

    Topics (when not the default), drift, Markov, negatives and unique pairs are spelled out;
    any other non-default field adds ``-cfg`` and a short hash of those fields, so different
    data never share a name.
    """
    parts = [
        f"u{config.n_users}",
        f"i{config.n_items}",
        f"n{config.n_interactions}",
        f"s{config.seed}",
    ]
    if config.n_topics != _DEFAULT_TOPICS:
        parts.append(f"t{config.n_topics}")
    if config.drift:
        parts.append(f"drift{config.drift:g}")
    if config.markov_p:
        parts.append(f"markov{config.markov_p:g}")
    if config.negative_share:
        parts.append(f"neg{config.negative_share:g}")
    if config.unique_pairs:
        parts.append("uniq")
    spelled = {*_NAMED_FIELDS, "n_topics", "drift", "markov_p", "negative_share", "unique_pairs"}
    defaults = SyntheticConfig().model_dump()
    rest = {k: v for k, v in config.model_dump().items() if k not in spelled and v != defaults[k]}
    if rest:
        digest = hashlib.sha1(json.dumps(rest, sort_keys=True).encode()).hexdigest()[:8]
        parts.append(f"cfg{digest}")
    return "synthetic-" + "-".join(parts)


# ---------------------------------------------------------------------------- sampling tables
class _Categorical:
    """Many categorical distributions in one flat array; a draw is one ``searchsorted``.

    Distribution ``s`` occupies a contiguous run of the flat array ending at ``last[s]`` and
    holding ``s + its cumulative shares``, so a query ``s + U`` (U uniform) lands inside it.
    """

    def __init__(self, cumulative: np.ndarray, last: np.ndarray) -> None:
        self._flat = cumulative
        self._last = last

    @classmethod
    def from_rows(cls, weights: np.ndarray) -> _Categorical:
        """One distribution per row of a dense (rows, cols) weight matrix; rows must sum > 0."""
        n_rows, n_cols = weights.shape
        cum = np.cumsum(weights, axis=1, dtype=np.float64)
        cum /= cum[:, -1:]
        cum[:, -1] = 1.0
        cum += np.arange(n_rows, dtype=np.float64)[:, None]
        last = np.arange(1, n_rows + 1, dtype=np.int64) * n_cols - 1
        return cls(cum.ravel(), last)

    @classmethod
    def from_segments(
        cls, segment: np.ndarray, weights: np.ndarray, n_segments: int
    ) -> tuple[_Categorical, np.ndarray]:
        """Distributions over entries grouped by ``segment``; also returns the entry order."""
        order = np.argsort(segment, kind="stable")
        seg = segment[order]
        w = weights[order].astype(np.float64)
        counts = np.bincount(seg, minlength=n_segments)
        if (counts == 0).any():
            raise ValueError("every segment needs at least one entry")
        ends = np.cumsum(counts)
        starts = ends - counts
        cum = np.cumsum(w)
        base = np.concatenate([[0.0], cum])[starts]
        total = cum[ends - 1] - base
        share = (cum - np.repeat(base, counts)) / np.repeat(total, counts)
        share[ends - 1] = 1.0
        return cls(seg + share, ends - 1), order

    def draw(self, segments: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Flat positions drawn from the distributions ``segments`` (one draw each)."""
        query = segments + rng.random(len(segments))
        pos = np.searchsorted(self._flat, query, side="right")
        return np.minimum(pos, self._last[segments])


@dataclass
class _Model:
    """The planted parameters plus the sampling tables built from them."""

    cfg: SyntheticConfig
    taste: np.ndarray
    taste_end: np.ndarray | None
    slot_topic: np.ndarray  # (n_items, topics_per_item)
    slot_weight: np.ndarray  # (n_items, topics_per_item)
    popularity: np.ndarray
    successors: np.ndarray | None

    def __post_init__(self) -> None:
        tastes = self.taste if self.taste_end is None else np.vstack([self.taste, self.taste_end])
        self.taste_table = _Categorical.from_rows(tastes)
        self.anti_table: _Categorical | None = None
        if self.cfg.negative_share > 0:
            anti = tastes.max(axis=1, keepdims=True) - tastes
            anti[anti.sum(axis=1) <= 0] = 1.0  # a perfectly flat taste has no "far" topic
            self.anti_table = _Categorical.from_rows(anti)
        n_items, slots = self.slot_topic.shape
        weight = (self.slot_weight * self.popularity[:, None]).ravel()
        self.item_table, order = _Categorical.from_segments(
            self.slot_topic.ravel(), weight, self.cfg.n_topics
        )
        self.item_of_entry = (np.arange(n_items * slots) // slots)[order].astype(np.int32)
        self._tail_table: _Categorical | None = None

    def tail_table(self) -> _Categorical:
        """Items within a topic by topic weight alone (no popularity), for redrawing repeats."""
        if self._tail_table is None:
            self._tail_table, _ = _Categorical.from_segments(
                self.slot_topic.ravel(), self.slot_weight.ravel(), self.cfg.n_topics
            )
        return self._tail_table

    def draw(
        self,
        user: np.ndarray,
        t: np.ndarray,
        negative: np.ndarray,
        rng: np.random.Generator,
        *,
        by_popularity: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Topic and item for each row: taste (or anti-taste) draw, then item by popularity."""
        row = user.astype(np.int64)
        ending = np.zeros(len(row), dtype=bool)
        if self.taste_end is not None:  # taste at t is a mixture: start w.p. 1-t, end w.p. t
            ending = rng.random(len(row)) < t
            row += self.cfg.n_users * ending
        topic = np.empty(len(row), dtype=np.int64)
        for table, mask in ((self.taste_table, ~negative), (self.anti_table, negative)):
            if table is None or not mask.any():
                continue
            # start-taste rows, then end-taste rows: rows come sorted by user, so each part
            # searches the table in order, which keeps searchsorted cache-friendly
            sel = np.concatenate([np.flatnonzero(mask & ~ending), np.flatnonzero(mask & ending)])
            topic[sel] = table.draw(row[sel], rng) - row[sel] * self.cfg.n_topics
        table = self.item_table if by_popularity else self.tail_table()
        item = self.item_of_entry[table.draw(topic, rng)]
        return topic, item

    def preference(self, user: np.ndarray, item: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Cosine of taste at ``t`` and item mixture, via item slots (as the truth computes it)."""
        a = self.taste
        b = self.taste_end
        out = np.empty(len(user), dtype=np.float64)
        mix = np.zeros((self.slot_topic.shape[0], self.cfg.n_topics))
        np.add.at(mix, (np.arange(len(mix))[:, None], self.slot_topic), self.slot_weight)
        item_norm = np.linalg.norm(mix, axis=1)
        aa = np.einsum("ij,ij->i", a, a)
        if b is not None:
            ab, bb = np.einsum("ij,ij->i", a, b), np.einsum("ij,ij->i", b, b)
        for lo in range(0, len(user), _CHUNK):
            u, i, tt = user[lo : lo + _CHUNK], item[lo : lo + _CHUNK], t[lo : lo + _CHUNK]
            topics, weights = self.slot_topic[i], self.slot_weight[i]
            dot = (a[u[:, None], topics] * weights).sum(axis=1)
            norm2 = aa[u]
            if b is not None:
                dot_b = (b[u[:, None], topics] * weights).sum(axis=1)
                dot = (1.0 - tt) * dot + tt * dot_b
                norm2 = (1 - tt) ** 2 * aa[u] + 2 * tt * (1 - tt) * ab[u] + tt**2 * bb[u]
            norms = np.sqrt(norm2) * item_norm[i]
            out[lo : lo + _CHUNK] = dot / np.maximum(norms, 1e-300)
        return out


# ---------------------------------------------------------------------------- planted parts
def _dirichlet(rng: np.random.Generator, alpha: float, shape: tuple[int, int]) -> np.ndarray:
    """Rows from a symmetric Dirichlet via Gamma draws; rows that underflow get one random topic."""
    g = rng.gamma(alpha, size=shape)
    sums = g.sum(axis=1)
    empty = np.flatnonzero(sums <= 0)
    if len(empty):
        g[empty, rng.integers(shape[1], size=len(empty))] = 1.0
        sums[empty] = 1.0
    return g / sums[:, None]


def _vocabulary(rng: np.random.Generator, need: int) -> list[str]:
    """``need`` distinct made-up words of two or three syllables."""
    chosen = np.zeros(0, dtype=np.int64)
    while len(chosen) < need:
        draws = np.concatenate([chosen, rng.integers(_WORD_CAPACITY, size=2 * need)])
        _, first = np.unique(draws, return_index=True)
        chosen = draws[np.sort(first)]
    chosen = chosen[:need]
    words = []
    for code in chosen.tolist():
        n_syl = 2 if code < _N_SYL**2 else 3
        code = code if n_syl == 2 else code - _N_SYL**2
        syl = [(code // _N_SYL**k) % _N_SYL for k in range(n_syl)]
        words.append("".join(_SYLLABLES[s] for s in syl))
    return words


def _items(rng: np.random.Generator, cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
    """Topic slots and their weights; slot 0 covers the topics evenly so none is empty."""
    n, k = cfg.n_items, cfg.topics_per_item
    slot_topic = rng.integers(cfg.n_topics, size=(n, k))
    slot_topic[:, 0] = rng.permutation(np.arange(n) % cfg.n_topics)
    slot_weight = _dirichlet(rng, cfg.item_topic_alpha, (n, k)) if k > 1 else np.ones((n, 1))
    # slot 0 carries the largest weight, so primary topics (nearly always slot 0's) are even too
    slot_weight = -np.sort(-slot_weight, axis=1)
    return slot_topic, slot_weight


def _successors(rng: np.random.Generator, primary: np.ndarray, cfg: SyntheticConfig) -> np.ndarray:
    """Each item's successors: uniform, without the item itself, among its primary topic's items."""
    out = np.empty((cfg.n_items, cfg.n_successors), dtype=np.int32)
    for z in range(cfg.n_topics):
        members = np.flatnonzero(primary == z)
        m = len(members)
        if m == 0:  # possible when an item's other slots outweigh slot 0 together
            continue
        if m == 1:
            out[members] = members[0]
            continue
        pick = rng.integers(m - 1, size=(m, cfg.n_successors))
        pick += pick >= np.arange(m)[:, None]  # skip the item itself
        out[members] = members[pick]
    return out


def _sequences(
    rng: np.random.Generator, cfg: SyntheticConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows sorted by user and time: user, position in the user's sequence in [0, 1], timestamp."""
    extra = cfg.n_interactions - cfg.n_users * cfg.min_interactions_per_user
    activity = rng.lognormal(0.0, cfg.activity_sigma, size=cfg.n_users)
    counts = cfg.min_interactions_per_user + rng.multinomial(extra, activity / activity.sum())
    user = np.repeat(np.arange(cfg.n_users, dtype=np.int32), counts)
    starts = np.cumsum(counts) - counts
    rank = np.arange(len(user), dtype=np.int64) - np.repeat(starts, counts)
    position = rank / np.repeat(np.maximum(counts - 1, 1), counts)
    begin = cfg.start_time + rng.random(cfg.n_users) * cfg.start_spread_days * 86_400
    gaps = np.ceil(rng.exponential(cfg.mean_gap_hours * 3600, size=len(user))).astype(np.int64)
    np.maximum(gaps, 1, out=gaps)  # strictly increasing per user
    elapsed = np.cumsum(gaps)
    elapsed -= np.repeat(elapsed[starts] - gaps[starts], counts)
    timestamp = begin.astype(np.int64)[user] + elapsed
    return user, position, timestamp


def _apply_markov(
    rng: np.random.Generator,
    model: _Model,
    user: np.ndarray,
    item: np.ndarray,
    negative: np.ndarray,
) -> np.ndarray:
    """Replace positive rows, w.p. markov_p, by a successor of the user's previous positive item.

    A run of Markov rows depends on its predecessor, so rows are resolved in waves (one per run
    depth), each wave vectorised; returns the mask of Markov rows.
    """
    succ = model.successors
    assert succ is not None
    rows = np.flatnonzero(~negative)
    pu = user[rows]
    first = np.ones(len(rows), dtype=bool)
    first[1:] = pu[1:] != pu[:-1]
    markov = (rng.random(len(rows)) < model.cfg.markov_p) & ~first
    seq = item[rows]
    done = ~markov
    pending = np.flatnonzero(markov)
    while len(pending):
        ready = done[pending - 1]
        now = pending[ready]
        seq[now] = succ[seq[now - 1], rng.integers(succ.shape[1], size=len(now))]
        done[now] = True
        pending = pending[~ready]
    item[rows] = seq
    mask = np.zeros(len(user), dtype=bool)
    mask[rows[markov]] = True
    return mask


def _repeated(user: np.ndarray, item: np.ndarray, n_items: int) -> np.ndarray:
    """Mask of rows repeating an earlier row's (user, item) pair (rows are in time order)."""
    key = user.astype(np.int64) * n_items + item
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    dup = np.zeros(len(key), dtype=bool)
    dup[order[1:]] = sorted_key[1:] == sorted_key[:-1]
    return dup


def _make_unique(
    rng: np.random.Generator,
    model: _Model,
    arrays: dict[str, np.ndarray],
    rounds: int = 20,
) -> np.ndarray:
    """Redraw repeated pairs from the taste model (only users with repeats are re-checked).

    The first half of the rounds draws items by popularity as usual; the second half draws them
    uniformly within the sampled topic, so heavy users reach their topics' tails instead of
    losing rows. Returns the mask of rows to keep: repeats left after ``rounds`` are dropped.
    """
    user, item = arrays["user"], arrays["item"]
    n_users = model.cfg.n_users
    keep = np.ones(len(user), dtype=bool)
    scope = np.arange(len(user))
    for round_ in range(rounds + 1):
        dup = scope[_repeated(user[scope], item[scope], model.cfg.n_items)]
        if round_ == rounds:
            keep[dup] = False
        if round_ == rounds or not len(dup):
            break
        negative_rows = arrays["negative"][dup]
        topic, new = model.draw(
            user[dup],
            arrays["position"][dup],
            negative_rows,
            rng,
            by_popularity=round_ < rounds // 2,
        )
        item[dup], arrays["topic"][dup] = new, topic
        origin = arrays["origin"]
        origin[dup] = np.where(negative_rows, RowOrigin.NEGATIVE, RowOrigin.TASTE)
        flagged = np.zeros(n_users, dtype=bool)
        flagged[user[dup]] = True
        scope = scope[flagged[user[scope]]]
    return keep


def _catalog(
    rng: np.random.Generator,
    cfg: SyntheticConfig,
    ids: IdMap,
    model: _Model,
    item_topics: np.ndarray,
    names: list[str],
    words: list[str],
) -> Catalog:
    """Titles and texts built from the items' topic vocabularies, plus genres and year."""
    n, v, w = cfg.n_items, cfg.vocab_per_topic, cfg.words_per_item
    slot_table = _Categorical.from_rows(model.slot_weight)
    slots = model.slot_topic.shape[1]
    rows = np.repeat(np.arange(n, dtype=np.int64), w)
    slot = slot_table.draw(rows, rng) - rows * slots
    word = (model.slot_topic[rows, slot] * v + rng.integers(v, size=n * w)).reshape(n, w)
    primary = item_topics.argmax(axis=1)
    title_words = primary[:, None] * v + rng.integers(v, size=(n, 2))
    titles = [f"{words[a].capitalize()} {words[b].capitalize()}" for a, b in title_words.tolist()]
    texts = [
        f"{title}. {' '.join([words[j] for j in row])}."
        for title, row in zip(titles, word.tolist(), strict=True)
    ]
    by_weight = np.argsort(-item_topics, axis=1, kind="stable")[:, : cfg.topics_per_item]
    strong = np.take_along_axis(item_topics, by_weight, axis=1) >= _GENRE_SHARE
    genres = [
        [names[z] for z, keep in zip(zs, ks, strict=True) if keep]
        for zs, ks in zip(by_weight.tolist(), strong.tolist(), strict=True)
    ]
    years = rng.integers(1970, 2025, size=n).tolist()
    return Catalog(ids, titles, texts, {"genres": genres, "year": years})


def generate(config: SyntheticConfig) -> SyntheticData:
    """Draw a dataset with planted structure; the same config gives identical arrays.

    Each part (vocabulary, items, tastes, successors, sequences, draws, events, user
    attributes, item text) has its own random stream, so e.g. longer item texts leave the
    interactions unchanged. Identical means on the same NumPy version.
    """
    cfg = config
    seeds = np.random.SeedSequence(cfg.seed).spawn(9)
    r_words, r_items, r_users, r_succ, r_seq, r_draw, r_events, r_attrs, r_text = (
        np.random.default_rng(s) for s in seeds
    )
    k, v = cfg.n_topics, cfg.vocab_per_topic
    vocab = _vocabulary(r_words, k * (v + 1))
    names = [word.capitalize() for word in vocab[:k]]
    words = vocab[k:]  # word j of topic z is words[z * v + j]
    topic_words = [words[z * v : (z + 1) * v] for z in range(k)]

    slot_topic, slot_weight = _items(r_items, cfg)
    popularity = (1.0 + r_items.permutation(cfg.n_items)) ** -cfg.popularity_exponent
    popularity /= popularity.sum()
    item_topics = np.zeros((cfg.n_items, cfg.n_topics))
    np.add.at(item_topics, (np.arange(cfg.n_items)[:, None], slot_topic), slot_weight)

    taste = _dirichlet(r_users, cfg.taste_alpha, (cfg.n_users, cfg.n_topics))
    taste_end = None
    if cfg.drift > 0:
        fresh = _dirichlet(r_users, cfg.taste_alpha, (cfg.n_users, cfg.n_topics))
        taste_end = (1.0 - cfg.drift) * taste + cfg.drift * fresh
    successors = None
    if cfg.markov_p > 0:
        successors = _successors(r_succ, item_topics.argmax(axis=1), cfg)
    model = _Model(cfg, taste, taste_end, slot_topic, slot_weight, popularity, successors)

    user, position, timestamp = _sequences(r_seq, cfg)
    negative = r_draw.random(len(user)) < cfg.negative_share
    topic, item = model.draw(user, position, negative, r_draw)
    origin = np.where(negative, RowOrigin.NEGATIVE, RowOrigin.TASTE).astype(np.int8)
    if successors is not None:
        markov = _apply_markov(r_draw, model, user, item, negative)
        origin[markov] = RowOrigin.MARKOV
        topic[markov] = -1
    arrays = {
        "user": user,
        "item": item,
        "position": position,
        "timestamp": timestamp,
        "negative": negative,
        "topic": topic,
        "origin": origin,
    }
    if cfg.unique_pairs:
        keep = _make_unique(r_draw, model, arrays)
        if not keep.all():
            arrays = {k: a[keep] for k, a in arrays.items()}

    value, event = _events(r_events, cfg, model, arrays)
    users = IdMap(f"u{k}" for k in range(cfg.n_users))
    items = IdMap(f"i{k}" for k in range(cfg.n_items))
    interactions = Interactions(
        arrays["user"], arrays["item"], arrays["timestamp"], value, event, users, items
    )
    catalog = _catalog(r_text, cfg, items, model, item_topics, names, words)
    dominant = taste.argmax(axis=1)
    people = Users(
        users,
        {
            "gender": r_attrs.choice(np.array(["F", "M"]), size=cfg.n_users).tolist(),
            "age": r_attrs.integers(15, 66, size=cfg.n_users).tolist(),
            "segment": [names[z] for z in dominant.tolist()],
        },
    )
    truth = SyntheticTruth(
        topic_names=names,
        topic_words=topic_words,
        taste=taste,
        taste_end=taste_end,
        item_topics=item_topics,
        popularity=popularity,
        successors=successors,
        row_topic=arrays["topic"].astype(np.int16),
        row_origin=arrays["origin"].astype(np.int8),
    )
    dataset = Dataset(dataset_name(cfg), interactions, catalog, people)
    return SyntheticData(dataset=dataset, truth=truth, config=cfg)


def _events(
    rng: np.random.Generator, cfg: SyntheticConfig, model: _Model, arrays: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Event kinds by the configured shares, ratings 1-5 from preference plus noise."""
    n = len(arrays["user"])
    kinds = np.array([int(EventKind.parse(k)) for k in cfg.positive_events], dtype=np.int8)
    shares = np.array(list(cfg.positive_events.values()), dtype=np.float64)
    if len(kinds) == 1:
        event = np.full(n, kinds[0], dtype=np.int8)
    else:
        pick = np.searchsorted(np.cumsum(shares / shares.sum()), rng.random(n), side="right")
        event = kinds[np.minimum(pick, len(kinds) - 1)]  # the minimum guards float round-off
    negative = arrays["negative"]
    event[negative] = int(EventKind.parse(cfg.negative_event))
    value = np.ones(n, dtype=np.float32)
    rated = np.flatnonzero(event == EventKind.RATING)
    if len(rated):
        pref = model.preference(
            arrays["user"][rated], arrays["item"][rated], arrays["position"][rated]
        )
        noisy = 1.0 + 4.0 * pref + cfg.rating_noise * rng.standard_normal(len(rated))
        value[rated] = np.clip(np.rint(noisy), 1, 5)
    return value, event
