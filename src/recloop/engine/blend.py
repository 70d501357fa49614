"""Blending and re-ranking: merge candidate sources, then trade relevance for variety.

One user's candidates from several sources (a model, content similarity, popularity, generated
items) become one list in four steps:

1. **Normalise** each source's scores on its own (``rank``, ``minmax`` or ``zscore``).
2. **Blend**: an item's relevance is the weighted sum of its normalised scores over the sources
   that proposed it, plus ``novelty_weight`` × its novelty (``−log2 p`` scaled to [0, 1]); it
   keeps the source with the largest weighted contribution.
3. **Filter**: excluded items, items with a value the user excluded (e.g. a genre), then the
   business filter, so the list is still filled from what is left.
4. **Re-rank** greedily with MMR over item embeddings, never exceeding the share of generated
   items the config or the user allows.

Everything is NumPy over one user's pool (hundreds of items): a blend takes well under a ms.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from recloop.errors import ConfigError, DataError

__all__ = ["BlendConfig", "Blended", "Blender", "SourceCandidates", "UserControls"]

Normalisation = Literal["rank", "minmax", "zscore"]
_EMPTY_INT = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True, slots=True)
class SourceCandidates:
    """What one candidate source returns for one user: items best first, with their scores.

    Padding (item −1) and non-finite scores (as ``recommend`` pads short lists) are dropped;
    an item listed twice keeps its first (best) entry.
    """

    source: str
    items: np.ndarray
    scores: np.ndarray
    generated: bool = False


class BlendConfig(BaseModel):
    """How to blend and re-rank; frozen, no unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    normalisation: Normalisation = Field(
        default="rank",
        description="Per source, before weighting. rank: 1 − rank/len (0-based rank in the "
        "source's own order); minmax: to [0, 1] (all 1 if constant); zscore: (s − mean)/std "
        "(all 0 if constant).",
    )
    mmr_lambda: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="1: pure relevance; lower trades relevance for diversity (MMR).",
    )
    novelty_weight: float = Field(
        default=0.0,
        ge=0.0,
        allow_inf_nan=False,
        description="Adds weight × novelty (−log2 popularity scaled to [0, 1]) to relevance.",
    )
    max_generated_share: float = Field(
        default=1.0, ge=0.0, le=1.0, description="Most of the list that may be generated items."
    )


def _share(key: str, value: Any) -> float | None:
    """A number in [0, 1] (or None) from a preference or control, else ConfigError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key} must be a number in [0, 1], not {value!r}")
    if not 0.0 <= float(value) <= 1.0:  # NaN fails this too
        raise ConfigError(f"{key} must be in [0, 1], not {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class UserControls:
    """One user's controls, from their stored preferences.

    ``excluded_attributes`` maps an attribute (e.g. ``"genres"``) to values whose items are
    never shown; ``max_generated_share`` applies when stricter than the config's; ``diversity``
    in [0, 1], when given, sets the MMR weight to ``1 − diversity``.
    """

    excluded_attributes: Mapping[str, frozenset[str]] = field(default_factory=dict)
    max_generated_share: float | None = None
    diversity: float | None = None

    def __post_init__(self) -> None:
        clean: dict[str, frozenset[str]] = {}
        for name, values in self.excluded_attributes.items():
            if isinstance(values, str) or not isinstance(values, Collection):
                raise ConfigError(
                    f"excluded {name!r} must be a collection of values, not {values!r}"
                )
            clean[str(name)] = frozenset(str(v) for v in values)
        object.__setattr__(self, "excluded_attributes", clean)
        _share("max_generated_share", self.max_generated_share)
        _share("diversity", self.diversity)

    @classmethod
    def from_preferences(cls, prefs: Mapping[str, Any]) -> UserControls:
        """Parse stored JSON preferences; unknown keys are ignored, bad values name their key.

        Known keys: ``excluded_genres`` (alias ``blocked_genres``; a list of strings),
        ``max_generated_share`` and ``diversity`` (numbers in [0, 1] or null).
        """
        if not isinstance(prefs, Mapping):
            raise ConfigError(f"preferences must be a JSON object, not {type(prefs).__name__}")
        genres: set[str] = set()
        for key in ("excluded_genres", "blocked_genres"):
            value = prefs.get(key)
            if value is None:
                continue
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{key} must be a list of strings, not {value!r}")
            genres.update(value)
        return cls(
            excluded_attributes={"genres": frozenset(genres)} if genres else {},
            max_generated_share=_share("max_generated_share", prefs.get("max_generated_share")),
            diversity=_share("diversity", prefs.get("diversity")),
        )


@dataclass(frozen=True, slots=True)
class Blended:
    """The final list, best first: items, their blended relevance, source and generated flag.

    ``scores`` is the blended relevance (novelty included) of each shown item; with MMR
    (λ < 1) it need not decrease down the list.
    """

    items: np.ndarray
    scores: np.ndarray
    sources: tuple[str, ...]
    generated: np.ndarray

    def __len__(self) -> int:
        return len(self.items)


class _AttributeIndex:
    """One attribute's values per item: CSR of value ids, plus a bit set per item when the
    attribute has at most 63 distinct values (genres), which makes a lookup two operations."""

    __slots__ = ("bits", "indices", "indptr", "n_items", "vocabulary")

    def __init__(self, values: Sequence[Sequence[str] | str | None]) -> None:
        self.vocabulary: dict[str, int] = {}
        self.n_items = len(values)
        indptr = np.zeros(self.n_items + 1, dtype=np.int64)
        indices: list[int] = []
        for i, value in enumerate(values):
            if value is None:
                members: Collection[Any] = ()
            elif isinstance(value, str) or not isinstance(value, Collection):
                members = (value,)
            else:
                members = value
            indices.extend(
                sorted({self.vocabulary.setdefault(str(v), len(self.vocabulary)) for v in members})
            )
            indptr[i + 1] = len(indices)
        self.indptr = indptr
        self.indices = np.asarray(indices, dtype=np.int64)
        self.bits: np.ndarray | None = None
        if len(self.vocabulary) <= 63:
            rows = np.repeat(np.arange(self.n_items), np.diff(indptr))
            self.bits = np.zeros(self.n_items, dtype=np.int64)
            np.bitwise_or.at(self.bits, rows, np.left_shift(1, self.indices))

    def has_any(self, items: np.ndarray, values: frozenset[str]) -> np.ndarray:
        """Mask over ``items``: True where an item has at least one of ``values``."""
        wanted = [self.vocabulary[v] for v in values if v in self.vocabulary]
        if not wanted or not len(items):
            return np.zeros(len(items), dtype=bool)
        if self.bits is not None:
            return (self.bits[items] & sum(1 << w for w in wanted)) != 0
        starts = self.indptr[items]
        lengths = self.indptr[items + 1] - starts
        total = int(lengths.sum())
        if total == 0:
            return np.zeros(len(items), dtype=bool)
        offsets = np.cumsum(lengths) - lengths
        flat = np.arange(total) - np.repeat(offsets - starts, lengths)
        lookup = np.zeros(len(self.vocabulary), dtype=bool)
        lookup[wanted] = True
        hit = lookup[self.indices[flat]]
        rows = np.repeat(np.arange(len(items)), lengths)
        return np.bincount(rows[hit], minlength=len(items)) > 0


def _normalise(scores: np.ndarray, how: Normalisation) -> np.ndarray:
    n = len(scores)
    if how == "rank":
        return 1.0 - np.arange(n, dtype=np.float64) / n
    if how == "minmax":
        low, high = scores.min(), scores.max()
        return (scores - low) / (high - low) if high > low else np.ones(n)
    std = scores.std()
    return (scores - scores.mean()) / std if std > 0 else np.zeros(n)


def _clean(candidates: SourceCandidates, dedup: bool) -> tuple[np.ndarray, np.ndarray]:
    """Valid entries of one source, in its order: real items, finite scores, first entry kept."""
    items = np.asarray(candidates.items)
    scores = np.asarray(candidates.scores, dtype=np.float64)
    if items.ndim != 1 or scores.shape != items.shape:
        raise DataError(
            f"source {candidates.source!r}: items and scores must be 1-D of one length, "
            f"not {items.shape} and {scores.shape}"
        )
    if len(items) and items.dtype.kind not in "iu":
        raise DataError(f"source {candidates.source!r}: items must be integer indices")
    items = items.astype(np.int64, copy=False)
    keep = (items >= 0) & np.isfinite(scores)
    if not keep.all():
        items, scores = items[keep], scores[keep]
    if dedup:
        _, first = np.unique(items, return_index=True)
        if len(first) < len(items):
            first.sort()
            items, scores = items[first], scores[first]
    return items, scores


class Blender:
    """Blends candidate sources and re-ranks them for one user at a time.

    ``embeddings`` (items × dim; rows L2-normalised here) enable MMR; ``popularity`` (per item,
    positive; any scale) enables novelty; ``attributes`` (per item values, a list or one
    string) enable excluded attributes. An item outside an array that is needed is an error.
    """

    def __init__(
        self,
        config: BlendConfig | None = None,
        *,
        embeddings: np.ndarray | None = None,
        popularity: np.ndarray | None = None,
        attributes: Mapping[str, Sequence[Sequence[str] | str]] | None = None,
    ) -> None:
        self.config = config if config is not None else BlendConfig()
        self.embeddings: np.ndarray | None = None
        if embeddings is not None:
            emb = np.asarray(embeddings, dtype=np.float32)
            if emb.ndim != 2 or not np.isfinite(emb).all():
                raise ConfigError(f"embeddings must be finite, items × dim (shape {emb.shape})")
            norms = np.linalg.norm(emb, axis=1, keepdims=True)
            self.embeddings = np.divide(emb, norms, out=np.zeros_like(emb), where=norms > 0)
        self.novelty: np.ndarray | None = None
        if popularity is not None:
            pop = np.asarray(popularity, dtype=np.float64)
            if pop.ndim != 1 or not np.isfinite(pop).all() or (pop <= 0).any():
                raise ConfigError("popularity must be a 1-D array of positive finite values")
            info = -np.log2(pop)
            low, high = (info.min(), info.max()) if len(info) else (0.0, 0.0)
            self.novelty = (info - low) / (high - low) if high > low else np.zeros_like(info)
        if self.config.novelty_weight > 0 and self.novelty is None:
            raise ConfigError("novelty_weight > 0 needs the Blender built with popularity")
        self.attributes = {
            name: _AttributeIndex(values) for name, values in (attributes or {}).items()
        }

    def blend(
        self,
        candidates: Sequence[SourceCandidates],
        k: int,
        *,
        weights: Mapping[str, float] | None = None,
        controls: UserControls | None = None,
        exclude: Collection[int] = (),
        business_filter: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> Blended:
        """The top ``k`` (fewer if candidates run out), best first.

        ``weights`` per source name (1 when missing; 0 drops the source); ``exclude`` holds
        item indices never shown; ``business_filter`` gets the remaining candidates (best
        first) and returns a boolean keep-mask over them.
        """
        if k < 1:
            raise ConfigError(f"k must be positive, not {k}")
        controls = controls if controls is not None else UserControls()
        items, rel, source_of, generated = self._merge(candidates, weights or {})
        names = [c.source for c in candidates]

        keep = self._allowed(items, controls, exclude)
        if not keep.all():
            items, rel, source_of, generated = (a[keep] for a in (items, rel, source_of, generated))
        if self.config.novelty_weight > 0 and len(items):
            rel = rel + self.config.novelty_weight * self._lookup(self.novelty, items, "popularity")
        order = np.lexsort((items, -rel))  # relevance, then lower index
        items, rel, source_of, generated = (a[order] for a in (items, rel, source_of, generated))
        if business_filter is not None and len(items):
            mask = np.asarray(business_filter(items.copy()))
            if mask.shape != items.shape or mask.dtype != np.bool_:
                raise DataError(
                    f"business_filter must return a boolean mask of shape {items.shape}, "
                    f"not {mask.dtype} {mask.shape}"
                )
            items, rel, source_of, generated = (a[mask] for a in (items, rel, source_of, generated))

        share = self.config.max_generated_share
        if controls.max_generated_share is not None:
            share = min(share, controls.max_generated_share)
        lam = self.config.mmr_lambda if controls.diversity is None else 1.0 - controls.diversity
        cap = math.floor(share * k + 1e-9)
        if lam >= 1.0 or self.embeddings is None or len(items) <= 1:
            picked = self._by_relevance(generated, k, cap)
        else:
            picked = self._mmr(items, rel, generated, k, cap, lam)
        picked = self._trim_generated(picked, generated, share)
        return Blended(
            items=items[picked],
            scores=rel[picked],
            sources=tuple(names[s] for s in source_of[picked]),
            generated=generated[picked],
        )

    # -- steps ----------------------------------------------------------------------------
    def _merge(
        self,
        candidates: Sequence[SourceCandidates],
        weights: Mapping[str, float],
        dedup: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Pool items (ascending), relevance, index of the providing source, generated flag."""
        all_items: list[np.ndarray] = []
        contrib: list[np.ndarray] = []
        used: list[int] = []
        for index, cand in enumerate(candidates):
            weight = weights.get(cand.source, 1.0)
            if not math.isfinite(weight) or weight < 0:
                raise ConfigError(f"weight of source {cand.source!r} must be >= 0, not {weight}")
            items, scores = _clean(cand, dedup)
            if weight == 0 or not len(items):
                continue
            all_items.append(items)
            contrib.append(weight * _normalise(scores, self.config.normalisation))
            used.append(index)
        if not all_items:
            return _EMPTY_INT, np.zeros(0), _EMPTY_INT, np.zeros(0, dtype=bool)
        item = np.concatenate(all_items)
        source = np.repeat(used, [len(a) for a in all_items])
        pool, inverse = np.unique(item, return_inverse=True)
        if not dedup:  # an item twice in one source is rare: check cheaply, redo if so
            per_source = np.bincount(inverse * len(candidates) + source)
            if per_source.max() > 1:
                return self._merge(candidates, weights, dedup=True)
        value = np.concatenate(contrib)
        rel = np.bincount(inverse, weights=value, minlength=len(pool))
        flags = np.array([c.generated for c in candidates], dtype=np.float64)[source]
        generated = np.bincount(inverse, weights=flags, minlength=len(pool)) > 0
        # per pool item: the largest weighted contribution, ties to the first source given
        best = np.lexsort((source, -value, inverse))
        grouped = inverse[best]
        first = np.ones(len(best), dtype=bool)
        first[1:] = grouped[1:] != grouped[:-1]
        return pool, rel, source[best[first]], generated

    def _allowed(
        self, items: np.ndarray, controls: UserControls, exclude: Collection[int]
    ) -> np.ndarray:
        """Mask over pool items: not excluded and no excluded attribute value."""
        keep = np.ones(len(items), dtype=bool)
        if len(exclude) and len(items):
            banned = np.asarray(exclude if isinstance(exclude, np.ndarray) else list(exclude))
            # the pool is sorted: find each banned item by binary search
            where = np.searchsorted(items, banned).clip(max=len(items) - 1)
            keep[where[items[where] == banned]] = False
        for name, values in controls.excluded_attributes.items():
            if not values:
                continue
            index = self.attributes.get(name)
            if index is None:
                known = ", ".join(sorted(self.attributes)) or "none"
                raise ConfigError(
                    f"user controls exclude attribute {name!r}, which this Blender lacks "
                    f"(known: {known})"
                )
            if len(items) and items[-1] >= index.n_items:
                raise DataError(
                    f"item {int(items[-1])} has no {name!r} value ({index.n_items} items)"
                )
            keep &= ~index.has_any(items, values)
        return keep

    @staticmethod
    def _lookup(table: np.ndarray | None, items: np.ndarray, what: str) -> np.ndarray:
        if table is None:
            raise ConfigError(f"novelty_weight > 0 needs the Blender built with {what}")
        if items.max() >= len(table):
            raise DataError(f"item {int(items.max())} has no {what} value ({len(table)} items)")
        return table[items]

    @staticmethod
    def _by_relevance(generated: np.ndarray, k: int, cap: int) -> np.ndarray:
        """The first ``k`` in relevance order, skipping generated items past the cap."""
        allowed = ~generated | (np.cumsum(generated) <= cap)
        return np.flatnonzero(allowed)[:k]

    def _mmr(
        self,
        items: np.ndarray,
        rel: np.ndarray,
        generated: np.ndarray,
        k: int,
        cap: int,
        lam: float,
    ) -> np.ndarray:
        """Greedy MMR over the pool (sorted best first, so argmax ties go to it)."""
        assert self.embeddings is not None
        if items.max() >= len(self.embeddings):
            raise DataError(
                f"item {int(items.max())} has no embedding ({len(self.embeddings)} items)"
            )
        emb = self.embeddings[items]
        low, high = rel.min(), rel.max()
        relevance = lam * ((rel - low) / (high - low) if high > low else np.ones(len(rel)))
        if cap == 0:  # -inf marks what may no longer be picked
            relevance[generated] = -np.inf
        objective = relevance
        penalty = 1.0 - lam
        max_sim: np.ndarray | None = None
        picked: list[int] = []
        n_generated = 0
        for _ in range(min(k, len(items))):
            j = int(np.argmax(objective))
            if objective[j] == -np.inf:
                break
            picked.append(j)
            relevance[j] = -np.inf
            if generated[j]:
                n_generated += 1
                if n_generated >= cap:
                    relevance[generated] = -np.inf
            sims = emb @ emb[j]
            max_sim = sims if max_sim is None else np.maximum(max_sim, sims)
            objective = relevance - penalty * max_sim
        return np.asarray(picked, dtype=np.int64)

    @staticmethod
    def _trim_generated(picked: np.ndarray, generated: np.ndarray, share: float) -> np.ndarray:
        """A list cut short by missing candidates still respects the share: drop the last
        generated items until ``generated ≤ ⌊share · length⌋``."""
        flags = generated[picked]
        n_gen = int(flags.sum())
        while n_gen and n_gen > math.floor(share * len(picked) + 1e-9):
            last = np.flatnonzero(flags)[-1]
            picked, flags = np.delete(picked, last), np.delete(flags, last)
            n_gen -= 1
        return picked
