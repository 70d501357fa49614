"""Automated checks every generated piece passes before a human reviewer sees it.

A :class:`GeneratedPiece` (a curated collection of real items, or a new item concept) goes
through a :class:`QualityGate` of checks; each check returns :class:`Finding` s (check name,
passed, message, the field and character span it concerns), passing ones included, so the
reviewer sees what was checked, not only what failed. The checks:

- :class:`Blocklist`: whole-word, case-insensitive matches of a word list (the packaged
  ``blocklist.txt`` by default, or a file of your own).
- :class:`ToxicityClassifier`: a ``transformers`` text-classification model from a local
  folder (safetensors weights only), flagging a field whose toxic probability reaches a
  threshold.
- :class:`CatalogueConsistency`: every item the piece lists exists, is visible now and fits
  the segment's target; every ``[[id]]`` reference and every quoted title in the text names
  one of the piece's items, so an invented title is flagged.
- :class:`NearDuplicate`: character-shingle Jaccard similarity (and item-set Jaccard) against
  the pending and approved pieces.
- :class:`LengthAndLanguage`: title and description length bounds and a cheap language test
  (the share of English stop words, quoted titles left out).

A check that raises fails the piece (fail closed) with the error as its message.
"""

from __future__ import annotations

import importlib
import os
import re
import threading
import time
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Protocol

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from recloop.errors import ConfigError, RecloopError, one_line
from recloop.store.events import EventStore, ItemRecord

KINDS: tuple[str, ...] = ("collection", "concept")
"""What a generated piece can be: a curated collection of items, or a new item concept."""

TEXT_FIELDS: tuple[str, ...] = ("title", "description")
MAX_ITEMS = 200
_QUOTED = re.compile(r'"([^"\n]{1,200})"|“([^”\n]{1,200})”')
_REFERENCE = re.compile(r"\[\[([^\[\]]{1,128})\]\]")
_ARTICLE_LAST = re.compile(r"^(.*),\s*(the|a|an|le|la|les|l'|il|der|die|das|el|los|las)$")


class ContentError(RecloopError, ValueError):
    """A generated piece, a check or its configuration is not valid (one line, names the field)."""


# ------------------------------------------------------------------------------ the piece
@dataclass(frozen=True, slots=True)
class GeneratedPiece:
    """One piece of generated content aimed at a user segment.

    ``items`` are catalogue item ids (the collection, or a concept's inspirations);
    ``audience`` the user ids of the segment it was made for; ``provenance`` how it was made
    (segment, gap scores, backend, model, prompt version, time, selection, target).
    Every piece is ``generated``; ``content_id`` is chosen at creation and never changes.
    """

    kind: str
    segment: str
    title: str
    description: str
    items: tuple[str, ...] = ()
    audience: tuple[str, ...] = ()
    provenance: Mapping[str, Any] = field(default_factory=dict)
    content_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ContentError(f"kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        for name in ("segment", "title", "description", "content_id"):
            if not isinstance(getattr(self, name), str):
                raise ContentError(f"{name} must be a string")
        if not self.segment.strip() or len(self.segment) > 128:
            raise ContentError("segment must be 1-128 characters")
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", self.content_id):
            raise ContentError("content_id must be 1-64 letters, digits, '_', '.' or '-'")
        for name in ("items", "audience"):
            values = getattr(self, name)
            if isinstance(values, str) or not all(
                isinstance(v, str) and 0 < len(v) <= 128 for v in values
            ):
                raise ContentError(f"{name} must be a list of ids of 1-128 characters")
            object.__setattr__(self, name, tuple(values))
        if len(self.items) > MAX_ITEMS:
            raise ContentError(f"items: at most {MAX_ITEMS} items, not {len(self.items)}")
        if not isinstance(self.provenance, Mapping):
            raise ContentError("provenance must be a mapping")

    @property
    def generated(self) -> bool:
        """Always true: a piece is machine-generated even after a human edited it."""
        return True

    def text(self) -> str:
        """Title and description, the text similarity is measured on."""
        return f"{self.title}\n{self.description}"

    def to_json(self) -> dict[str, Any]:
        """JSON-friendly dict (``audience`` left out: it can be long and names users)."""
        return {
            "content_id": self.content_id,
            "kind": self.kind,
            "segment": self.segment,
            "title": self.title,
            "description": self.description,
            "items": list(self.items),
            "generated": True,
            "provenance": dict(self.provenance),
        }


# ------------------------------------------------------------------------------ findings
@dataclass(frozen=True, slots=True)
class Finding:
    """What one check found: ``span`` is ``[start, end)`` in ``field`` when it points at text."""

    check: str
    passed: bool
    message: str
    field: str | None = None
    span: tuple[int, int] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "passed": self.passed,
            "message": self.message,
            "field": self.field,
            "span": None if self.span is None else [int(self.span[0]), int(self.span[1])],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Finding:
        span = data.get("span")
        return cls(
            check=str(data["check"]),
            passed=bool(data["passed"]),
            message=str(data["message"]),
            field=data.get("field"),
            span=None if span is None else (int(span[0]), int(span[1])),
        )


@dataclass(frozen=True, slots=True)
class QualityReport:
    """The gate's verdict: ``passed`` when no finding failed."""

    passed: bool
    findings: tuple[Finding, ...] = ()

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if not f.passed]

    def failed_checks(self) -> list[str]:
        """Names of the checks with a failing finding, in order, once each."""
        return list(dict.fromkeys(f.check for f in self.failures))

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "findings": [f.to_json() for f in self.findings]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> QualityReport:
        return cls(
            passed=bool(data["passed"]),
            findings=tuple(Finding.from_json(f) for f in data.get("findings", [])),
        )


class Check(Protocol):
    """One automated check: findings about a piece (at least one, passing or not)."""

    name: str

    def __call__(self, piece: GeneratedPiece) -> list[Finding]: ...


class QualityGate:
    """Runs every check on a piece; the piece passes when no finding failed."""

    def __init__(self, checks: Sequence[Check]) -> None:
        self.checks = list(checks)

    def run(self, piece: GeneratedPiece) -> QualityReport:
        findings: list[Finding] = []
        for check in self.checks:
            name = str(getattr(check, "name", type(check).__name__))
            try:
                found = list(check(piece))
            except Exception as exc:  # a broken check must not let a piece through
                text = one_line(exc)
                found = [Finding(name, False, f"check failed to run: {text}")]
            findings.extend(found or [Finding(name, True, "nothing found")])
        return QualityReport(all(f.passed for f in findings), tuple(findings))


# ------------------------------------------------------------------------------ blocklist
DEFAULT_BLOCKLIST = "blocklist.txt"


def read_word_list(path: str | os.PathLike[str] | None = None) -> list[str]:
    """Entries of a word-list file (the packaged default when ``path`` is None)."""
    try:
        if path is None:
            text = resources.files("recloop.generative").joinpath(DEFAULT_BLOCKLIST).read_text()
        else:
            text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ContentError(f"blocklist {path}: cannot read it ({type(exc).__name__})") from None
    words = []
    for line in text.splitlines():
        entry = line.split("#", 1)[0].strip()
        if entry:
            words.append(entry)
    if not words:
        raise ContentError(f"blocklist {path or DEFAULT_BLOCKLIST}: holds no entries")
    return words


class Blocklist:
    """Flags whole-word, case-insensitive matches of a word list; phrases may span whitespace.

    Text is matched as it displays: on an NFKC-normalised copy (fullwidth ``ｓｈｉｔ`` and
    mathematical ``𝐬𝐡𝐢𝐭`` read as ``shit``) with the invisible format characters (Unicode
    category Cf: zero-width space, soft hyphen, word joiner, ...) read once as nothing
    (``sh\u00adit``) and once as a word break (``bull\u2060shit``). Spans point into the text
    as written.
    """

    name = "blocklist"

    def __init__(
        self, path: str | os.PathLike[str] | None = None, *, words: Iterable[str] | None = None
    ) -> None:
        entries = list(words) if words is not None else read_word_list(path)
        entries = [" ".join(str(w).split()) for w in entries if str(w).strip()]
        if not entries:
            raise ContentError("blocklist: holds no entries")
        self.words = tuple(dict.fromkeys(entries))
        forms = {" ".join(displayed(w, format_as="")[0].split()) for w in self.words}
        alternatives = sorted(forms - {""}, key=len, reverse=True)
        body = "|".join(r"\s+".join(re.escape(part) for part in w.split()) for w in alternatives)
        self._pattern = re.compile(rf"(?<!\w)(?:{body})(?!\w)", re.IGNORECASE)

    def __call__(self, piece: GeneratedPiece) -> list[Finding]:
        findings = []
        for name in TEXT_FIELDS:
            text = getattr(piece, name)
            spans: set[tuple[int, int]] = set()
            for format_as in ("", " "):
                shown, starts, ends = displayed(text, format_as=format_as)
                for match in self._pattern.finditer(shown):
                    spans.add((starts[match.start()], ends[match.end() - 1]))
            for start, end in sorted(spans):
                if any(a <= start and end <= b and (a, b) != (start, end) for a, b in spans):
                    continue  # "shit" inside a matched "bull\u2060shit"
                word = displayed(text[start:end], format_as="")[0]
                masked = word[0] + "*" * (len(word) - 1)
                findings.append(
                    Finding(self.name, False, f"blocked term {masked!r}", name, (start, end))
                )
        return findings or [Finding(self.name, True, f"none of {len(self.words)} terms found")]


def displayed(text: str, *, format_as: str = "") -> tuple[str, list[int], list[int]]:
    """``text`` as it displays, for matching: NFKC-normalised, each format character (Cf)
    replaced by ``format_as``; with, per character of the result, the ``[start, end)`` of the
    characters of ``text`` it comes from."""
    out: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    i = 0
    while i < len(text):
        j = i + 1  # a character and the combining marks after it normalise together
        while j < len(text) and unicodedata.combining(text[j]):
            j += 1
        if unicodedata.category(text[i]) == "Cf":
            piece, j = format_as, i + 1
        else:
            piece = unicodedata.normalize("NFKC", text[i:j])
            piece = "".join(ch for ch in piece if unicodedata.category(ch) != "Cf")
        out.append(piece)
        starts.extend([i] * len(piece))
        ends.extend([j] * len(piece))
        i = j
    return "".join(out), starts, ends


# ------------------------------------------------------------------------------ toxicity
_NEUTRAL_LABELS = frozenset(
    {"neutral", "non-toxic", "non_toxic", "nontoxic", "not_toxic", "not toxic", "ok", "clean"}
    | {"safe", "label_0", "normal", "none", "non-hate", "nothate", "not-hate"}
)


class ToxicityClassifier:
    """A local ``transformers`` sequence classifier scoring the title and the description.

    ``path`` is a folder written by ``save_pretrained`` (config, tokenizer, safetensors
    weights; pickled ``.bin`` weights are refused). A field fails when its toxic probability
    reaches ``threshold``: with softmax heads, the summed probability of the toxic labels;
    with multi-label (sigmoid) heads, the highest toxic label's. Toxic labels are
    ``toxic_labels`` when given, else every label not named like "neutral"/"non-toxic"/"LABEL_0".
    """

    name = "toxicity"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        threshold: float = 0.5,
        toxic_labels: Sequence[str] | None = None,
        max_length: int = 256,
    ) -> None:
        if not (isinstance(threshold, int | float) and 0.0 < threshold <= 1.0):
            raise ContentError(f"toxicity threshold must be in (0, 1], not {threshold!r}")
        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            raise ContentError(f"toxicity model {folder}: no config.json there (a local folder)")
        try:
            transformers: Any = importlib.import_module("transformers")
        except ImportError:
            raise ContentError(
                "toxicity model: the transformers package is missing (pip install recloop[text])"
            ) from None
        try:
            self._tokenizer = transformers.AutoTokenizer.from_pretrained(
                str(folder), local_files_only=True
            )
            self._model = transformers.AutoModelForSequenceClassification.from_pretrained(
                str(folder), local_files_only=True, use_safetensors=True
            ).eval()
        except (OSError, ValueError, KeyError) as exc:
            text = " ".join(str(exc).split())[:300]
            raise ContentError(f"toxicity model {folder}: cannot load it ({text})") from None
        config = self._model.config
        labels = {int(i): str(name) for i, name in config.id2label.items()}
        self.multi_label = (
            config.problem_type == "multi_label_classification" or config.num_labels == 1
        )
        if toxic_labels is not None:
            wanted = {t.casefold() for t in toxic_labels}
            toxic = [i for i, name in labels.items() if name.casefold() in wanted]
        else:
            toxic = [i for i, name in labels.items() if name.casefold() not in _NEUTRAL_LABELS]
        if not toxic:
            known = ", ".join(labels[i] for i in sorted(labels))
            raise ContentError(f"toxicity model {folder}: no toxic label among {known}")
        if not self.multi_label and len(toxic) == len(labels):
            raise ContentError(
                f"toxicity model {folder}: every label counts as toxic; set toxic_labels"
            )
        self.toxic = sorted(toxic)
        self.labels = labels
        self.threshold = float(threshold)
        self.max_length = int(max_length)
        self.path = folder
        self._lock = threading.Lock()

    def scores(self, texts: Sequence[str]) -> list[float]:
        """The toxic probability of each text."""
        import torch

        if not texts:
            return []
        with self._lock, torch.no_grad():
            batch = self._tokenizer(
                list(texts),
                truncation=True,
                max_length=self.max_length,
                padding=True,
                return_tensors="pt",
            )
            logits = self._model(**batch).logits.float()
            if self.multi_label:
                probs = torch.sigmoid(logits)[:, self.toxic].max(dim=1).values
            else:
                probs = torch.softmax(logits, dim=1)[:, self.toxic].sum(dim=1)
        return [float(p) for p in probs]

    def __call__(self, piece: GeneratedPiece) -> list[Finding]:
        texts = [getattr(piece, name) for name in TEXT_FIELDS]
        findings = []
        for name, text, score in zip(TEXT_FIELDS, texts, self.scores(texts), strict=True):
            failed = score >= self.threshold
            verdict = "≥" if failed else "<"
            findings.append(
                Finding(
                    self.name,
                    not failed,
                    f"toxicity {score:.2f} {verdict} {self.threshold:.2f}",
                    name,
                    (0, len(text)) if failed else None,
                )
            )
        return findings


# ------------------------------------------------------------------------------ catalogue
ItemLookup = Callable[[Sequence[str]], Mapping[str, ItemRecord]]
"""Catalogue records of the given item ids (unknown ids left out)."""


def store_items(store: EventStore) -> ItemLookup:
    """An :data:`ItemLookup` reading the store's ``items`` table (1,000 ids per query)."""
    import json

    from recloop.store.schema import items as items_table

    def lookup(item_ids: Sequence[str]) -> dict[str, ItemRecord]:
        ids = sorted(set(item_ids))
        found: dict[str, ItemRecord] = {}
        with store.transaction(write=False) as conn:
            for start in range(0, len(ids), 1000):
                query = sa.select(items_table).where(
                    items_table.c.item_id.in_(ids[start : start + 1000])
                )
                for row in conn.execute(query):
                    values = row._asdict()
                    values["attributes"] = json.loads(values["attributes"])
                    found[values["item_id"]] = ItemRecord(**values)
        return found

    return lookup


def visible(item: ItemRecord, now: float) -> bool:
    """Whether the item may be recommended at ``now``."""
    if item.hidden:
        return False
    if item.available_from is not None and now < item.available_from:
        return False
    return not (item.available_until is not None and now > item.available_until)


def title_keys(title: str) -> set[str]:
    """Forms of a title that count as naming it: case, punctuation, a trailing year or
    parenthetical and a trailing article ("Ruling Class, The") do not matter."""
    base = unicodedata.normalize("NFKC", title).casefold().strip()
    forms = {base, re.sub(r"\s*\([^()]*\)\s*$", "", base)}
    keys = set()
    for form in forms:
        form = re.sub(r"\s*\(\d{4}\)\s*$", "", form)
        moved = _ARTICLE_LAST.match(form)
        variants = {form}
        if moved:
            variants.add(f"{moved.group(2)} {moved.group(1)}")
        for variant in variants:
            key = " ".join(re.sub(r"[\W_]+", " ", variant).split())
            if key:
                keys.add(key)
    return keys


def quoted_spans(text: str) -> list[tuple[str, tuple[int, int]]]:
    """Double-quoted phrases (straight or curly quotes) and their spans, quotes included."""
    return [(m.group(1) or m.group(2) or "", m.span()) for m in _QUOTED.finditer(text)]


class CatalogueConsistency:
    """Every item the piece lists exists, is visible and fits the segment's target, and the
    text names only those items: ``[[id]]`` references and quoted titles are checked.

    The target is ``provenance["target"]``: ``{"items": [...], "<attribute>": [...]}``; an item
    fits when it is one of the target items or shares a value of ``attribute`` (genres by
    default) with it. A piece without a target is not checked for fit (said in a finding).
    """

    name = "catalogue"

    def __init__(
        self,
        items: ItemLookup | EventStore | Mapping[str, ItemRecord],
        *,
        attribute: str = "genres",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(items, EventStore):
            self._lookup = store_items(items)
        elif isinstance(items, Mapping):
            table = dict(items)
            self._lookup = lambda ids: {i: table[i] for i in ids if i in table}
        else:
            self._lookup = items
        self.attribute = attribute
        self._clock = clock

    def __call__(self, piece: GeneratedPiece) -> list[Finding]:
        name = self.name
        findings: list[Finding] = []
        records = dict(self._lookup(list(piece.items))) if piece.items else {}
        now = self._clock()
        if piece.kind == "collection" and not piece.items:
            findings.append(Finding(name, False, "a collection must list at least one item"))
        repeated = sorted({i for i in piece.items if piece.items.count(i) > 1})
        if repeated:
            findings.append(Finding(name, False, f"items listed twice: {', '.join(repeated)}"))
        target = piece.provenance.get("target")
        target_items: set[str] = set()
        target_values: set[str] = set()
        if isinstance(target, Mapping):
            target_items = {str(i) for i in target.get("items", [])}
            target_values = {str(v) for v in target.get(self.attribute, [])}
        for item_id in dict.fromkeys(piece.items):
            record = records.get(item_id)
            if record is None:
                findings.append(Finding(name, False, f"item {item_id!r} is not in the catalogue"))
            elif not visible(record, now):
                findings.append(
                    Finding(name, False, f"item {item_id!r} is hidden or unavailable now")
                )
            elif isinstance(target, Mapping) and item_id not in target_items:
                values = _attribute_values(record, self.attribute)
                if not values & target_values:
                    wanted = ", ".join(sorted(target_values)) or "none"
                    findings.append(
                        Finding(
                            name,
                            False,
                            f"item {item_id!r} does not fit the segment's target "
                            f"({self.attribute}: {wanted})",
                            "items",
                        )
                    )
        findings.extend(self._text_findings(piece, records))
        if not isinstance(target, Mapping):
            findings.append(Finding(name, True, "no segment target recorded: fit not checked"))
        if all(f.passed for f in findings):
            findings.append(Finding(name, True, f"{len(records)} items exist, are visible and fit"))
        return findings

    def _text_findings(
        self, piece: GeneratedPiece, records: Mapping[str, ItemRecord]
    ) -> list[Finding]:
        known: dict[str, str] = {}
        for item_id, record in records.items():
            for key in title_keys(record.title or item_id):
                known.setdefault(key, item_id)
        own = title_keys(piece.title) if piece.kind == "concept" else set()
        findings = []
        for field_name in TEXT_FIELDS:
            text = getattr(piece, field_name)
            for match in _REFERENCE.finditer(text):
                ref = match.group(1).strip()
                if ref not in piece.items:
                    findings.append(
                        Finding(
                            self.name,
                            False,
                            f"references [[{ref}]], which is not one of the piece's items",
                            field_name,
                            match.span(),
                        )
                    )
            for phrase, span in quoted_spans(text):
                keys = title_keys(phrase)
                if keys & own or any(k in known for k in keys):
                    continue
                findings.append(
                    Finding(
                        self.name,
                        False,
                        f"quoted title {phrase!r} names none of the piece's items "
                        "(invented or not in the collection)",
                        field_name,
                        span,
                    )
                )
        return findings


def _attribute_values(record: ItemRecord, attribute: str) -> set[str]:
    value = record.attributes.get(attribute)
    if value is None:
        return set()
    if isinstance(value, list | tuple | set):
        return {str(v) for v in value}
    return {str(value)}


# ------------------------------------------------------------------------------ near duplicates
@dataclass(frozen=True, slots=True)
class CorpusEntry:
    """A stored piece that new pieces must not repeat (``kind`` None: not known)."""

    content_id: str
    text: str
    items: tuple[str, ...] = ()
    status: str = "pending"
    kind: str | None = None


Corpus = Callable[[], Iterable[CorpusEntry]]


def shingles(text: str, n: int = 5) -> frozenset[str]:
    """Character ``n``-grams of the text folded to lower-case words (punctuation dropped)."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    folded = " ".join(re.sub(r"[\W_]+", " ", folded).split())
    if len(folded) <= n:
        return frozenset([folded]) if folded else frozenset()
    return frozenset(folded[i : i + n] for i in range(len(folded) - n + 1))


def jaccard(a: Iterable[str], b: Iterable[str]) -> float:
    """|A ∩ B| / |A ∪ B| (0 for two empty sets)."""
    sa_, sb = set(a), set(b)
    union = len(sa_ | sb)
    return len(sa_ & sb) / union if union else 0.0


class NearDuplicate:
    """Flags a piece whose text (character shingles) or item set is too close to a stored one.

    Exact Jaccard against every entry of ``corpus`` (the queue's pending and approved pieces):
    cheap for the hundreds of pieces a review queue holds; a piece is never compared with
    itself (same ``content_id``). Item sets are compared only between pieces of one kind (a
    concept's inspirations are not a collection), and never with the piece's ``companion``
    (``provenance["companion"]``: the collection a concept was made alongside, whose first
    items it cites, or that concept); their texts still are.
    """

    name = "near_duplicate"

    def __init__(
        self,
        corpus: Corpus | Iterable[CorpusEntry],
        *,
        threshold: float = 0.8,
        item_threshold: float = 0.8,
        shingle: int = 5,
    ) -> None:
        for label, value in (("threshold", threshold), ("item_threshold", item_threshold)):
            if not (isinstance(value, int | float) and 0.0 < value <= 1.0):
                raise ContentError(f"near-duplicate {label} must be in (0, 1], not {value!r}")
        if not (isinstance(shingle, int) and 1 <= shingle <= 20):
            raise ContentError(f"near-duplicate shingle must be 1-20 characters, not {shingle!r}")
        if callable(corpus):
            self._corpus: Corpus = corpus
        else:
            fixed = list(corpus)
            self._corpus = lambda: fixed
        self.threshold = float(threshold)
        self.item_threshold = float(item_threshold)
        self.shingle = shingle

    def __call__(self, piece: GeneratedPiece) -> list[Finding]:
        mine = shingles(piece.text(), self.shingle)
        companion = piece.provenance.get("companion")
        findings = []
        compared = 0
        for entry in self._corpus():
            if entry.content_id == piece.content_id:
                continue
            compared += 1
            text_sim = jaccard(mine, shingles(entry.text, self.shingle))
            same_kind = entry.kind is None or entry.kind == piece.kind
            item_sim = (
                jaccard(piece.items, entry.items)
                if piece.items and entry.items and same_kind and entry.content_id != companion
                else 0.0
            )
            if text_sim >= self.threshold:
                findings.append(
                    Finding(
                        self.name,
                        False,
                        f"text {text_sim:.0%} similar to {entry.status} piece {entry.content_id}",
                    )
                )
            elif item_sim >= self.item_threshold:
                findings.append(
                    Finding(
                        self.name,
                        False,
                        f"items {item_sim:.0%} the same as {entry.status} piece {entry.content_id}",
                        "items",
                    )
                )
        return findings or [Finding(self.name, True, f"unlike the {compared} stored pieces")]


# ------------------------------------------------------------------------------ length, language
_STOPWORDS_EN = """a about above after again against all also am an and any are as at be
    because been
    before being below between both but by can could did do does doing down during each even
    few for from further had has have having he her here hers him his how i if in into is it
    its itself just like many may me more most much must my no nor not now of off often on
    once only or other our ours out over own same she should so some such than that the
    their theirs them then there these they this those through to too under until up very
    was we were what when where which while who whom why will with within without would you
    your yours"""
ENGLISH_STOPWORDS = frozenset(_STOPWORDS_EN.split())


class LengthAndLanguage:
    """Title and description length bounds (characters, after trimming) and a language test.

    The language test is the share of stop words among the description's words, quoted titles
    and ``[[id]]`` references left out: English prose holds 30-50 % stop words, a list of
    names or another language far fewer. Descriptions under ``min_words`` words are not
    judged; ``language=None`` turns the test off; other languages bring their own ``stopwords``.
    """

    name = "length_language"

    def __init__(
        self,
        *,
        title_chars: tuple[int, int] = (3, 120),
        description_chars: tuple[int, int] = (40, 1500),
        language: str | None = "en",
        stopwords: Iterable[str] | None = None,
        min_stopword_ratio: float = 0.2,
        min_words: int = 8,
    ) -> None:
        for label, (lo, hi) in (("title", title_chars), ("description", description_chars)):
            if not (0 <= lo <= hi):
                raise ContentError(f"{label}_chars must be (min, max) with 0 <= min <= max")
        if language is not None and stopwords is None and language != "en":
            raise ContentError(f"language {language!r}: give its stopwords (only 'en' is built in)")
        if not 0.0 <= min_stopword_ratio <= 1.0:
            raise ContentError("min_stopword_ratio must be in [0, 1]")
        self.bounds = {"title": title_chars, "description": description_chars}
        self.language = language
        words = ENGLISH_STOPWORDS if stopwords is None else (w.casefold() for w in stopwords)
        self.stopwords = frozenset(words)
        self.min_stopword_ratio = float(min_stopword_ratio)
        self.min_words = int(min_words)

    def __call__(self, piece: GeneratedPiece) -> list[Finding]:
        findings = []
        for name, (lo, hi) in self.bounds.items():
            text = getattr(piece, name)
            size = len(text.strip())
            ok = lo <= size <= hi
            findings.append(
                Finding(
                    self.name,
                    ok,
                    f"{name} has {size} characters" + ("" if ok else f" (allowed {lo}-{hi})"),
                    name,
                    None if ok else (0, len(text)),
                )
            )
        if self.language is not None:
            findings.append(self._language(piece.description))
        return findings

    def stopword_ratio(self, text: str) -> tuple[float, int]:
        """(share of stop words, number of words) of the prose in ``text``."""
        prose = _REFERENCE.sub(" ", _QUOTED.sub(" ", text))
        words = [w.casefold() for w in re.findall(r"[^\W\d_]+(?:'[^\W\d_]+)?", prose)]
        if not words:
            return 0.0, 0
        return sum(w in self.stopwords for w in words) / len(words), len(words)

    def _language(self, text: str) -> Finding:
        ratio, n_words = self.stopword_ratio(text)
        if n_words < self.min_words:
            return Finding(self.name, True, f"{n_words} words: too short to judge the language")
        ok = ratio >= self.min_stopword_ratio
        message = f"{ratio:.0%} {self.language} stop words"
        if not ok:
            message += f" (min {self.min_stopword_ratio:.0%}): not {self.language} prose"
        return Finding(self.name, ok, message, "description", None if ok else (0, len(text)))


# ------------------------------------------------------------------------------ configuration
class QualityConfig(BaseModel):
    """Which checks run and their thresholds. Frozen; unknown fields are an error.

    ``from_env`` reads ``RECLOOP_BLOCKLIST`` (a word-list path; ``none`` turns the blocklist
    off), ``RECLOOP_TOXICITY_MODEL`` (a local model folder) and ``RECLOOP_TOXICITY_THRESHOLD``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    blocklist: Path | None = Field(default=None, description="word list; None: the packaged one")
    use_blocklist: bool = True
    toxicity_model: Path | None = Field(default=None, description="local classifier folder")
    toxicity_threshold: float = Field(default=0.5, gt=0.0, le=1.0)
    near_duplicate_threshold: float = Field(default=0.8, gt=0.0, le=1.0)
    item_overlap_threshold: float = Field(default=0.8, gt=0.0, le=1.0)
    title_chars: tuple[int, int] = (3, 120)
    description_chars: tuple[int, int] = (40, 1500)
    language: Literal["en"] | None = "en"
    min_stopword_ratio: float = Field(default=0.2, ge=0.0, le=1.0)
    attribute: str = Field(default="genres", description="item attribute a target matches on")

    @classmethod
    def from_env(cls, **overrides: Any) -> QualityConfig:
        env: dict[str, Any] = {}
        blocklist = os.environ.get("RECLOOP_BLOCKLIST", "").strip()
        if blocklist.lower() == "none":
            env["use_blocklist"] = False
        elif blocklist:
            env["blocklist"] = blocklist
        if model := os.environ.get("RECLOOP_TOXICITY_MODEL", "").strip():
            env["toxicity_model"] = model
        if threshold := os.environ.get("RECLOOP_TOXICITY_THRESHOLD", "").strip():
            env["toxicity_threshold"] = threshold
        try:
            return cls(**{**env, **overrides})
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "config"
            raise ConfigError(f"quality config: field '{where}': {err['msg']}") from None


def build_gate(
    config: QualityConfig,
    *,
    items: ItemLookup | EventStore | Mapping[str, ItemRecord],
    corpus: Corpus | Iterable[CorpusEntry] = (),
    toxicity: ToxicityClassifier | None = None,
) -> QualityGate:
    """The gate ``config`` describes: blocklist, toxicity (when a model is configured or
    given), catalogue consistency, near duplicates, length and language, in that order."""
    checks: list[Check] = []
    if config.use_blocklist:
        checks.append(Blocklist(config.blocklist))
    if toxicity is None and config.toxicity_model is not None:
        toxicity = ToxicityClassifier(config.toxicity_model, threshold=config.toxicity_threshold)
    if toxicity is not None:
        checks.append(toxicity)
    checks.append(CatalogueConsistency(items, attribute=config.attribute))
    checks.append(
        NearDuplicate(
            corpus,
            threshold=config.near_duplicate_threshold,
            item_threshold=config.item_overlap_threshold,
        )
    )
    checks.append(
        LengthAndLanguage(
            title_chars=config.title_chars,
            description_chars=config.description_chars,
            language=config.language,
            min_stopword_ratio=config.min_stopword_ratio,
        )
    )
    return QualityGate(checks)


__all__ = [
    "KINDS",
    "Blocklist",
    "CatalogueConsistency",
    "Check",
    "ContentError",
    "CorpusEntry",
    "Finding",
    "GeneratedPiece",
    "ItemLookup",
    "LengthAndLanguage",
    "NearDuplicate",
    "QualityConfig",
    "QualityGate",
    "QualityReport",
    "ToxicityClassifier",
    "build_gate",
    "jaccard",
    "read_word_list",
    "shingles",
    "store_items",
    "title_keys",
    "visible",
]
