"""Gap-filling content: curated collections (and optional item concepts) for under-served segments.

For each segment of a :class:`~recloop.engine.gaps.GapReport`, worst served first, a
collection of real catalogue items is chosen for it and a :class:`TextGenerator` writes its
title and description. Items are scored by what the segment likes far more than everyone
else and is not being shown::

    score(i) = lift(i) · (1 − exposure(i)) · (1 + tail_boost · [i is a tail item])

- ``lift(i)``: the share of the segment's users with a positive train row on ``i``, over the
  share among all users (only items at least max(``min_support``, 5 % of the segment) of its
  users like, as the gap analysis's ``top_items``);
- ``exposure(i)``: the share of the segment's users who have not consumed ``i`` and find it
  in their top-``k`` recommendations from the model (0 without a model);
- tail items (outside the head covering ``tail_share`` of train rows) get a boost, since
  under-served segments are the ones that want more tail than they get.

Hidden, unavailable and uncatalogued items are never chosen. The prompt holds only
aggregate segment facts and item text, each in a :func:`~recloop.generative.safety.untrusted`
block; the answer's ``[[id]]`` references are constrained to the chosen items with
:func:`~recloop.generative.safety.constrain_ids` (kept ones become quoted titles, others are
left for the catalogue check to flag). The "collection" and "item_concept" templates are the
deterministic default. Every piece carries provenance and ``generated: true``.

:class:`GeneratedSource` turns approved collections, and nothing else, into candidates.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from recloop.data.types import Catalog, IdMap, Interactions, Queries
from recloop.engine.gaps import GapConfig, GapReport, Segment
from recloop.errors import ConfigError
from recloop.eval.segments import head_items
from recloop.generative.llm import (
    Generation,
    GenerationError,
    GenerationRequest,
    Message,
    TemplateGenerator,
    TextGenerator,
    register_template,
)
from recloop.generative.quality import ContentError, GeneratedPiece, store_items, visible
from recloop.generative.review import ReviewedPiece, ReviewQueue
from recloop.generative.safety import CLOSE, OPEN, SYSTEM_GUARD, constrain_ids, untrusted
from recloop.service.engine import Candidate
from recloop.store.events import EventStore, ItemRecord, item_records

PROMPT_VERSION = "collection-v1"
CONCEPT_PROMPT_VERSION = "item-concept-v1"
SOURCE = "generated"
_REFERENCE = re.compile(r"\[\[([^\[\]]{1,128})\]\]")

COLLECTION_INSTRUCTIONS = (
    "You write the title and the description of a curated collection of catalogue items for "
    "one group of users. Answer with the title on the first line (at most 80 characters), "
    "then a blank line, then a description of two or three English sentences (at most 600 "
    "characters) saying why this group will enjoy these items. Refer to items only as [[id]] "
    "with the ids listed below; never mention an item that is not listed, use double quotes "
    "for nothing else, and say nothing about individual users."
)
CONCEPT_INSTRUCTIONS = (
    "You describe an idea for a new catalogue item that one group of users would welcome and "
    "the catalogue lacks. Answer with a working title on the first line (at most 80 "
    "characters), then a blank line, then two or three English sentences (at most 600 "
    "characters). Refer to the listed inspirations only as [[id]]; never mention other items "
    "and use double quotes for nothing else."
)


class ContentConfig(BaseModel):
    """How many segments get content and how collections are chosen. Frozen; strict fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    segments: int = Field(default=3, ge=1, le=64, description="worst-served segments to serve")
    items_per_collection: int = Field(default=8, ge=2, le=50)
    min_items: int = Field(default=3, ge=1, le=50, description="fewer eligible items: skip")
    min_segment_size: int = Field(default=5, ge=1, description="smaller segments are skipped")
    min_support: int = Field(default=2, ge=1, description="segment users that must like an item")
    k: int = Field(default=20, ge=1, le=1000, description="list length exposure is measured on")
    tail_boost: float = Field(default=0.5, ge=0.0, le=10.0)
    tail_share: float = Field(default=0.5, gt=0.0, lt=1.0)
    pool_size: int = Field(default=100, ge=1, le=200, description="target items kept per piece")
    attribute: str = Field(default="genres", description="item attribute describing taste")
    concepts: bool = Field(default=False, description="also write one new-item concept each")
    max_tokens: int = Field(default=300, ge=16, le=4096)


# ------------------------------------------------------------------------------ templates
@register_template("collection")
def collection_template(evidence: Mapping[str, Any]) -> str:
    """Deterministic title and description of a collection from its evidence."""
    items = list(evidence.get("items", []))
    genres = [str(g) for g in evidence.get("genres", [])][:2]
    phrase = _join(genres) if genres else "varied"
    title = f"Overlooked {phrase} favourites"
    size = int(evidence.get("size", 0))
    tail = sum(1 for item in items if item.get("tail"))
    taste = f"a taste for {phrase}" if genres else "varied tastes"
    text = (
        f"{_count(len(items), 'title')} that a group of {size} people with {taste} enjoy far "
        "more than most, yet rarely see among their recommendations."
    )
    if tail == len(items) > 1:
        text += " All of them are outside the best-known titles."
    elif tail:
        verb = "is" if tail == 1 else "are"
        text += f" {tail} of them {verb} outside the best-known titles."
    quoted = [f'"{item["title"]}"' for item in items]
    text += f" The collection holds {_join(quoted)}."
    return f"{title}\n\n{text}"


@register_template("item_concept")
def concept_template(evidence: Mapping[str, Any]) -> str:
    """Deterministic working title and description of a new-item concept."""
    genres = [str(g) for g in evidence.get("genres", [])][:2]
    phrase = _join(genres) if genres else "crossover"
    inspirations = [f'"{item["title"]}"' for item in evidence.get("items", [])][:2]
    title = f"New {phrase} idea"
    text = (
        f"An idea for a new title that a group of {int(evidence.get('size', 0))} people would "
        f"welcome: a {phrase} story with the appeal of {_join(inspirations) or 'what they love'}. "
        "The catalogue holds few titles like it, and this group rates the ones it has highly."
    )
    return f"{title}\n\n{text}"


def _join(words: Sequence[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun if n == 1 else noun + 's'}"


# ------------------------------------------------------------------------------ generation
def default_generator() -> TextGenerator:
    """The configured LLM backend when :mod:`recloop.generative.backends` exists, else the
    deterministic :class:`TemplateGenerator`."""
    if importlib.util.find_spec("recloop.generative.backends") is None:
        return TemplateGenerator()
    backends: Any = importlib.import_module("recloop.generative.backends")
    generator: TextGenerator = backends.build_generator(backends.GeneratorConfig.from_env())
    return generator


def catalogue_from_store(store: EventStore, item_ids: Sequence[str]) -> dict[str, ItemRecord]:
    """The store's catalogue records of ``item_ids`` (unknown ids left out)."""
    return dict(store_items(store)(list(item_ids)))


def generate_content(
    report: GapReport,
    train: Interactions,
    catalogue: Mapping[str, ItemRecord] | Catalog,
    *,
    generator: TextGenerator | None = None,
    model: Any = None,
    config: ContentConfig | Mapping[str, Any] | None = None,
    model_version: str = "unversioned",
    blocked: Iterable[str] = (),
    segment_prefix: str | None = None,
    clock: Callable[[], float] = time.time,
) -> list[GeneratedPiece]:
    """Pieces for the worst-served segments of ``report`` (see the module docstring).

    ``train`` is the interactions the report was made from (its id maps give external ids);
    ``model`` the fitted model whose exposure counts (None: exposure 0); ``blocked`` item ids
    never to choose. Segments are named ``{segment_prefix}-s{segment}`` (default prefix
    ``gaps-{model_version}-n{number of segments}``). Segments smaller than
    ``min_segment_size`` or with fewer than ``min_items`` eligible items are skipped. A
    generator that fails raises :class:`GenerationError` (nothing is returned half-done).
    """
    cfg = _config(config)
    generator = generator or default_generator()
    records = _records(catalogue)
    if not isinstance(train, Interactions):
        raise ContentError(f"train must be Interactions, not {type(train).__name__}")
    if not isinstance(report, GapReport):
        raise ContentError(f"report must be a GapReport, not {type(report).__name__}")
    prefix = segment_prefix or f"gaps-{model_version}-n{len(report.segments)}"
    now = clock()
    pos = train.positive()
    x = pos.to_csr()
    item_ids = train.items.ids()
    user_ids = train.users.ids()
    n_active = max(int((np.diff(x.indptr) > 0).sum()), 1)
    all_counts = np.asarray(x.sum(axis=0)).ravel()
    tail = ~head_items(pos, cfg.tail_share)
    banned = set(blocked)
    usable = np.array(
        [i in records and visible(records[i], now) and i not in banned for i in item_ids],
        dtype=bool,
    )
    values = [_attribute(records.get(i), cfg.attribute) for i in item_ids]
    indptr, hist = pos.histories()
    queries = Queries(np.arange(train.n_users, dtype=np.int32), indptr, hist)

    pieces: list[GeneratedPiece] = []
    served = 0
    for segment in report.segments:
        if served >= cfg.segments:
            break
        if segment.size < cfg.min_segment_size:
            continue
        users = np.asarray(segment.users, dtype=np.int64)
        if len(users) == 0:
            raise ContentError(
                f"segment {segment.segment} lists no users: build the report with its users"
            )
        if users.min() < 0 or users.max() >= train.n_users:
            raise ContentError("report: segment users are not users of train")
        seg_counts = np.asarray(x[users].sum(axis=0)).ravel()
        exposure = _exposure(model, queries.take(users), seg_counts, len(users), cfg.k)
        chosen, pool, scores, support = _choose(
            seg_counts, all_counts, exposure, tail, usable, len(users), n_active, cfg
        )
        if len(chosen) < cfg.min_items:
            continue
        served += 1
        favoured, target_genres = _taste(values, seg_counts, all_counts)
        genres = _collection_genres(chosen, values, favoured + target_genres)
        key = f"{prefix}-s{segment.segment}"
        base = {
            "generated": True,
            "segment": key,
            "segment_index": int(segment.segment),
            "segment_size": int(segment.size),
            "model_version": model_version,
            "gap": _gap_scores(segment),
            "created_at": now,
            "target": {
                "items": [item_ids[i] for i in pool],
                cfg.attribute: target_genres,
            },
        }
        audience = tuple(user_ids[int(u)] for u in users)
        chosen_ids = [item_ids[i] for i in chosen]
        evidence: dict[str, Any] = {
            "segment": key,
            "size": int(segment.size),
            "genres": genres,
            "gap": _num(segment.gap),
            "items": [
                {
                    "id": item_ids[i],
                    "title": records[item_ids[i]].title or item_ids[i],
                    "tail": bool(tail[i]),
                }
                for i in chosen
            ],
        }
        selection = {
            "method": "lift x (1 - exposure) x (1 + tail_boost if tail)",
            "support": support,
            "k": cfg.k if model is not None else None,
            "tail_boost": cfg.tail_boost,
            "scores": {item_ids[i]: round(float(scores[i]), 4) for i in chosen},
        }
        # a concept cites the collection's first items: each names the other as its
        # companion, so the near-duplicate check does not compare their item sets
        concept_id = uuid.uuid4().hex if cfg.concepts else None
        provenance = {**base, "selection": selection}
        if concept_id is not None:
            provenance["companion"] = concept_id
        collection = _write(
            "collection", generator, evidence, records, chosen_ids, key, audience, provenance, cfg
        )
        pieces.append(collection)
        if concept_id is not None:
            inspirations = chosen_ids[:3]
            concept_evidence = {**evidence, "items": evidence["items"][:3]}
            pieces.append(
                _write(
                    "concept",
                    generator,
                    concept_evidence,
                    records,
                    inspirations,
                    key,
                    audience,
                    {**base, "companion": collection.content_id},
                    cfg,
                    content_id=concept_id,
                )
            )
    return pieces


def _write(
    kind: str,
    generator: TextGenerator,
    evidence: Mapping[str, Any],
    records: Mapping[str, ItemRecord],
    item_ids: Sequence[str],
    segment: str,
    audience: tuple[str, ...],
    provenance: Mapping[str, Any],
    cfg: ContentConfig,
    *,
    content_id: str | None = None,
) -> GeneratedPiece:
    """Ask the generator for one piece and turn its answer into a :class:`GeneratedPiece`.

    A generator that fails, or answers with something that is not a :class:`Generation`
    with text, raises :class:`GenerationError` naming the piece (never a bare TypeError).
    """
    task = "collection" if kind == "collection" else "item_concept"
    version = PROMPT_VERSION if kind == "collection" else CONCEPT_PROMPT_VERSION
    request = GenerationRequest(
        task=task,
        evidence=dict(evidence),
        messages=_prompt(kind, evidence, records),
        max_tokens=cfg.max_tokens,
    )
    what = f"the {kind} for segment {segment}"
    try:
        generation = generator.generate(request)
    except GenerationError as exc:
        raise GenerationError(f"{what}: {exc}") from exc
    except Exception as exc:  # a backend bug must not surface as a bare TypeError
        raise GenerationError(f"{what}: the generator failed ({type(exc).__name__})") from exc
    if not isinstance(generation, Generation) or not isinstance(generation.text, str):
        raise GenerationError(f"{what}: the generator answered without text")
    title, description = split_title(generation.text)
    titles = {i: records[i].title or i for i in item_ids}
    title, kept_t, rejected_t = resolve_references(title, titles)
    description, kept_d, rejected_d = resolve_references(description, titles)
    return GeneratedPiece(
        **({"content_id": content_id} if content_id is not None else {}),
        kind=kind,
        segment=segment,
        title=title,
        description=description,
        items=tuple(item_ids),
        audience=audience,
        provenance={
            **provenance,
            "task": task,
            "prompt_version": version,
            **_backend(generation),
            "references": {
                "kept": list(dict.fromkeys(kept_t + kept_d)),
                "rejected": rejected_t + rejected_d,
            },
        },
    )


def _prompt(
    kind: str, evidence: Mapping[str, Any], records: Mapping[str, ItemRecord]
) -> tuple[Message, ...]:
    instructions = COLLECTION_INSTRUCTIONS if kind == "collection" else CONCEPT_INSTRUCTIONS
    genres = ", ".join(str(g) for g in evidence.get("genres", [])) or "no clear genre"
    group = (
        f"{evidence.get('size')} users; they favour: {genres}. They are served worse than "
        "average, and these items are ones they like that the recommender rarely shows them."
    )
    blocks = [untrusted("group", group)]
    for n, item in enumerate(evidence.get("items", []), start=1):
        record = records.get(item["id"])
        body = f"[[{item['id']}]] {item['title']}. {record.text if record else ''}"
        blocks.append(untrusted(f"item {n}", body, max_chars=300))
    blocks.append("Write the title and the description now.")
    return (
        Message("system", f"{SYSTEM_GUARD}\n\n{instructions}"),
        Message("user", "\n\n".join(blocks)),
    )


_BLOCK_DELIMITER = re.compile(rf"{OPEN}(?:BEGIN|END)\b[^{CLOSE}\n]*{CLOSE}")


def split_title(text: str) -> tuple[str, str]:
    """(title, description) of an answer: the first non-empty line, then the rest.

    Markdown markers, ``Title:``/``Description:`` labels and quotes around the title go, and
    so do the prompt's data-block delimiters (``«BEGIN item 1»``) when a model echoes them.
    """
    text = _BLOCK_DELIMITER.sub("", text)
    lines = [line.strip() for line in text.strip().splitlines()]
    while lines and not lines[0]:
        lines.pop(0)
    if not lines:
        return "", ""
    title = lines[0]
    for _ in range(3):  # "## Title: **Name**" and the like
        title = title.strip().strip("#*_").strip()
        title = re.sub(r"^title\s*:\s*", "", title, flags=re.IGNORECASE)
    if len(title) >= 2 and title[0] == title[-1] and title[0] in "\"'“”":
        title = title[1:-1].strip()
    if title.startswith("“") and title.endswith("”"):
        title = title[1:-1].strip()
    body = " ".join(" ".join(lines[1:]).split())
    body = re.sub(r"^description\s*:\s*", "", body, flags=re.IGNORECASE)
    return title, body


def resolve_references(text: str, titles: Mapping[str, str]) -> tuple[str, list[str], list[str]]:
    """``[[id]]`` references of allowed items become quoted titles; others stay as written.

    Returns (text, kept ids, rejected ids); rejected references are left in the text so the
    catalogue check flags the piece rather than the text silently changing meaning.
    """
    kept, rejected = constrain_ids(text, titles.keys())

    def swap(match: re.Match[str]) -> str:
        ref = match.group(1).strip()
        return f'"{titles[ref]}"' if ref in titles else match.group(0)

    return _REFERENCE.sub(swap, text), kept, rejected


def _backend(generation: Generation) -> dict[str, Any]:
    """The provenance of the text; a backend's odd usage figures become None, not an error."""
    return {
        "backend": str(generation.backend),
        "model": str(generation.model),
        "usage": {
            "prompt_tokens": _usage(generation.prompt_tokens),
            "completion_tokens": _usage(generation.completion_tokens),
            "latency_s": _usage(generation.latency_s, 4),
        },
    }


def _usage(value: Any, digits: int | None = None) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return round(float(value), digits) if digits is not None else value


# ------------------------------------------------------------------------------ item choice
def _exposure(
    model: Any, queries: Queries, seg_counts: np.ndarray, n_users: int, k: int
) -> np.ndarray:
    """Per item: the share of the segment's non-consumers that get it in their top-k."""
    shown = np.zeros(len(seg_counts), dtype=np.float64)
    if model is None or len(queries) == 0:
        return shown
    for start in range(0, len(queries), 1000):
        rows = np.arange(start, min(start + 1000, len(queries)))
        recs, _ = model.recommend(queries.take(rows), k)
        recs = np.asarray(recs)
        valid = recs[(recs >= 0) & (recs < len(shown))]
        shown += np.bincount(valid, minlength=len(shown))
    return np.clip(shown / np.maximum(n_users - seg_counts, 1.0), 0.0, 1.0)


def _choose(
    seg_counts: np.ndarray,
    all_counts: np.ndarray,
    exposure: np.ndarray,
    tail: np.ndarray,
    usable: np.ndarray,
    n_seg: int,
    n_active: int,
    cfg: ContentConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(chosen items, target pool, per-item scores, support used) for one segment."""
    support = max(cfg.min_support, math.ceil(0.05 * n_seg))
    candidates = np.flatnonzero((seg_counts >= support) & usable)
    if len(candidates) < cfg.min_items:
        support = 1
        candidates = np.flatnonzero((seg_counts >= 1) & usable)
    scores = np.zeros(len(seg_counts), dtype=np.float64)
    if len(candidates) == 0:
        return candidates, candidates, scores, support
    lift = (seg_counts[candidates] / n_seg) / (all_counts[candidates] / n_active)
    boost = 1.0 + cfg.tail_boost * tail[candidates]
    scores[candidates] = lift * (1.0 - exposure[candidates]) * boost
    order = np.lexsort((candidates, -seg_counts[candidates], -scores[candidates]))
    ranked = candidates[order]
    return ranked[: cfg.items_per_collection], ranked[: cfg.pool_size], scores, support


def _taste(
    values: Sequence[tuple[str, ...]], seg_counts: np.ndarray, all_counts: np.ndarray
) -> tuple[list[str], list[str]]:
    """(up to 3 genres the segment favours, up to 5 that describe its target).

    A genre's segment share is the share of the segment's positive rows on items with it; it
    is ranked by that share over the overall share (lift), among genres with a share ≥ 10 %
    (≥ 5 % for the target).
    """
    seg: dict[str, float] = {}
    everyone: dict[str, float] = {}
    for i in np.flatnonzero(all_counts > 0):
        for value in values[int(i)]:
            everyone[value] = everyone.get(value, 0.0) + float(all_counts[i])
            if seg_counts[i] > 0:
                seg[value] = seg.get(value, 0.0) + float(seg_counts[i])
    seg_total = float(seg_counts.sum()) or 1.0
    all_total = float(all_counts.sum()) or 1.0
    share = {g: seg[g] / seg_total for g in seg}
    lift = {g: share[g] / (everyone[g] / all_total) for g in seg}
    ranked = sorted(seg, key=lambda g: (-lift[g], -share[g], g))
    favoured = [g for g in ranked if share[g] >= 0.10][:3]
    if not favoured:
        favoured = sorted(seg, key=lambda g: (-share[g], g))[:2]
    target = [g for g in ranked if share[g] >= 0.05][:5] or favoured
    return favoured, target


def _collection_genres(
    chosen: np.ndarray, values: Sequence[tuple[str, ...]], preferred: Sequence[str]
) -> list[str]:
    """Up to 3 genres shared by at least two chosen items (most shared first; ties: the ones
    the segment favours), so the title describes the collection, not only the segment."""
    counts: dict[str, int] = {}
    for i in chosen:
        for value in values[int(i)]:
            counts[value] = counts.get(value, 0) + 1
    rank = {g: n for n, g in enumerate(dict.fromkeys(preferred))}
    ordered = sorted(counts, key=lambda g: (-counts[g], rank.get(g, len(rank)), g))
    return [g for g in ordered if counts[g] >= min(2, len(chosen))][:3]


def _attribute(record: ItemRecord | None, attribute: str) -> tuple[str, ...]:
    if record is None:
        return ()
    value = record.attributes.get(attribute)
    if value is None:
        return ()
    if isinstance(value, list | tuple):
        return tuple(str(v) for v in value)
    return (str(value),)


def _records(catalogue: Mapping[str, ItemRecord] | Catalog) -> dict[str, ItemRecord]:
    if isinstance(catalogue, Catalog):
        return {record.item_id: record for record in item_records(catalogue)}
    if isinstance(catalogue, Mapping):
        return dict(catalogue)
    raise ContentError(f"catalogue must be a Catalog or a mapping, not {type(catalogue).__name__}")


def _gap_scores(segment: Segment) -> dict[str, Any]:
    return {
        "gap": _num(segment.gap),
        "satisfaction": _num(segment.satisfaction),
        "satisfaction_kind": segment.satisfaction_kind,
        "coverage": _num(segment.coverage),
        "tail_demand": _num(segment.tail_demand),
        "tail_supply": _num(segment.tail_supply),
    }


def _num(value: float) -> float | None:
    return round(float(value), 6) if math.isfinite(value) else None


def _config(config: ContentConfig | Mapping[str, Any] | None) -> ContentConfig:
    if config is None:
        return ContentConfig()
    if isinstance(config, ContentConfig):
        return config
    try:
        return ContentConfig(**config)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "config"
        raise ConfigError(f"content config: field '{where}': {err['msg']}") from None


# ------------------------------------------------------------------------------ the whole run
def fill_gaps(
    store: EventStore,
    queue: ReviewQueue,
    model: Any,
    *,
    items: IdMap,
    users: IdMap,
    model_version: str,
    gap_config: GapConfig | None = None,
    config: ContentConfig | None = None,
    generator: TextGenerator | None = None,
) -> tuple[GapReport, list[ReviewedPiece]]:
    """Analyse gaps on the stored events with ``model``, write content for the worst
    segments and submit every piece to ``queue`` (checks run there). What ``POST
    /v1/review/generate`` and ``recloop review generate`` do."""
    from recloop.engine.gaps import analyse_gaps  # scikit-learn: load on use
    from recloop.service.bootstrap import interactions_from_store

    train = interactions_from_store(store, users, items)
    report = analyse_gaps(train, model, gap_config or GapConfig())
    pieces = generate_content(
        report,
        train,
        catalogue_from_store(store, items.ids()),
        generator=generator,
        model=model,
        config=config,
        model_version=model_version,
        blocked=store.blocked_items(time.time()),
    )
    return report, [queue.submit(piece) for piece in pieces]


# ------------------------------------------------------------------------------ the source
class GeneratedSource:
    """Candidates from approved generated collections only (source ``"generated"``).

    A user gets the approved collections made for a segment they belonged to (their
    audience) and those made for ``segment``; their items are interleaved (first item of
    every collection, then the second, ...), highest-priority collection first, with scores
    1, 1/2, 1/3, ... by position. The queue is read at every call, so a piece rejected or
    edited a moment ago is never served. ``exclude`` must hold the items the caller may not
    show (consumed, hidden, unavailable), as the recommendation route's exclusions do.
    """

    source = SOURCE

    def __init__(self, queue: ReviewQueue | EventStore, *, max_pieces: int = 10) -> None:
        self.queue = queue if isinstance(queue, ReviewQueue) else ReviewQueue(queue)
        if not (isinstance(max_pieces, int) and 1 <= max_pieces <= 100):
            raise ConfigError("max_pieces must be 1-100")
        self.max_pieces = max_pieces

    def pieces(self, user_id: str | None, segment: str | None = None) -> list[ReviewedPiece]:
        """The approved collections a user or segment gets, in order."""
        if user_id is None and segment is None:
            return []
        found = self.queue.approved_for(
            segment=segment, user=user_id, kinds=("collection",), limit=self.max_pieces
        )
        return [piece for piece in found if piece.status == "approved"]

    def candidates(
        self,
        user_id: str | None,
        segment: str | None = None,
        n: int = 10,
        exclude: Iterable[str] = (),
    ) -> list[Candidate]:
        """Up to ``n`` items of the user's approved collections, none of ``exclude``."""
        if not isinstance(n, int) or n < 0:
            raise ConfigError(f"n must be an integer >= 0, not {n!r}")
        if n == 0:
            return []
        lists = [piece.piece.items for piece in self.pieces(user_id, segment)]
        seen = set(exclude)
        out: list[Candidate] = []
        depth = max((len(items) for items in lists), default=0)
        for position in range(depth):
            for items in lists:
                if position >= len(items) or items[position] in seen:
                    continue
                seen.add(items[position])
                out.append(Candidate(items[position], 1.0 / (1 + len(out)), SOURCE, True))
                if len(out) == n:
                    return out
        return out


__all__ = [
    "CONCEPT_PROMPT_VERSION",
    "PROMPT_VERSION",
    "ContentConfig",
    "GeneratedPiece",
    "GeneratedSource",
    "catalogue_from_store",
    "collection_template",
    "concept_template",
    "default_generator",
    "fill_gaps",
    "generate_content",
    "resolve_references",
    "split_title",
]
