"""The evidence behind a recommendation: what an explanation may say, gathered before any text.

:func:`build_evidence` works from plain inputs (item ids, catalogue facts, the user's history,
an optional attribution of the model's score), so the CLI, the service and the benchmarks build
the same :class:`Evidence`.

Drivers are the history items most responsible for the recommendation, found by the cheapest
honest method the model allows:

- ``item_weights``: item-item models whose score is ``history @ W`` (EASE, ItemKNN): a history
  item's contribution is its learned weight towards the recommended item, exactly what the
  score loses when that item is removed;
- ``leave_one_out``: any other model that scores the catalogue: the drop of the item's score
  when each history item is removed in turn (one batched scoring call);
- ``similarity``: models that cannot score (TIGER), or whose score no history item raises
  (user-factor models such as BPR): the history items most similar to the recommended one by
  shared genres, decade and Semantic-ID prefix;
- ``none``: an empty history (the ``popular`` answer) has no drivers.

Only the ``max_history`` most recent distinct history items are considered (cost control).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from recloop.data.types import Catalog, IdMap, Queries
from recloop.errors import RecloopError

PERSON_ATTRIBUTES = frozenset(
    {
        "actor",
        "actors",
        "artist",
        "artists",
        "author",
        "authors",
        "cast",
        "creator",
        "creators",
        "director",
        "directors",
        "people",
        "starring",
        "writer",
        "writers",
    }
)
"""Attribute names whose values are people (the checker reports them as ``person``)."""

MISSING_GENRES = frozenset({"", "unknown", "(no genres listed)", "none"})
_YEAR_SUFFIX = re.compile(r"^(.*?)\s*\((\d{4})\)\s*$")
_TRAILING_ARTICLE = re.compile(
    r"^(?P<main>.+?),\s*(?P<article>The|A|An|La|Le|Les|L'|Il|El|Los|Las|Der|Die|Das|Det|O)$"
)
_MAX_ATTRIBUTE_CHARS = 80

Contributions = Callable[[Sequence[str], str], Sequence[float]]
"""``(history, item_id) -> contribution of each history item to the item's score``."""


class EvidenceError(RecloopError):
    """Evidence that cannot be built: unknown recommended item, malformed evidence dict."""


@dataclass(frozen=True, slots=True)
class Attribution:
    """How a model's score for an item splits over the history items, and the method's name."""

    method: str
    contributions: Contributions


# ---------------------------------------------------------------------------- item facts
def split_title_year(title: str) -> tuple[str, int | None]:
    """``"Toy Story (1995)"`` -> ``("Toy Story", 1995)``; titles without a year keep theirs."""
    match = _YEAR_SUFFIX.match(title)
    if match is None:
        return title.strip(), None
    return match.group(1).strip(), int(match.group(2))


def reading_title(title: str) -> str:
    """The title as people say it: ``"Usual Suspects, The"`` -> ``"The Usual Suspects"``.

    A parenthesised alternative title (``"Seven (Se7en)"``) is dropped.
    """
    main = re.sub(r"\s*\(.*\)\s*$", "", title).strip() or title.strip()
    match = _TRAILING_ARTICLE.match(main)
    if match is None:
        return main
    article = match.group("article")
    joiner = "" if article.endswith("'") else " "
    return f"{article}{joiner}{match.group('main')}"


def decade_of(year: int) -> int:
    return year - year % 10


def decade_label(year: int) -> str:
    """``1995`` -> ``"1990s"``."""
    return f"{decade_of(year)}s"


@dataclass(frozen=True, slots=True)
class ItemFacts:
    """What the catalogue says about one item: title, year, genres, other text attributes."""

    item_id: str
    title: str
    year: int | None = None
    genres: tuple[str, ...] = ()
    attributes: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (name, values), sorted by name

    @property
    def name(self) -> str:
        """The title as people say it, without the year."""
        return reading_title(self.title) or self.item_id

    @property
    def display(self) -> str:
        """``"The Usual Suspects (1995)"``."""
        return f"{self.name} ({self.year})" if self.year is not None else self.name

    def attribute_values(self) -> list[tuple[str, str]]:
        return [(name, value) for name, values in self.attributes for value in values]

    @classmethod
    def from_attributes(
        cls, item_id: str, title: str, attributes: Mapping[str, Any] | None = None
    ) -> ItemFacts:
        """Facts from a title and free-form attributes (a catalogue row or a store record).

        ``year`` comes from the ``year`` attribute or a ``"(1995)"`` title suffix; genres from
        ``genres`` or ``genre``; other string (or list-of-string) attributes of at most 80
        characters are kept, numbers and long texts are not.
        """
        attributes = attributes or {}
        plain_title, title_year = split_title_year(str(title or ""))
        year = _year(attributes.get("year"))
        genres = _genres(attributes.get("genres", attributes.get("genre")))
        others = []
        for name in sorted(attributes):
            if name in ("year", "genres", "genre"):
                continue
            values = _text_values(attributes[name])
            if values:
                others.append((str(name), values))
        return cls(
            item_id=str(item_id),
            title=plain_title,
            year=year if year is not None else title_year,
            genres=genres,
            attributes=tuple(others),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id,
            "title": self.title,
            "year": self.year,
            "genres": list(self.genres),
            "attributes": {name: list(values) for name, values in self.attributes},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ItemFacts:
        try:
            attributes = data.get("attributes") or {}
            return cls(
                item_id=str(data["item_id"]),
                title=str(data.get("title") or ""),
                year=None if data.get("year") is None else int(data["year"]),
                genres=tuple(str(g) for g in data.get("genres") or ()),
                attributes=tuple(
                    (str(name), tuple(str(v) for v in values))
                    for name, values in sorted(attributes.items())
                ),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise EvidenceError(f"malformed item facts in evidence: {exc}") from None


def _year(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    try:
        year = int(str(value).strip()[:4]) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        return None
    return year if 1800 <= year <= 2100 else None


def _genres(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    raw = re.split(r"[|,]", value) if isinstance(value, str) else list(value)
    out: list[str] = []
    for genre in raw:
        text = str(genre).strip()
        if text.lower() not in MISSING_GENRES and text not in out:
            out.append(text)
    return tuple(out)


def _text_values(value: Any) -> tuple[str, ...]:
    values = [value] if isinstance(value, str) else value if isinstance(value, list | tuple) else []
    kept = []
    for v in values:
        if isinstance(v, str) and 0 < len(v.strip()) <= _MAX_ATTRIBUTE_CHARS:
            kept.append(" ".join(v.split()))
    return tuple(dict.fromkeys(kept))


def catalog_facts(catalog: Catalog) -> dict[str, ItemFacts]:
    """Every catalogue item's facts, by external item id."""
    names = list(catalog.attributes)
    columns = [catalog.attributes[name] for name in names]
    facts = {}
    for row, item_id in enumerate(catalog.items.ids()):
        attributes = {
            name: _plain(column[row]) for name, column in zip(names, columns, strict=True)
        }
        facts[item_id] = ItemFacts.from_attributes(item_id, catalog.title[row], attributes)
    return facts


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


# ---------------------------------------------------------------------------- evidence
@dataclass(frozen=True, slots=True)
class Driver:
    """A history item that drives the recommendation, and what it shares with the item."""

    item: ItemFacts
    weight: float  # its contribution to the score (or its similarity, method "similarity")
    shared_genres: tuple[str, ...] = ()
    same_year: bool = False
    same_decade: bool = False
    shared_attributes: tuple[tuple[str, str], ...] = ()
    shared_sid_prefix: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "item": self.item.to_dict(),
            "weight": self.weight,
            "shared_genres": list(self.shared_genres),
            "same_year": self.same_year,
            "same_decade": self.same_decade,
            "shared_attributes": [list(pair) for pair in self.shared_attributes],
            "shared_sid_prefix": list(self.shared_sid_prefix),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Driver:
        try:
            return cls(
                item=ItemFacts.from_dict(data["item"]),
                weight=float(data.get("weight", 0.0)),
                shared_genres=tuple(str(g) for g in data.get("shared_genres") or ()),
                same_year=bool(data.get("same_year", False)),
                same_decade=bool(data.get("same_decade", False)),
                shared_attributes=tuple(
                    (str(a), str(b)) for a, b in data.get("shared_attributes") or ()
                ),
                shared_sid_prefix=tuple(int(c) for c in data.get("shared_sid_prefix") or ()),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise EvidenceError(f"malformed driver in evidence: {exc}") from None


@dataclass(frozen=True, slots=True)
class Evidence:
    """Everything an explanation of one recommended item may use, and nothing else.

    ``shared_*`` summarise what the item has in common with its drivers; ``allowed_names`` is
    every title, genre, year, decade, person and attribute value the text may mention.
    ``method`` says how the drivers were found (see the module docstring).
    """

    item: ItemFacts
    drivers: tuple[Driver, ...]
    shared_genres: tuple[str, ...]
    shared_year: int | None
    shared_decade: str | None
    shared_attributes: tuple[tuple[str, str], ...]
    item_sid: tuple[int, ...]
    shared_sid_prefix: tuple[int, ...]
    source: str
    score: float | None
    method: str
    allowed_names: tuple[str, ...]

    @property
    def items(self) -> tuple[ItemFacts, ...]:
        """The recommended item and its drivers: every item the text may name."""
        return (self.item, *(d.item for d in self.drivers))

    @property
    def has_personal_data(self) -> bool:
        """True when the evidence holds items from the user's history."""
        return bool(self.drivers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "item": self.item.to_dict(),
            "drivers": [d.to_dict() for d in self.drivers],
            "shared_genres": list(self.shared_genres),
            "shared_year": self.shared_year,
            "shared_decade": self.shared_decade,
            "shared_attributes": [list(pair) for pair in self.shared_attributes],
            "item_sid": list(self.item_sid),
            "shared_sid_prefix": list(self.shared_sid_prefix),
            "source": self.source,
            "score": self.score,
            "method": self.method,
            "allowed_names": list(self.allowed_names),
        }

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): the input of content hashes."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Evidence:
        """The evidence :meth:`to_dict` wrote; a malformed dict is an :class:`EvidenceError`."""
        if not isinstance(data, Mapping) or "item" not in data:
            raise EvidenceError("evidence must be a mapping with an 'item'")
        try:
            score = data.get("score")
            return cls(
                item=ItemFacts.from_dict(data["item"]),
                drivers=tuple(Driver.from_dict(d) for d in data.get("drivers") or ()),
                shared_genres=tuple(str(g) for g in data.get("shared_genres") or ()),
                shared_year=None if data.get("shared_year") is None else int(data["shared_year"]),
                shared_decade=data.get("shared_decade"),
                shared_attributes=tuple(
                    (str(a), str(b)) for a, b in data.get("shared_attributes") or ()
                ),
                item_sid=tuple(int(c) for c in data.get("item_sid") or ()),
                shared_sid_prefix=tuple(int(c) for c in data.get("shared_sid_prefix") or ()),
                source=str(data.get("source") or ""),
                score=None if score is None else float(score),
                method=str(data.get("method") or "none"),
                allowed_names=tuple(str(n) for n in data.get("allowed_names") or ()),
            )
        except (TypeError, ValueError) as exc:
            raise EvidenceError(f"malformed evidence: {exc}") from None


ItemLookup = Mapping[str, ItemFacts] | Callable[[str], ItemFacts | None]
SidLookup = Mapping[str, Sequence[int]] | Callable[[str], Sequence[int] | None]


def build_evidence(
    item_id: str,
    history: Sequence[str],
    items: ItemLookup,
    *,
    attribution: Attribution | None = None,
    source: str = "",
    score: float | None = None,
    semantic_ids: SidLookup | None = None,
    n_drivers: int = 3,
    max_history: int = 200,
) -> Evidence:
    """The evidence for recommending ``item_id`` to a user with time-ordered ``history``.

    ``items`` gives each item's facts (a dict or a lookup function); ``attribution`` splits
    the model's score over the history (see :func:`model_attribution`); ``semantic_ids`` gives
    items' Semantic IDs when the model has them. Without an attribution, or when no history
    item raises the score, drivers are the most similar history items.
    """
    if n_drivers < 0 or max_history < 1:
        raise EvidenceError("n_drivers must be >= 0 and max_history >= 1")
    facts = _lookup(items)
    sids = _lookup(semantic_ids) if semantic_ids is not None else None
    item = facts(item_id)
    if item is None:
        raise EvidenceError(f"unknown item {item_id!r}: no catalogue facts for it")
    recent = _recent_distinct(history, exclude=item_id, limit=max_history)
    item_sid = tuple(int(c) for c in (sids(item_id) or ())) if sids else ()
    ranked, method = _rank_drivers(item, recent, facts, attribution, sids, item_sid)
    drivers = tuple(
        _driver(item, driver_facts, weight, sids, item_sid)
        for driver_facts, weight in ranked[:n_drivers]
    )
    return _assemble(item, drivers, item_sid, source, score, method)


def _lookup(source: Any) -> Callable[[str], Any]:
    if isinstance(source, Mapping):
        return source.get
    lookup: Callable[[str], Any] = source
    return lookup


def _recent_distinct(history: Sequence[str], *, exclude: str, limit: int) -> list[str]:
    """The ``limit`` most recent distinct items of ``history``, most recent first."""
    seen: dict[str, None] = {}
    for item in reversed(history):
        if item != exclude and item not in seen:
            seen[item] = None
            if len(seen) == limit:
                break
    return list(seen)


def _rank_drivers(
    item: ItemFacts,
    recent: list[str],
    facts: Callable[[str], ItemFacts | None],
    attribution: Attribution | None,
    sids: Callable[[str], Sequence[int] | None] | None,
    item_sid: tuple[int, ...],
) -> tuple[list[tuple[ItemFacts, float]], str]:
    if not recent:
        return [], "none"
    known = [(i, f) for i in recent if (f := facts(i)) is not None]
    if attribution is not None:
        values = list(attribution.contributions([i for i, _ in reversed(known)], item.item_id))
        weights = dict(zip([i for i, _ in reversed(known)], values, strict=True))
        # most recent first among equal weights: the sort is stable
        scored = [(f, float(weights[i])) for i, f in known if float(weights[i]) > 1e-9]
        if scored:
            scored.sort(key=lambda pair: -pair[1])
            return scored, attribution.method
    similar = []
    for i, f in known:
        sid = tuple(int(c) for c in (sids(i) or ())) if sids else ()
        weight = _similarity(item, f, item_sid, sid)
        if weight > 0:
            similar.append((f, weight))
    similar.sort(key=lambda pair: -pair[1])
    return similar, "similarity" if similar else "none"


def _similarity(
    item: ItemFacts, other: ItemFacts, item_sid: tuple[int, ...], other_sid: tuple[int, ...]
) -> float:
    """Genre Jaccard + 0.25 for the same decade + 0.5 × shared share of the Semantic ID."""
    a, b = set(item.genres), set(other.genres)
    value = len(a & b) / len(a | b) if a | b else 0.0
    if item.year is not None and other.year is not None:
        value += 0.25 * (decade_of(item.year) == decade_of(other.year))
    if item_sid and other_sid:
        value += 0.5 * len(_common_prefix(item_sid[:-1], other_sid[:-1])) / max(1, len(item_sid))
    return value


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    out = []
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        out.append(int(x))
    return tuple(out)


def _driver(
    item: ItemFacts,
    other: ItemFacts,
    weight: float,
    sids: Callable[[str], Sequence[int] | None] | None,
    item_sid: tuple[int, ...],
) -> Driver:
    other_sid = tuple(int(c) for c in (sids(other.item_id) or ())) if sids else ()
    same_year = item.year is not None and item.year == other.year
    same_decade = (
        item.year is not None
        and other.year is not None
        and decade_of(item.year) == decade_of(other.year)
    )
    mine = set(item.attribute_values())
    return Driver(
        item=other,
        weight=round(weight, 6),
        shared_genres=tuple(g for g in item.genres if g in other.genres),
        same_year=same_year,
        same_decade=same_decade,
        shared_attributes=tuple(pair for pair in other.attribute_values() if pair in mine),
        # the last level is the collision suffix: never a shared meaning
        shared_sid_prefix=_common_prefix(item_sid[:-1], other_sid[:-1]),
    )


def _assemble(
    item: ItemFacts,
    drivers: tuple[Driver, ...],
    item_sid: tuple[int, ...],
    source: str,
    score: float | None,
    method: str,
) -> Evidence:
    genre_counts = {g: sum(g in d.shared_genres for d in drivers) for g in item.genres}
    shared_genres = tuple(
        sorted((g for g, n in genre_counts.items() if n), key=lambda g: -genre_counts[g])
    )
    attribute_counts: dict[tuple[str, str], int] = {}
    for d in drivers:
        for pair in d.shared_attributes:
            attribute_counts[pair] = attribute_counts.get(pair, 0) + 1
    shared_attributes = tuple(sorted(attribute_counts, key=lambda p: (-attribute_counts[p], p)))
    prefixes = [d.shared_sid_prefix for d in drivers]
    return Evidence(
        item=item,
        drivers=drivers,
        shared_genres=shared_genres,
        shared_year=item.year if any(d.same_year for d in drivers) else None,
        shared_decade=(
            decade_label(item.year)
            if item.year is not None and any(d.same_decade for d in drivers)
            else None
        ),
        shared_attributes=shared_attributes,
        item_sid=item_sid,
        shared_sid_prefix=max(prefixes, key=len, default=()),
        source=source,
        score=None if score is None else round(float(score), 6),
        method=method,
        allowed_names=allowed_names((item, *(d.item for d in drivers)), source),
    )


def allowed_names(items: Iterable[ItemFacts], source: str = "") -> tuple[str, ...]:
    """Every name the text may mention: titles (with and without year), genres, years,
    decades, attribute values and the source."""
    names: set[str] = set()
    for facts in items:
        names.update({facts.name, facts.display})
        names.update(facts.genres)
        if facts.year is not None:
            names.update({str(facts.year), decade_label(facts.year)})
        names.update(value for _, value in facts.attribute_values())
    if source:
        names.add(source)
    names.discard("")
    return tuple(sorted(names))


# ---------------------------------------------------------------------------- attribution
def model_attribution(model: Any, items: IdMap) -> Attribution | None:
    """How ``model``'s score splits over a history, or None for models that cannot score.

    EASE and ItemKNN (score = history @ W) give their item-item weights; any other model
    with ``score(queries)`` is attributed by leave-one-out. ``items`` maps external ids to
    the model's indices.
    """
    from recloop.models.ease import EASE
    from recloop.models.itemknn import ItemKNN

    if isinstance(model, EASE | ItemKNN) and hasattr(model, "weights_"):
        return Attribution("item_weights", _weight_contributions(model.weights_, items))
    if callable(getattr(model, "score", None)) and hasattr(model, "n_items_"):
        return Attribution("leave_one_out", _leave_one_out(model, items))
    return None


def _weight_contributions(weights: Any, items: IdMap) -> Contributions:
    def contributions(history: Sequence[str], item_id: str) -> list[float]:
        index = items.index([item_id, *history], unknown="new")
        target, rows = int(index[0]), index[1:]
        out = [0.0] * len(history)
        if target < 0:
            return out
        known = np.flatnonzero(rows >= 0)
        if len(known):
            column = weights[rows[known], target]
            column = column.toarray().ravel() if hasattr(column, "toarray") else column
            for slot, value in zip(known, np.asarray(column).ravel(), strict=True):
                out[int(slot)] = float(value)
        return out

    return contributions


def _leave_one_out(model: Any, items: IdMap) -> Contributions:
    def contributions(history: Sequence[str], item_id: str) -> list[float]:
        index = items.index([item_id, *history], unknown="new")
        target, rows = int(index[0]), index[1:]
        out = [0.0] * len(history)
        known = np.flatnonzero(rows >= 0)
        if target < 0 or not len(known):
            return out
        full = rows[known]
        variants = [full.tolist()] + [np.delete(full, j).tolist() for j in range(len(full))]
        queries = Queries.from_lists([-1] * len(variants), variants)
        column = np.asarray(model.score(queries))[:, target]
        for j, slot in enumerate(known):
            out[int(slot)] = float(column[0] - column[j + 1])
        return out

    return contributions


def sid_lookup(codes: np.ndarray, items: IdMap) -> Callable[[str], tuple[int, ...] | None]:
    """Semantic IDs by external item id from a model's ``(n_items, levels + 1)`` code array."""

    def lookup(item_id: str) -> tuple[int, ...] | None:
        index = int(items.index([item_id], unknown="new")[0])
        if index < 0 or index >= len(codes):
            return None
        return tuple(int(c) for c in codes[index])

    return lookup


def model_semantic_ids(model: Any, items: IdMap) -> Callable[[str], tuple[int, ...] | None] | None:
    """The Semantic-ID lookup of a model that carries Semantic IDs (TIGER, SID-SASRec)."""
    sids = getattr(model, "sids_", None)
    codes = getattr(sids, "codes", None)
    return sid_lookup(np.asarray(codes), items) if codes is not None else None
