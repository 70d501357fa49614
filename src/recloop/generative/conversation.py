"""Conversational recommendation: a request in words becomes constraints, candidates and an answer.

A message ("a 90s comedy like Toy Story but darker") is parsed by :func:`parse_request`
against the catalogue's vocabulary into hard :class:`Constraints` (genres, excluded genres, a
year range, reference items for "like X") and a free-text query (the mood words left over).
:class:`ConversationalRecommender` answers it:

1. the constraints filter the catalogue (shown, consumed and reference items are excluded);
2. candidates come from dense retrieval over item text (:class:`~recloop.generative.retrieval.
   DenseIndex`, the query text mixed with the reference items' vectors), the user's
   collaborative profile (a recommender's scores for their history) and the reference items'
   neighbours, fused by reciprocal rank (or normalised scores) with configurable weights;
3. an optional language model re-ranks the top-N by the PMI of each title given the request
   (one batched :meth:`TextGenerator.score` call; skipped with a note when the backend cannot
   score);
4. the answer text comes from the generator (the "conversation" template by default), with the
   request as an untrusted block, and is grounded: item references are kept only for the shown
   candidates (:func:`~recloop.generative.safety.constrain_ids`), and a sentence naming
   anything that looks like a title outside them (a catalogue title not shown, an unknown
   capitalised name, a quoted span, a ``(year)`` after words that are no shown title; read by
   the :class:`~recloop.generative.faithfulness.FaithfulnessChecker`) is dropped, so the
   answer names only real catalogue items.

A :class:`Conversation` keeps the turns and the accumulated constraints: a follow-up ("something
older", "no, funnier") refines the previous turn, and items already shown are not repeated.
"""

from __future__ import annotations

import difflib
import re
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from recloop.data.types import Catalog, IdMap, Queries
from recloop.errors import ConfigError, RecloopError
from recloop.generative.evidence import ItemFacts
from recloop.generative.faithfulness import FaithfulnessChecker, Vocabulary
from recloop.generative.llm import (
    GenerationError,
    GenerationRequest,
    Message,
    TemplateGenerator,
    TextGenerator,
    check_consent,
    register_template,
)
from recloop.generative.retrieval import DenseIndex
from recloop.generative.safety import SYSTEM_GUARD, constrain_ids, sanitize, untrusted

TASK = "conversation"
MAX_MESSAGE_CHARS = 500
TITLE_CHARS = 120

# ---------------------------------------------------------------------------- vocabulary
# Words people use for a genre, keyed by the genre's normalised name; a synonym is used only
# when the catalogue has that genre. One phrase may name two genres ("romcom").
GENRE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "comedy": (
        "comedy", "comedies", "funny", "funnier", "funniest", "hilarious", "humorous",
        "humour", "humor", "comic", "comical", "lighthearted", "light hearted", "romcom",
        "rom com", "laugh", "laughs",
    ),
    "horror": (
        "horror", "horrors", "scary", "scarier", "scariest", "frightening", "terrifying",
        "spooky", "creepy", "slasher",
    ),
    "romance": (
        "romance", "romances", "romantic", "love story", "love stories", "romcom", "rom com",
    ),
    "action": ("action", "action packed", "explosive"),
    "thriller": ("thriller", "thrillers", "suspense", "suspenseful"),
    "sci fi": ("sci fi", "scifi", "science fiction", "futuristic"),
    "drama": ("drama", "dramas", "dramatic"),
    "childrens": (
        "childrens", "children", "kids", "kid", "for kids", "family", "family friendly",
        "kid friendly",
    ),
    "animation": ("animation", "animated", "cartoon", "cartoons"),
    "documentary": ("documentary", "documentaries", "nonfiction", "non fiction"),
    "musical": ("musical", "musicals"),
    "western": ("western", "westerns", "cowboy", "cowboys"),
    "war": ("war", "wartime"),
    "crime": ("crime", "gangster", "gangsters", "heist", "mafia", "mob"),
    "mystery": ("mystery", "mysteries", "whodunit", "detective"),
    "fantasy": ("fantasy", "fantasies", "magical", "fairy tale", "fairytale"),
    "film noir": ("film noir", "noir"),
    "adventure": ("adventure", "adventures", "adventurous"),
}  # fmt: skip

_DECADE_WORDS = {
    "twenties": 1920, "thirties": 1930, "forties": 1940, "fifties": 1950, "sixties": 1960,
    "seventies": 1970, "eighties": 1980, "nineties": 1990, "noughties": 2000,
}  # fmt: skip
_NEGATORS = {
    "not", "no", "nothing", "without", "dont", "doesnt", "isnt", "arent", "never", "avoid",
    "except", "excluding", "exclude", "non", "neither", "nor", "hate", "skip", "minus", "nope",
    "less",
}  # fmt: skip
_NEGATION_FILLERS = {
    "a", "an", "the", "too", "very", "so", "really", "any", "more", "overly", "that", "of",
    "or", "nor", "want", "like", "need", "movie", "movies", "film", "films", "kind", "type",
    "sort", "particularly", "anything", "something", "be", "is", "are", "it", "i", "please",
    "stuff", "genre",
}  # fmt: skip
_SIMILAR_TRIGGERS = (
    ("similar", "to"), ("in", "the", "vein", "of"), ("in", "the", "style", "of"),
    ("along", "the", "lines", "of"), ("reminiscent", "of"), ("reminds", "me", "of"),
    ("comparable", "to"), ("akin", "to"), ("same", "vibe", "as"), ("such", "as"),
    ("resembling",), ("loved",), ("enjoyed",), ("liked",), ("fan", "of"), ("fans", "of"),
    ("like",),
)  # fmt: skip
_NOT_SIMILAR_BEFORE_LIKE = {
    "i", "we", "you", "they", "would", "id", "wed", "youd", "really", "do", "dont", "not",
    "might", "feel", "feels", "look", "looks", "sound", "sounds", "seem", "seems", "also",
    "kids", "people", "who", "would've",
}  # fmt: skip
_RESET = ("start over", "new search", "forget that", "forget it", "never mind", "nevermind",
          "from scratch", "something else entirely")  # fmt: skip
_FOLLOW_UP_START = {
    "no", "nope", "nah", "not", "but", "and", "also", "actually", "instead", "rather", "maybe",
    "hmm", "ok", "okay", "only", "just", "same", "more", "less", "even", "too", "perhaps",
    "then", "now", "yes", "yeah", "what", "how", "again",
}  # fmt: skip
_REPLACE_CUES = {"instead", "rather", "actually", "no", "nope", "nah", "what", "how"}
_OLDER = {"older", "earlier"}
_NEWER = {"newer", "later", "recent", "modern", "latest"}
_COMPARATIVE = re.compile(r"^(?:\w+ier|older|newer|darker|lighter|later|earlier|longer|shorter)$")
_STOPWORDS = {
    "a", "an", "the", "i", "im", "me", "my", "we", "you", "your", "want", "wanna", "would",
    "like", "love", "id", "please", "show", "give", "find", "recommend", "suggest", "get",
    "some", "something", "anything", "any", "movie", "movies", "film", "films", "flick",
    "flicks", "one", "ones", "watch", "to", "for", "of", "in", "on", "from", "with", "that",
    "is", "are", "be", "was", "it", "its", "and", "or", "but", "so", "very", "really", "more",
    "less", "too", "just", "maybe", "no", "not", "nope", "ok", "okay", "also", "instead",
    "rather", "than", "what", "how", "about", "good", "great", "nice", "can", "could", "mood",
    "looking", "need", "tonight", "now", "then", "hmm", "yes", "yeah", "kind", "sort", "type",
    "made", "released", "year", "years", "era", "decade", "same", "even", "again", "there",
    "this", "those", "these", "which", "pick", "picks", "let", "lets", "us", "do", "dont",
    "perhaps", "thanks", "thank", "other", "else", "different", "new", "all", "by", "as",
    "at", "if", "similar", "vibe", "vein", "style", "lines", "such", "fan", "fans", "removed",
}  # fmt: skip
_ARTICLES = ("the", "a", "an", "les", "la", "le", "il", "das", "die", "el", "l")


def _normalise(text: str) -> str:
    """Lowercase words and separate punctuation: what both titles and messages are matched as."""
    text = text.lower().replace("&", " and ")
    text = re.sub(r"[’`´]", "'", text)
    text = re.sub(r"(?<=\w)'(?=\w)", "", text)  # children's -> childrens, 90's -> 90s
    text = re.sub(r"(?<![\w])'(?=\d0s\b)", "", text)  # '90s -> 90s
    text = re.sub(r"(?<=[a-z])-(?=[a-z])", " ", text)  # sci-fi -> sci fi
    text = re.sub(r"[–—]", "-", text)
    return " ".join(re.findall(r"[a-z0-9]+|[^\sa-z0-9']", text))


_TRAILING_ARTICLE = re.compile(r"^(.*),\s*(" + "|".join(_ARTICLES) + r")$", re.IGNORECASE)


def _title_forms(title: str) -> list[str]:
    """Normalised forms of a catalogue title a user might type."""
    forms: list[str] = []
    raw = title.strip()
    alternatives = [raw]
    inside = re.findall(r"\(([^()]*)\)", raw)
    base = re.sub(r"\s*\([^()]*\)", "", raw).strip()
    if base and base != raw:
        alternatives = [base, *inside]
    for alt in alternatives:
        match = _TRAILING_ARTICLE.match(alt.strip())
        article_first = f"{match.group(2)} {match.group(1)}" if match else alt
        for form in (article_first, match.group(1) if match else None):
            if not form:
                continue
            norm = " ".join(re.findall(r"[a-z0-9]+", _normalise(form)))
            if norm and norm not in forms:
                forms.append(norm)
        words = forms[-1].split() if forms else []
        if words and words[0] in _ARTICLES and len(words) > 1:
            bare = " ".join(words[1:])
            if bare not in forms:
                forms.append(bare)
    return forms


def _norm_genre(name: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", _normalise(name)))


class CatalogueVocabulary:
    """What the parser matches against: the catalogue's genres, titles and years.

    ``popularity`` (one weight per item, optional) breaks ties between items with the same
    title; without it the first item wins.
    """

    def __init__(
        self,
        catalog: Catalog,
        *,
        popularity: np.ndarray | None = None,
        genre_field: str = "genres",
        year_field: str = "year",
    ) -> None:
        self.ids = catalog.items.ids()
        self.titles = list(catalog.title)
        n = len(self.ids)
        raw_genres = catalog.attributes.get(genre_field, [None] * n)
        raw_years = catalog.attributes.get(year_field, [None] * n)
        self.item_genres: list[frozenset[str]] = [_genre_set(g) for g in raw_genres]
        self.years = np.array([_year(y) for y in raw_years], dtype=np.float64)
        self.genres: tuple[str, ...] = tuple(sorted(set().union(*self.item_genres)))
        self.popularity = (
            np.asarray(popularity, dtype=np.float64) if popularity is not None else np.zeros(n)
        )
        if len(self.popularity) != n:
            raise ConfigError(f"popularity has {len(self.popularity)} values for {n} items")
        # genre phrases
        self.phrases: dict[str, tuple[str, ...]] = {}
        by_norm = {_norm_genre(g): g for g in self.genres}
        for norm, genre in by_norm.items():
            for phrase in (norm, norm + "s"):
                self._add_phrase(phrase, genre)
        for key, synonyms in GENRE_SYNONYMS.items():
            named = by_norm.get(key)
            if named is None:
                continue
            for phrase in synonyms:
                self._add_phrase(phrase, named)
        ordered = sorted(self.phrases, key=lambda p: (-len(p), p))
        self._genre_pattern = (
            re.compile(r"(?<!\S)(" + "|".join(re.escape(p) for p in ordered) + r")(?!\S)")
            if ordered
            else None
        )
        # titles
        self.title_rows: dict[str, list[int]] = {}
        self.token_forms: dict[str, set[str]] = {}
        for row, title in enumerate(self.titles):
            for form in _title_forms(title):
                self.title_rows.setdefault(form, []).append(row)
                for token in form.split():
                    if len(token) >= 3 and token not in _STOPWORDS:
                        self.token_forms.setdefault(token, set()).add(form)
        finite = self.years[np.isfinite(self.years)]
        self.year_range = (int(finite.min()), int(finite.max())) if len(finite) else None
        self.row = {item: row for row, item in enumerate(self.ids)}

    def _add_phrase(self, phrase: str, genre: str) -> None:
        current = self.phrases.get(phrase, ())
        if genre not in current:
            self.phrases[phrase] = (*current, genre)

    def genre_matches(self, normalised: str) -> Iterable[re.Match[str]]:
        if self._genre_pattern is None:
            return []
        return self._genre_pattern.finditer(normalised)

    def best_row(self, rows: Sequence[int]) -> int:
        """The most popular of items sharing a title (the first on a tie)."""
        return max(rows, key=lambda r: (self.popularity[r], -r))

    def display(self, row: int) -> str:
        """``Title (year)``, a trailing article moved to the front ("The Birdcage (1996)")."""
        year = self.years[row]
        title = sanitize(self.titles[row], TITLE_CHARS).text
        match = re.match(r"^(.*), (The|A|An)$", title)
        if match:
            title = f"{match.group(2)} {match.group(1)}"
        return f"{title} ({int(year)})" if np.isfinite(year) else title


def _genre_set(value: Any) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset(g.strip() for g in value.split("|") if g.strip())
    if isinstance(value, Iterable):
        return frozenset(str(g) for g in value if g is not None and str(g).strip())
    return frozenset()


def _year(value: Any) -> float:
    if value is None or isinstance(value, bool):
        return np.nan
    try:
        year = float(value)
    except (TypeError, ValueError):
        return np.nan
    return year if np.isfinite(year) else np.nan


# --------------------------------------------------------------------------- constraints
@dataclass(frozen=True, slots=True)
class Constraints:
    """What a request asks for. Genre and year constraints are hard filters.

    ``genres``: every one required; ``any_genres``: at least one ("comedy or drama");
    ``excluded_genres``: none allowed; ``year_min``/``year_max``: inclusive bounds;
    ``similar_to``: reference item ids ("like Toy Story"); ``query``: the words left over
    (mood, themes). ``relative_year``, ``follow_up``, ``replace_genres`` and ``reset`` are
    what the parser noticed about a follow-up; :class:`Conversation` resolves them.
    """

    genres: tuple[str, ...] = ()
    any_genres: tuple[str, ...] = ()
    excluded_genres: tuple[str, ...] = ()
    year_min: int | None = None
    year_max: int | None = None
    similar_to: tuple[str, ...] = ()
    query: str = ""
    relative_year: Literal["older", "newer"] | None = None
    follow_up: bool = False
    replace_genres: bool = False
    reset: bool = False

    @property
    def is_empty(self) -> bool:
        return not (
            self.genres
            or self.any_genres
            or self.excluded_genres
            or self.year_min is not None
            or self.year_max is not None
            or self.similar_to
            or self.query
        )

    def satisfied(self, genres: frozenset[str], year: float) -> bool:
        """Whether an item with these genres and year meets every hard constraint."""
        if any(g not in genres for g in self.genres):
            return False
        if self.any_genres and not any(g in genres for g in self.any_genres):
            return False
        if any(g in genres for g in self.excluded_genres):
            return False
        if self.year_min is not None and not (np.isfinite(year) and year >= self.year_min):
            return False
        return self.year_max is None or bool(np.isfinite(year) and year <= self.year_max)

    def to_json(self) -> dict[str, Any]:
        """The accumulated constraints as plain JSON (the parse-only flags left out)."""
        return {
            "genres": list(self.genres),
            "any_genres": list(self.any_genres),
            "excluded_genres": list(self.excluded_genres),
            "year_min": self.year_min,
            "year_max": self.year_max,
            "similar_to": list(self.similar_to),
            "query": self.query,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Constraints:
        def strings(name: str) -> tuple[str, ...]:
            value = data.get(name, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConversationError(f"constraints field {name!r} must be a list of strings")
            return tuple(value)

        def bound(name: str) -> int | None:
            value = data.get(name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise ConversationError(f"constraints field {name!r} must be an integer or null")
            return value

        query = data.get("query", "")
        if not isinstance(query, str):
            raise ConversationError("constraints field 'query' must be a string")
        return cls(
            genres=strings("genres"),
            any_genres=strings("any_genres"),
            excluded_genres=strings("excluded_genres"),
            year_min=bound("year_min"),
            year_max=bound("year_max"),
            similar_to=strings("similar_to"),
            query=query,
        )

    def describe(self, titles: Mapping[str, str] | None = None) -> str:
        """A short phrase for the answer text: ``comedy, 1990-1999, like Toy Story (1995)``."""
        parts: list[str] = []
        if self.genres:
            parts.append(" ".join(self.genres).lower())
        if self.any_genres:
            parts.append(" or ".join(self.any_genres).lower())
        if self.year_min is not None and self.year_max is not None:
            span = str(self.year_min)
            parts.append(span if self.year_min == self.year_max else f"{span}-{self.year_max}")
        elif self.year_min is not None:
            parts.append(f"from {self.year_min} on")
        elif self.year_max is not None:
            parts.append(f"up to {self.year_max}")
        if self.excluded_genres:
            parts.append("no " + " or ".join(self.excluded_genres).lower())
        if self.similar_to:
            names = [(titles or {}).get(i, i) for i in self.similar_to]
            parts.append("like " + " and ".join(names))
        if self.query:
            parts.append(f"'{self.query}'")
        return ", ".join(parts)


class ConversationError(RecloopError):
    """A message or conversation state that cannot be used: empty, too long, malformed."""


def check_message(text: Any, max_chars: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` as a usable message (sanitised); raises :class:`ConversationError` otherwise."""
    if not isinstance(text, str):
        raise ConversationError(f"message must be a string, not {type(text).__name__}")
    if len(text) > max_chars:
        raise ConversationError(f"message is {len(text)} characters; at most {max_chars}")
    cleaned = sanitize(text, max_chars).text
    if not cleaned.strip():
        raise ConversationError("message is empty")
    return cleaned


# ------------------------------------------------------------------------------- parsing
def parse_request(text: str, vocabulary: CatalogueVocabulary) -> Constraints:
    """The constraints and free-text query of one message (see the module docstring).

    Recognised: genres and their synonyms ("funny" is Comedy, "scary" Horror), negated genres
    ("not a horror", "no romance", "nothing scary"), years and decades ("90s", "1990s", "early
    80s", "before 1980", "after 2000", "since 1990", "from 1995", "between 1990 and 1995"),
    similar-to references resolved to catalogue items by fuzzy title match ("like Toy Story",
    "similar to Heat", "in the vein of Fargo"), and follow-up cues ("no, funnier", "something
    older", "a thriller instead"). Everything else that is not a filler word stays in
    ``query``.
    """
    message = check_message(text, max(MAX_MESSAGE_CHARS, len(text)))
    tokens = _normalise(message).split()
    consumed = [False] * len(tokens)
    reset = False
    for phrase in _RESET:
        size = len(phrase.split())
        for i in range(len(tokens) - size + 1):
            if " ".join(tokens[i : i + size]) == phrase:
                reset = True
                consumed[i : i + size] = [True] * size
    words = [t for t in tokens if re.fullmatch(r"[a-z0-9]+", t)]
    first = words[0] if words else ""

    similar = _parse_similar(tokens, consumed, vocabulary)
    year_min, year_max = _parse_years(tokens, consumed)
    comparative = any(_COMPARATIVE.match(t) for i, t in enumerate(tokens) if not consumed[i])
    genres, any_genres, excluded, from_comparative = _parse_genres(tokens, consumed, vocabulary)

    relative: Literal["older", "newer"] | None = None
    for i, token in enumerate(tokens):
        if consumed[i]:
            continue
        if token in _OLDER:
            relative, consumed[i] = "older", True
        elif token in _NEWER:
            relative, consumed[i] = "newer", True
    follow_up = reset is False and (
        first in _FOLLOW_UP_START or comparative or relative is not None or "instead" in words
    )
    replace_cue = first in _REPLACE_CUES or "instead" in words or "rather" in words
    replace_genres = bool(replace_cue and (set(genres) - from_comparative))
    query_words = [
        t
        for i, t in enumerate(tokens)
        if not consumed[i]
        and re.fullmatch(r"[a-z0-9]+", t)
        and t not in _STOPWORDS
        and t not in _NEGATORS
        and not (len(t) < 3 and not t.isdigit())
    ]
    return Constraints(
        genres=genres,
        any_genres=any_genres,
        excluded_genres=excluded,
        year_min=year_min,
        year_max=year_max,
        similar_to=similar,
        query=" ".join(dict.fromkeys(query_words)),
        relative_year=relative,
        follow_up=follow_up,
        replace_genres=replace_genres,
        reset=reset,
    )


def _parse_similar(
    tokens: list[str], consumed: list[bool], vocabulary: CatalogueVocabulary
) -> tuple[str, ...]:
    """Reference items after a similar-to trigger, longest exact title first, then fuzzy."""
    found: list[str] = []
    i = 0
    while i < len(tokens):
        trigger = next((t for t in _SIMILAR_TRIGGERS if tuple(tokens[i : i + len(t)]) == t), None)
        if trigger is None or consumed[i]:
            i += 1
            continue
        if trigger == ("like",) and i and tokens[i - 1] in _NOT_SIMILAR_BEFORE_LIKE:
            i += 1
            continue
        if i and tokens[i - 1] in ("not", "unlike", "nothing", "dont", "isnt"):
            i += len(trigger)
            continue
        start = i + len(trigger)
        span: list[str] = []
        for token in tokens[start : start + 12]:
            if token in (".", ",", "?", "!", ";", "(", ")"):
                break
            span.append(token)
        match = _match_title(span, vocabulary)
        if match is None:
            i += len(trigger)
            continue
        length, row = match
        item = vocabulary.ids[row]
        if item not in found:
            found.append(item)
        for j in range(i, start + length):
            consumed[j] = True
        i = start + length
    return tuple(found)


def _match_title(span: list[str], vocabulary: CatalogueVocabulary) -> tuple[int, int] | None:
    """(tokens used, catalogue row) of the title ``span`` starts with, or None."""
    words = [t for t in span if re.fullmatch(r"[a-z0-9]+", t)]
    if not words:
        return None
    # token positions in span of each word, to report how many span tokens a match used
    positions = [k for k, t in enumerate(span) if re.fullmatch(r"[a-z0-9]+", t)]
    genre_like = set(vocabulary.phrases) | _STOPWORDS
    for length in range(len(words), 0, -1):
        prefix = " ".join(words[:length])
        rows = vocabulary.title_rows.get(prefix)
        if rows and prefix not in genre_like:
            return positions[length - 1] + 1, vocabulary.best_row(rows)
    candidates: set[str] = set()
    for word in words[:4]:
        candidates |= vocabulary.token_forms.get(word, set())
    best: tuple[float, int, str] | None = None
    for length in range(len(words), 0, -1):
        prefix = " ".join(words[:length])
        if len(prefix) < 4 or prefix in genre_like:
            continue
        for form in candidates:
            if abs(len(form) - len(prefix)) > max(3, len(form) // 4):
                continue
            ratio = difflib.SequenceMatcher(None, prefix, form, autojunk=False).ratio()
            if ratio >= 0.86 and (best is None or (ratio, length) > (best[0], best[1])):
                best = (ratio, length, form)
    if best is None:
        return None
    return positions[best[1] - 1] + 1, vocabulary.best_row(vocabulary.title_rows[best[2]])


_YEAR = r"(?:1[89]\d\d|20\d\d)"
_DECADE = r"(?:(?:1[89]|20)?\d0s|" + "|".join(_DECADE_WORDS) + ")"
_WHEN = rf"(?:the )?(?P<{{name}}>{_DECADE}|{_YEAR})"
_YEAR_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    (
        "range",
        re.compile(
            rf"(?:between |from )?{_WHEN.format(name='a')} (?:and|to|until|through|-) "
            rf"{_WHEN.format(name='b')}"
        ),
    ),
    ("part", re.compile(rf"(?P<part>early|mid|late) (?:- )?{_WHEN.format(name='a')}")),
    (
        "before",
        re.compile(
            rf"(?:before|pre|prior to|earlier than|older than) (?:- )?{_WHEN.format(name='a')}"
        ),
    ),
    ("until", re.compile(rf"(?:until|up to|through|no later than) {_WHEN.format(name='a')}")),
    (
        "after",
        re.compile(rf"(?:after|post|later than|newer than) (?:- )?{_WHEN.format(name='a')}"),
    ),
    (
        "since",
        re.compile(rf"(?:since|from|starting) {_WHEN.format(name='a')} (?:on|onwards|onward)"),
    ),
    ("since", re.compile(rf"(?:since|no earlier than) {_WHEN.format(name='a')}")),
    ("at", re.compile(rf"(?:(?:from|in|of|made in|released in|circa) )?{_WHEN.format(name='a')}")),
]


def _span(value: str) -> tuple[int, int]:
    """(first, last) year of a year or decade token."""
    if value in _DECADE_WORDS:
        start = _DECADE_WORDS[value]
        return start, start + 9
    if value.endswith("s"):
        digits = value[:-1]
        if len(digits) == 2:
            tens = int(digits[0])
            start = (2000 if tens <= 2 else 1900) + 10 * tens
        else:
            start = int(digits)
        return start, start + 9
    year = int(value)
    return year, year


def _parse_years(tokens: list[str], consumed: list[bool]) -> tuple[int | None, int | None]:
    """Intersect every year constraint in the message; consumed tokens are skipped."""
    low: int | None = None
    high: int | None = None
    for kind, pattern in _YEAR_PATTERNS:
        masked = [t if not consumed[i] else "§" for i, t in enumerate(tokens)]
        joined = " ".join(masked)
        starts = np.cumsum([0] + [len(t) + 1 for t in masked])
        for match in pattern.finditer(joined):
            if (match.start() and joined[match.start() - 1] != " ") or (
                match.end() < len(joined) and joined[match.end()] != " "
            ):
                continue  # only whole tokens
            a0, a1 = _span(match.group("a"))
            if kind == "range":
                lo, hi = a0, _span(match.group("b"))[1]
            elif kind == "part":
                third = {"early": (0, 3), "mid": (3, 6), "late": (6, 9)}[match.group("part")]
                lo, hi = (a0 + third[0], a0 + third[1]) if a1 > a0 else (a0, a1)
            elif kind == "before":
                lo, hi = None, a0 - 1
            elif kind == "until":
                lo, hi = None, a1
            elif kind == "after":
                lo, hi = a1 + 1, None
            elif kind == "since":
                lo, hi = a0, None
            else:
                lo, hi = a0, a1
            if lo is not None:
                low = lo if low is None else max(low, lo)
            if hi is not None:
                high = hi if high is None else min(high, hi)
            first = int(np.searchsorted(starts, match.start(), side="right")) - 1
            last = int(np.searchsorted(starts, match.end() - 1, side="right")) - 1
            for j in range(first, last + 1):
                consumed[j] = True
    return low, high


def _parse_genres(
    tokens: list[str], consumed: list[bool], vocabulary: CatalogueVocabulary
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], set[str]]:
    """(required, any-of, excluded genres, genres named by a comparative like "funnier")."""
    masked = [t if not consumed[i] else "§" for i, t in enumerate(tokens)]
    joined = " ".join(masked)
    starts = np.cumsum([0] + [len(t) + 1 for t in masked])
    mentions: list[tuple[int, int, tuple[str, ...], bool]] = []  # first, last, genres, negated
    for match in vocabulary.genre_matches(joined):
        first = int(np.searchsorted(starts, match.start(), side="right")) - 1
        last = int(np.searchsorted(starts, match.end() - 1, side="right")) - 1
        mentions.append((first, last, vocabulary.phrases[match.group(1)], False))
    genre_tokens = {j for first, last, _, _ in mentions for j in range(first, last + 1)}
    required: list[str] = []
    any_of: list[str] = []
    excluded: list[str] = []
    comparative: set[str] = set()
    for index, (first, last, names, _) in enumerate(mentions):
        for j in range(first, last + 1):
            consumed[j] = True
        phrase = " ".join(masked[first : last + 1])
        after_more = first > 0 and masked[first - 1] == "more"
        is_comparative = bool(_COMPARATIVE.match(phrase)) or after_more
        if after_more:
            consumed[first - 1] = True
        # "no, funnier" refines; a comparative is never read as negated
        negated = not is_comparative and _negated(masked, first, genre_tokens)
        joined_by_or = (
            index + 1 < len(mentions)
            and mentions[index + 1][0] == last + 2
            and masked[last + 1] == "or"
        ) or (index and mentions[index - 1][1] == first - 2 and masked[first - 1] == "or")
        for name in names:
            if negated:
                if name not in excluded:
                    excluded.append(name)
            elif joined_by_or and len(names) == 1:
                if name not in any_of:
                    any_of.append(name)
            elif name not in required:
                required.append(name)
                if is_comparative:
                    comparative.add(name)
    required = [g for g in required if g not in excluded]
    any_of = [g for g in any_of if g not in excluded and g not in required]
    if len(any_of) == 1:  # "or" with only one side left is a plain requirement
        required.extend(any_of)
        any_of = []
    return tuple(required), tuple(any_of), tuple(excluded), comparative


def _negated(tokens: list[str], first: int, genre_tokens: set[int]) -> bool:
    """Whether a negator governs the mention starting at ``first`` (within a few words)."""
    steps = 0
    j = first - 1
    while j >= 0 and steps < 6:
        token = tokens[j]
        if token in _NEGATORS:
            return True
        if token == "but" and j and tokens[j - 1] in ("anything", "everything"):
            return True
        if token in _NEGATION_FILLERS or j in genre_tokens:
            j -= 1
            steps += 1
            continue
        return False
    return False


# -------------------------------------------------------------------------- conversation
@dataclass(frozen=True, slots=True)
class Turn:
    """One exchange: the (sanitised) message, the constraints in force, what was shown, and
    the generated text with what wrote it (``backend``; None in states saved before it was
    kept)."""

    message: str
    constraints: Constraints
    items: tuple[str, ...]
    text: str
    follow_up: bool
    backend: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "message": self.message,
            "constraints": self.constraints.to_json(),
            "items": list(self.items),
            "text": self.text,
            "follow_up": self.follow_up,
            "backend": self.backend,
        }


@dataclass(frozen=True, slots=True)
class Conversation:
    """A conversation's state: its turns and every item shown so far (never shown again)."""

    conversation_id: str
    user_id: str | None = None
    turns: tuple[Turn, ...] = ()
    shown: tuple[str, ...] = ()

    @classmethod
    def new(cls, user_id: str | None = None, conversation_id: str | None = None) -> Conversation:
        return cls(conversation_id or uuid.uuid4().hex, user_id)

    @property
    def constraints(self) -> Constraints:
        """The accumulated constraints of the last turn (empty before the first)."""
        return self.turns[-1].constraints if self.turns else Constraints()

    def with_turn(self, turn: Turn, *, max_turns: int = 20, max_shown: int = 1000) -> Conversation:
        turns = (*self.turns, turn)[-max_turns:]
        shown = tuple(dict.fromkeys((*self.shown, *turn.items)))[-max_shown:]
        return replace(self, turns=turns, shown=shown)

    def to_json(self) -> dict[str, Any]:
        return {
            "conversation_id": self.conversation_id,
            "user_id": self.user_id,
            "turns": [t.to_json() for t in self.turns],
            "shown": list(self.shown),
        }

    @classmethod
    def from_json(cls, data: Any) -> Conversation:
        """A state written by :meth:`to_json`, validated (it may come back from a cache)."""
        if not isinstance(data, dict) or not isinstance(data.get("conversation_id"), str):
            raise ConversationError("conversation state must be an object with an id")
        user = data.get("user_id")
        turns_raw, shown = data.get("turns", []), data.get("shown", [])
        if user is not None and not isinstance(user, str):
            raise ConversationError("conversation user_id must be a string or null")
        if not isinstance(turns_raw, list) or not isinstance(shown, list):
            raise ConversationError("conversation turns and shown must be lists")
        turns: list[Turn] = []
        for raw in turns_raw:
            if not isinstance(raw, dict):
                raise ConversationError("a conversation turn must be an object")
            items = raw.get("items", [])
            if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
                raise ConversationError("turn items must be a list of strings")
            backend = raw.get("backend")
            if backend is not None and not isinstance(backend, str):
                raise ConversationError("turn backend must be a string or null")
            turns.append(
                Turn(
                    message=str(raw.get("message", "")),
                    constraints=Constraints.from_json(raw.get("constraints", {})),
                    items=tuple(items),
                    text=str(raw.get("text", "")),
                    follow_up=bool(raw.get("follow_up", False)),
                    backend=backend,
                )
            )
        if not all(isinstance(i, str) for i in shown):
            raise ConversationError("shown items must be strings")
        return cls(data["conversation_id"], user, tuple(turns), tuple(shown))


def refine(
    previous: Constraints,
    parsed: Constraints,
    vocabulary: CatalogueVocabulary,
    last_items: Sequence[str] = (),
) -> Constraints:
    """The constraints after a follow-up: ``parsed`` refines ``previous``.

    New genres are added ("no, funnier" adds Comedy) or, after a replace cue ("a thriller
    instead"), replace the old ones; exclusions accumulate; explicit years replace the old
    range; "older"/"newer" move it before/after the years of the items shown last; a new
    reference replaces the old one; query words accumulate, newest first.
    """
    genres = list(parsed.genres) if parsed.replace_genres else [*previous.genres, *parsed.genres]
    any_genres = list(parsed.any_genres) or (
        [] if parsed.replace_genres else list(previous.any_genres)
    )
    excluded = [*previous.excluded_genres, *parsed.excluded_genres]
    positive = set(parsed.genres) | set(parsed.any_genres)
    excluded = [g for g in dict.fromkeys(excluded) if g not in positive]
    genres = [g for g in dict.fromkeys(genres) if g not in parsed.excluded_genres]
    any_genres = [g for g in any_genres if g not in parsed.excluded_genres]
    year_min, year_max = previous.year_min, previous.year_max
    if parsed.year_min is not None or parsed.year_max is not None:
        year_min, year_max = parsed.year_min, parsed.year_max
    elif parsed.relative_year is not None:
        shown = [vocabulary.years[vocabulary.row[i]] for i in last_items if i in vocabulary.row]
        known = [y for y in shown if np.isfinite(y)]
        if parsed.relative_year == "older":
            edge = min(known) if known else (previous.year_min or previous.year_max)
            year_min, year_max = None, (int(edge) - 1 if edge is not None else None)
        else:
            edge = max(known) if known else (previous.year_max or previous.year_min)
            year_min, year_max = (int(edge) + 1 if edge is not None else None), None
    query = " ".join(dict.fromkeys([*parsed.query.split(), *previous.query.split()]))
    return Constraints(
        genres=tuple(genres),
        any_genres=tuple(any_genres),
        excluded_genres=tuple(excluded),
        year_min=year_min,
        year_max=year_max,
        similar_to=parsed.similar_to or previous.similar_to,
        query=" ".join(query.split()[:30]),
    )


def settle(parsed: Constraints, vocabulary: CatalogueVocabulary) -> Constraints:
    """A fresh request's constraints, with parse-only hints dropped.

    A relative year on a first turn has nothing to refer to: "older" keeps items before the
    catalogue's median year and "newer"/"recent" those after it.
    """
    year_min, year_max = parsed.year_min, parsed.year_max
    if parsed.relative_year is not None and year_min is None and year_max is None:
        finite = vocabulary.years[np.isfinite(vocabulary.years)]
        if len(finite):
            median = int(np.median(finite))
            if parsed.relative_year == "older":
                year_max = median - 1
            else:
                year_min = median + 1
    return replace(
        parsed,
        year_min=year_min,
        year_max=year_max,
        relative_year=None,
        follow_up=False,
        replace_genres=False,
        reset=False,
    )


def is_follow_up(state: Conversation, parsed: Constraints) -> bool:
    """Whether a message refines the previous turn rather than starting a new request.

    A first message or an explicit reset ("start over") is new; a follow-up cue ("no, ...",
    "what about ...", a comparative such as "funnier" or "older") refines; otherwise a message
    naming a genre or a reference item is a new request and anything else (a year range, an
    exclusion, a mood word) refines.
    """
    if not state.turns or parsed.reset:
        return False
    if parsed.follow_up:
        return True
    return not (parsed.genres or parsed.any_genres or parsed.similar_to)


# ------------------------------------------------------------------- collaborative profile
class ScoresUsers(Protocol):
    """A recommender that scores every item for a batch of queries."""

    def score(self, queries: Queries) -> np.ndarray: ...


class CollaborativeProfile:
    """A recommender's scores for a user's history, in external item ids.

    ``model`` scores queries over its own items (``score(queries) -> (n, n_items)``, as every
    :class:`~recloop.models.base.ScoringRecommender` does); ``items``/``users`` are its id
    maps (the service's :class:`~recloop.service.engine.ServingModel` holds both).
    """

    def __init__(
        self, model: ScoresUsers, items: IdMap, users: IdMap | None = None, name: str | None = None
    ) -> None:
        if not callable(getattr(model, "score", None)):
            raise ConfigError(
                f"{type(model).__name__} cannot score the catalogue; the conversation's "
                "collaborative profile needs a model with score(queries)"
            )
        self.model = model
        self.items = items
        self.users = users
        self.name = name or str(getattr(model, "name", type(model).__name__))

    def scores(self, user_id: str | None, history: Sequence[str]) -> np.ndarray | None:
        """One score per model item for this user, or None when no history item is known."""
        known = self.items.index(list(history), unknown="new") if history else np.zeros(0)
        known = np.asarray(known[known >= 0], dtype=np.int32)
        if not len(known):
            return None
        user = -1
        if user_id is not None and self.users is not None:
            user = int(self.users.index([user_id], unknown="new")[0])
        queries = Queries(np.array([user]), np.array([0, len(known)]), known)
        return np.asarray(self.model.score(queries), dtype=np.float64)[0]

    def neighbours(self, item_id: str) -> np.ndarray | None:
        """Scores for a history of just ``item_id`` (its collaborative neighbours)."""
        return self.scores(None, [item_id])


# --------------------------------------------------------------------------- recommending
class ConversationConfig(BaseModel):
    """How the conversation retrieves, fuses and re-ranks; frozen, no unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_items: int = Field(default=10, ge=1, le=50, description="Items per answer.")
    pool: int = Field(default=100, ge=1, le=5000, description="Candidates per source list.")
    fusion: Literal["rrf", "score"] = Field(
        default="rrf", description="Reciprocal-rank fusion, or weighted min-max scores."
    )
    rrf_k: float = Field(default=60.0, gt=0, description="RRF: 1 / (rrf_k + rank).")
    dense_weight: float = Field(default=1.0, ge=0, description="Weight of dense retrieval.")
    profile_weight: float = Field(
        default=1.0, ge=0, description="Weight of the user's collaborative profile (0: off)."
    )
    similar_weight: float = Field(
        default=1.0, ge=0, description="Weight of the reference items' neighbours."
    )
    query_mix: float = Field(
        default=0.5, ge=0, le=1, description="Share of the query text beside reference vectors."
    )
    rerank_top: int = Field(default=20, ge=0, le=200, description="LLM re-ranks these (0: off).")
    llm_weight: float = Field(default=0.5, ge=0, le=1, description="LLM share in re-ranking.")
    max_message_chars: int = Field(default=MAX_MESSAGE_CHARS, ge=1, le=10_000)
    max_turns: int = Field(default=20, ge=1, description="Turns kept in the state.")
    max_shown: int = Field(default=1000, ge=1, description="Shown items remembered.")


@dataclass(frozen=True, slots=True)
class AnswerItem:
    """One recommended item: id, display title, fused score and the source that led."""

    item_id: str
    title: str
    score: float
    source: str


@dataclass(frozen=True, slots=True)
class Answer:
    """What :meth:`ConversationalRecommender.respond` returns."""

    items: list[AnswerItem]
    text: str
    constraints: Constraints
    state: Conversation
    notes: list[str] = field(default_factory=list)
    backend: str = "template"


class ConversationalRecommender:
    """Answers conversation turns over one catalogue (see the module docstring).

    ``index`` holds the catalogue's items (items it lacks cannot be retrieved densely);
    ``model`` is a :class:`CollaborativeProfile` (or a scoring recommender whose item indices
    are the catalogue's); ``generator`` writes the answer text and re-ranks when it can score
    (default: the deterministic template generator, which cannot score).
    """

    def __init__(
        self,
        index: DenseIndex,
        catalogue: Catalog,
        model: CollaborativeProfile | ScoresUsers | None = None,
        generator: TextGenerator | None = None,
        config: ConversationConfig | None = None,
    ) -> None:
        self.index = index
        self.catalogue = catalogue
        self.config = config or ConversationConfig()
        if model is not None and not isinstance(model, CollaborativeProfile):
            model = CollaborativeProfile(model, catalogue.items)
        self.profile = model
        self._model_index = (
            model.items.index(catalogue.items.ids(), unknown="new") if model is not None else None
        )
        self.generator: TextGenerator = generator if generator is not None else TemplateGenerator()
        popularity = None
        if model is not None and hasattr(model.model, "popularity_"):
            popularity = self._to_rows(np.asarray(model.model.popularity_, dtype=np.float64))
            popularity = np.nan_to_num(popularity, nan=0.0)
        self.vocabulary = CatalogueVocabulary(catalogue, popularity=popularity)
        ids = self.vocabulary.ids
        self.row = self.vocabulary.row
        self._in_index = np.array([i in index.row for i in ids], dtype=bool)
        genre_list = list(self.vocabulary.genres)
        self._genre_col = {g: k for k, g in enumerate(genre_list)}
        self._genre_matrix = np.zeros((len(ids), len(genre_list)), dtype=bool)
        for row, genres in enumerate(self.vocabulary.item_genres):
            for g in genres:
                self._genre_matrix[row, self._genre_col[g]] = True
        self._prior: OrderedDict[str, float] = OrderedDict()
        self._names: FaithfulnessChecker | None = None

    @property
    def name_checker(self) -> FaithfulnessChecker:
        """The catalogue's :class:`FaithfulnessChecker` that grounds generated answers (built
        on first use: a template-only recommender never needs it)."""
        if self._names is None:
            self._names = FaithfulnessChecker.from_catalog(self.catalogue)
        return self._names

    def _to_rows(self, model_scores: np.ndarray) -> np.ndarray:
        """Model-space scores as one per catalogue row (NaN where the model lacks the item)."""
        assert self._model_index is not None
        index = self._model_index
        out = np.full(len(index), np.nan)
        known = (index >= 0) & (index < len(model_scores))
        out[known] = model_scores[index[known]]
        return out

    # -- filtering ------------------------------------------------------------------------
    def allowed_mask(self, constraints: Constraints, exclude: Iterable[str] = ()) -> np.ndarray:
        """Catalogue rows meeting every hard constraint, minus ``exclude``."""
        n = len(self.vocabulary.ids)
        mask = np.ones(n, dtype=bool)
        for g in constraints.genres:
            col = self._genre_col.get(g)
            mask &= self._genre_matrix[:, col] if col is not None else False
        if constraints.any_genres:
            cols = [self._genre_col[g] for g in constraints.any_genres if g in self._genre_col]
            mask &= self._genre_matrix[:, cols].any(axis=1) if cols else False
        for g in constraints.excluded_genres:
            col = self._genre_col.get(g)
            if col is not None:
                mask &= ~self._genre_matrix[:, col]
        years = self.vocabulary.years
        with np.errstate(invalid="ignore"):
            if constraints.year_min is not None:
                mask &= years >= constraints.year_min
            if constraints.year_max is not None:
                mask &= years <= constraints.year_max
        for item in (*exclude, *constraints.similar_to):
            row = self.row.get(item)
            if row is not None:
                mask[row] = False
        return mask

    # -- the turn ---------------------------------------------------------------------------
    def respond(
        self,
        state: Conversation,
        text: str,
        user_history: Sequence[str] = (),
        *,
        exclude: Iterable[str] = (),
        consent: bool = False,
    ) -> Answer:
        """Answer ``text`` in ``state``; returns the answer with the new state.

        ``user_history`` is the user's consumed items (oldest first): it feeds the
        collaborative profile and is never recommended; ``exclude`` adds items that may not be
        shown (hidden, unavailable, disliked). ``consent``: the user allows their message to
        go to a hosted backend (local backends and the template need none).
        """
        message = check_message(text, self.config.max_message_chars)
        parsed = parse_request(message, self.vocabulary)
        follow = is_follow_up(state, parsed)
        notes: list[str] = []
        if follow:
            last = state.turns[-1].items if state.turns else ()
            constraints = refine(state.constraints, parsed, self.vocabulary, last)
        else:
            constraints = settle(parsed, self.vocabulary)
        if (
            constraints.year_min is not None
            and constraints.year_max is not None
            and (constraints.year_min > constraints.year_max)
        ):
            notes.append("the year range is empty")
        banned = set(state.shown) | set(user_history) | set(exclude)
        ranked = self._retrieve(constraints, message, state.user_id, user_history, banned, notes)
        ranked = self._rerank(ranked, message, notes, consent)
        top = ranked[: self.config.n_items]
        items = [
            AnswerItem(item, self.vocabulary.display(self.row[item]), score, source)
            for item, score, source in top
        ]
        answer_text, backend = self._answer_text(
            message, constraints, items, follow, notes, consent
        )
        turn = Turn(
            message=message,
            constraints=constraints,
            items=tuple(i.item_id for i in items),
            text=answer_text,
            follow_up=follow,
            backend=backend,
        )
        new_state = state.with_turn(
            turn, max_turns=self.config.max_turns, max_shown=self.config.max_shown
        )
        return Answer(items, answer_text, constraints, new_state, notes, backend)

    # -- retrieval and fusion ----------------------------------------------------------------
    def _query_text(self, constraints: Constraints) -> str:
        parts: list[str] = []
        if constraints.query:
            parts.append(constraints.query)
        genres = [*constraints.genres, *constraints.any_genres]
        if genres:
            parts.append("Genres: " + ", ".join(genres))
        return ". ".join(parts)

    def _retrieve(
        self,
        constraints: Constraints,
        message: str,
        user_id: str | None,
        history: Sequence[str],
        exclude: set[str],
        notes: list[str],
    ) -> list[tuple[str, float, str]]:
        cfg = self.config
        mask = self.allowed_mask(constraints, exclude)
        if not mask.any():
            notes.append("no catalogue item meets every constraint")
            return []
        allowed = [self.vocabulary.ids[r] for r in np.flatnonzero(mask & self._in_index)]
        lists: dict[str, tuple[float, list[tuple[str, float]]]] = {}
        refs = [self.index.vector(i) for i in constraints.similar_to if i in self.index.row]
        ref_mean = _unit(np.mean(refs, axis=0)) if refs else None
        text = self._query_text(constraints)
        vector = self.index.encode_query(text) if text else None
        if ref_mean is not None:
            vector = (
                ref_mean
                if vector is None
                else _unit(cfg.query_mix * vector + (1 - cfg.query_mix) * ref_mean)
            )
        if vector is None:
            vector = self.index.encode_query(message)
        if cfg.dense_weight > 0 and allowed:
            lists["dense"] = (cfg.dense_weight, self.index.search(vector, cfg.pool, allowed))
        if constraints.similar_to and cfg.similar_weight > 0:
            neighbours: list[tuple[str, float]] = []
            if self.profile is not None:
                found = [self.profile.neighbours(i) for i in constraints.similar_to]
                known = [self._to_rows(s) for s in found if s is not None]
                if known:
                    neighbours = self._top_rows(np.mean(np.stack(known), axis=0), mask)
            if not neighbours and ref_mean is not None and allowed:
                neighbours = self.index.search(ref_mean, cfg.pool, allowed)
            if neighbours:
                lists["similar"] = (cfg.similar_weight, neighbours)
        if self.profile is not None and cfg.profile_weight > 0:
            scores = self.profile.scores(user_id, history)
            if scores is None:
                notes.append("no known history: the collaborative profile is not used")
            else:
                lists["profile"] = (cfg.profile_weight, self._top_rows(self._to_rows(scores), mask))
        return self._fuse(lists)

    def _top_rows(self, scores: np.ndarray, mask: np.ndarray) -> list[tuple[str, float]]:
        scores = np.where(mask & np.isfinite(scores), scores, -np.inf)
        k = min(self.config.pool, int(np.isfinite(scores).sum()))
        if k == 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.lexsort((top, -scores[top]))]
        return [(self.vocabulary.ids[r], float(scores[r])) for r in top]

    def _fuse(
        self, lists: Mapping[str, tuple[float, list[tuple[str, float]]]]
    ) -> list[tuple[str, float, str]]:
        """Fused (item, score, leading source), best first; ties to the earlier item."""
        total: dict[str, float] = {}
        parts: dict[str, dict[str, float]] = {}
        for name, (weight, ranked) in lists.items():
            if not ranked:
                continue
            if self.config.fusion == "rrf":
                values = [weight / (self.config.rrf_k + rank) for rank in range(1, len(ranked) + 1)]
            else:
                raw = np.array([s for _, s in ranked], dtype=np.float64)
                span = raw.max() - raw.min()
                values = list(
                    weight * ((raw - raw.min()) / span if span > 0 else np.ones_like(raw))
                )
            for (item, _), value in zip(ranked, values, strict=True):
                total[item] = total.get(item, 0.0) + float(value)
                parts.setdefault(item, {})[name] = float(value)
        order = sorted(total, key=lambda i: (-total[i], self.row[i]))
        return [(i, total[i], max(parts[i], key=lambda n: parts[i][n])) for i in order]

    # -- LLM re-ranking --------------------------------------------------------------------
    def rerank_messages(self, message: str) -> list[Message]:
        """The prompt whose answer is scored: the request as an untrusted block."""
        system = (
            "You recommend films that fit a user's request, naming one film by its title. "
            + SYSTEM_GUARD
        )
        user = (
            "The user asks:\n"
            + untrusted("request", message, self.config.max_message_chars)
            + "\nName the one film that fits this request best."
        )
        return [Message("system", system), Message("user", user)]

    def _rerank(
        self,
        ranked: list[tuple[str, float, str]],
        message: str,
        notes: list[str],
        consent: bool,
    ) -> list[tuple[str, float, str]]:
        top_n = min(self.config.rerank_top, len(ranked))
        if top_n < 2 or isinstance(self.generator, TemplateGenerator):
            if top_n >= 2:
                notes.append("LLM re-rank skipped: the template generator cannot score")
            return ranked
        if self.generator.hosted and not consent:
            notes.append("LLM re-rank skipped: hosted backend without the user's consent")
            return ranked
        head = ranked[:top_n]
        titles = [self.vocabulary.display(self.row[i]) for i, _, _ in head]
        try:
            scores = self.generator.score(self.rerank_messages(message), titles)
            prior = self._prior_scores(titles)
        except GenerationError as exc:
            notes.append(f"LLM re-rank skipped: {' '.join(str(exc).split())[:200]}")
            return ranked
        if len(scores) != top_n or not all(np.isfinite(scores)):
            notes.append("LLM re-rank skipped: the backend returned unusable scores")
            return ranked
        pmi = np.asarray(scores, dtype=np.float64) - prior
        llm_order = np.argsort(-pmi, kind="stable")
        llm_position = np.empty(top_n)
        llm_position[llm_order] = np.arange(top_n)
        w = self.config.llm_weight
        scale = top_n - 1
        fused = [
            (1 - w) * (1 - pos / scale) + w * (1 - llm_position[pos] / scale)
            for pos in range(top_n)
        ]
        order = sorted(range(top_n), key=lambda pos: (-fused[pos], pos))
        notes.append(f"re-ranked the top {top_n} with {self.generator.name}")
        return [(head[p][0], float(fused[p]), head[p][2]) for p in order] + ranked[top_n:]

    def _prior_scores(self, titles: list[str]) -> np.ndarray:
        """log p(title | a request-free prompt), cached: the PMI baseline."""
        missing = [t for t in dict.fromkeys(titles) if t not in self._prior]
        if missing:
            neutral = [
                Message("system", "You recommend films, naming one film by its title."),
                Message("user", "Name a film."),
            ]
            values = self.generator.score(neutral, missing)
            if len(values) != len(missing):
                raise GenerationError("the backend returned a wrong number of scores")
            for title, value in zip(missing, values, strict=True):
                self._prior[title] = float(value)
                if len(self._prior) > 50_000:
                    self._prior.popitem(last=False)
        return np.array([self._prior[t] for t in titles], dtype=np.float64)

    # -- the answer text --------------------------------------------------------------------
    def _answer_text(
        self,
        message: str,
        constraints: Constraints,
        items: list[AnswerItem],
        follow_up: bool,
        notes: list[str],
        consent: bool,
    ) -> tuple[str, str]:
        titles = {
            i: self.vocabulary.display(self.row[i]) for i in constraints.similar_to if i in self.row
        }
        evidence = {
            "request": message,
            "constraints": constraints.describe(titles),
            "follow_up": follow_up,
            "items": [{"id": it.item_id, "title": it.title} for it in items],
        }
        listing = "\n".join(f"[[{it.item_id}]] {it.title}" for it in items)
        system = (
            "You are a film recommender in a conversation. Recommend only films from the "
            "candidate list, and refer to each one by its id in double brackets, like [[42]]. "
            "Never name a film that is not in the list. " + SYSTEM_GUARD
        )
        understood = constraints.describe(titles) or "anything"
        user = (
            "The user asks:\n"
            + untrusted("request", message, self.config.max_message_chars)
            + "\nUnderstood as:\n"
            + untrusted("understood", understood, max_chars=len(understood) + 1)
            + "\nCandidates:\n"
            + untrusted("candidates", listing or "none", max_chars=len(listing) + 10)
            + "\nRecommend the best of them in two or three sentences."
        )
        request = GenerationRequest(
            task=TASK,
            evidence=evidence,
            messages=(Message("system", system), Message("user", user)),
            max_tokens=200,
            contains_personal_data=True,
        )
        references = list(titles.values())
        fallback = TemplateGenerator()
        generator = self.generator
        try:
            check_consent(generator, request, consent)
            generated = generator.generate(request)
        except GenerationError as exc:
            if not isinstance(generator, TemplateGenerator):
                notes.append(f"answer from the template: {' '.join(str(exc).split())[:200]}")
            generator = fallback
            generated = fallback.generate(request)
        if generator is fallback:  # names only the references and the user's own words
            text, dropped = ground(generated.text, items, references, check_names=False)
        else:
            text, dropped = ground(generated.text, items, references, checker=self.name_checker)
        if dropped:
            notes.append(f"dropped {dropped} generated sentence(s) naming non-candidate items")
        if not text and generator is not fallback:
            notes.append("the generated text named no shown item; answer from the template")
            generated = fallback.generate(request)
            text, _ = ground(generated.text, items, references, check_names=False)
            generator = fallback
        return text, generator.name


def _unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


# --------------------------------------------------------------------------- grounding
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_QUOTED = re.compile(r"[\"“”]([^\"“”]{2,120})[\"“”]|\*([^*]{2,120})\*")
_REF = re.compile(r"\[\[([^\[\]]{1,128})\]\]")
_TITLE_YEAR = re.compile(r"\((?:18[7-9]|19\d|20[0-3])\d\)")
_NO_VOCABULARY = FaithfulnessChecker(Vocabulary())


def ground(
    text: str,
    items: Sequence[AnswerItem],
    references: Sequence[str] = (),
    *,
    checker: FaithfulnessChecker | None = None,
    check_names: bool = True,
) -> tuple[str, int]:
    """Generated text made safe to show: (text, sentences dropped).

    Item references ``[[id]]`` outside ``items`` drop their sentence; so does a sentence that
    names anything else (``checker.check_names`` with the shown items and the reference titles
    the user named as the allowed items): a catalogue title not shown, a capitalised name that
    is no part of their titles (one word too: "also adore Inception"), a quoted span, or a
    ``(year)`` after words that end no shown title ("the matrix reloaded (2003)"). ``checker``
    is the catalogue's (None: one that knows only the shown items, so any other capitalised
    name counts as unknown); ``check_names=False`` checks references only (for the template,
    which names nothing else). The kept references become the items' titles. Empty when there
    are items and no kept sentence names one.
    """
    allowed = {it.item_id: it.title for it in items}
    titles = [*allowed.values(), *references]
    facts = _facts(titles)
    known = [_loose(t) for t in titles] + [_loose(f.name) for f in facts]  # and without year
    names = checker if checker is not None else _NO_VOCABULARY
    kept: list[str] = []
    dropped = 0
    mentions = 0
    for sentence in _SENTENCE.split(" ".join(text.split())):
        if not sentence:
            continue
        refs, rejected = constrain_ids(sentence, allowed)
        if rejected:
            dropped += 1
            continue
        shown = _REF.sub(lambda m: allowed.get(m.group(1).strip(), ""), sentence)
        if check_names and not _names_ok(sentence, shown, names, facts, known):
            dropped += 1
            continue
        mentions += len(refs)
        kept.append(shown)
    if items and not mentions:
        return "", dropped
    out = " ".join(" ".join(kept).split())
    return (out[:1999] + "…" if len(out) > 2000 else out), dropped


def _facts(titles: Sequence[str]) -> list[ItemFacts]:
    return [ItemFacts.from_attributes(f"shown {n}", t) for n, t in enumerate(titles)]


def _names_ok(
    sentence: str,
    shown: str,
    checker: FaithfulnessChecker,
    facts: Sequence[ItemFacts],
    known: Sequence[str],
) -> bool:
    """Whether a sentence (as written, and as shown: references replaced by their titles)
    names nothing but the shown items and the references."""
    bare = _REF.sub(" ", sentence)
    if any(not _part_of(a or b, known, opener=True) for a, b in _QUOTED.findall(bare)):
        return False
    for mention in checker.check_names(shown, facts).unsupported:
        if mention.kind != "name" or not _part_of(mention.text, known):
            return False
    for match in _TITLE_YEAR.finditer(shown):
        before = f" {_loose(shown[: match.start()])}"
        if not any(before.endswith(f" {k}") for k in known if k):
            return False
    return True


def _loose(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def _part_of(span: str, known: Sequence[str], *, opener: bool = False) -> bool:
    """Whether a span is part of a shown or reference title; ``opener``: or is once its first
    word (a sentence opener such as "Try") goes. One quoted word passes (it names nothing by
    itself); a capitalised one must be part of a title."""
    words = _loose(span).split()
    if not words:
        return True
    candidates = [words, words[1:]] if opener and len(words) > 1 else [words]
    if any(f" {' '.join(c)} " in f" {k} " for c in candidates for k in known):
        return True
    return opener and len(words) == 1


# ------------------------------------------------------------------------------ template
@register_template(TASK)
def _render_conversation(evidence: Mapping[str, Any]) -> str:
    """The deterministic answer: how the request was understood and the picks by reference."""
    items = list(evidence.get("items", []))
    described = str(evidence.get("constraints") or "")
    if not items:
        what = f" for {described}" if described else ""
        return f"I found nothing in the catalogue{what}. Try loosening one of the constraints."
    refs = [f"[[{it['id']}]]" for it in items]
    listed = refs[0] if len(refs) == 1 else ", ".join(refs[:-1]) + " and " + refs[-1]
    what = f" ({described})" if described else ""
    verb, noun = ("is", "pick") if len(items) == 1 else ("are", "picks")
    more = " more" if evidence.get("follow_up") else ""
    return f"Here {verb} {len(items)}{more} {noun}{what}: {listed}."
