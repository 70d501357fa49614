"""Onboarding: from a few liked items, free text or profile answers to recommendations at once.

What a new user gives is turned into a *partial interaction vector* over the catalogue:

- liked items, weight 1;
- free text, matched to items by the dense text index
  (:class:`recloop.generative.retrieval.DenseIndex`) when one is given, else by title words
  (:class:`TitleMatcher`); genre names and decades named in the text ("80s sci-fi") count as
  profile answers;
- profile answers (genres liked, decades), which seed the most popular matching items with
  ``answer_weight``.

A generative model turns the partial vector into a *synthetic starting profile*: a Mult-VAE
(or Mult-DAE) or DiffRec reconstructs the full vector from the partial one, and its top-M
items (not already in the vector) become pseudo-history, weighted by the reconstruction
relative to its best item times ``profile_weight``; a TIGER model instead continues the seed
sequence by beam search, weighting its top-M continuations by their sequence probability.
Recommendations come from that profile at once, one of two ways (``recommend_from``):

- ``"generative"``: the generative model's own ranking (its reconstruction, or TIGER's list);
- ``"profile"``: the weighted pseudo-history (partial vector + synthetic items) handed to a
  downstream recommender (EASE in the benchmark; any model :func:`score_vectors` can read),
  or back to the generative model when no downstream model is given.

The defaults are what won on *validation* users in ``bench/bench_gen_onboarding.py`` (see
docs/generative_onboarding.md): ``"auto"`` hands a 10-item pseudo-history of weight ≤ 0.1 to
the downstream recommender when there is one (the best of 38 settings), and ranks by the
generative model's own reconstruction when there is none (which beat feeding the profile back
to the same model). With nothing given, the answer is the model's train popularity, labelled
``source="popular"`` and ``method="popular"``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import scipy.sparse as sp
import torch
from pydantic import BaseModel, ConfigDict, Field

from recloop.data.types import Catalog, Exclusions, IdMap, Queries
from recloop.errors import ConfigError, RecloopError
from recloop.models.base import POPULAR_SOURCE, ScoringRecommender, top_k
from recloop.models.diffrec import DiffRec
from recloop.models.ease import EASE
from recloop.models.multvae import MultDAE
from recloop.models.tiger import TIGER

ONBOARDING_SOURCE = "onboarding"
RecommendFrom = Literal["auto", "generative", "profile"]
_WORD = re.compile(r"[a-z0-9]+")
_PHRASES = re.compile(r"[,;.!?]|\band\b", re.IGNORECASE)
_DECADE = re.compile(r"\b(?:(1[89]|20)?([0-9])0)'?s\b")
_STOPWORD_TEXT = (
    "a an and are as at be but by for from i in into is it its like love me my of on or "
    "our she so than that the their them then there these they this to was we were what "
    "when which who will with you your films film movies movie watch watched some"
)
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
GENRE_ALIASES = {
    "scifi": "sci-fi",
    "science fiction": "sci-fi",
    "sci fi": "sci-fi",
    "children": "children's",
    "kids": "children's",
    "noir": "film-noir",
    "film noir": "film-noir",
    "animated": "animation",
    "cartoon": "animation",
    "romantic": "romance",
    "scary": "horror",
    "funny": "comedy",
    "comedies": "comedy",
    "thrillers": "thriller",
    "westerns": "western",
    "musicals": "musical",
    "documentaries": "documentary",
    "war films": "war",
}


class OnboardingError(RecloopError):
    """Onboarding input the catalogue cannot use: unknown genre, bad decade, unknown item."""


class OnboardingConfig(BaseModel):
    """How a partial vector becomes a synthetic profile and recommendations.

    Defaults were picked on validation users by ``bench/bench_gen_onboarding.py``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    profile_size: int = Field(default=10, ge=0, description="M: synthetic pseudo-history items.")
    profile_weight: float = Field(
        default=0.1, ge=0.0, description="Weight of the best synthetic item (a liked item is 1)."
    )
    recommend_from: RecommendFrom = Field(
        default="auto",
        description="'generative': the generative model's own ranking; 'profile': the "
        "pseudo-history handed to the downstream recommender (or back to the generative "
        "model); 'auto': 'profile' when a downstream recommender is given, else 'generative'.",
    )
    answer_items: int = Field(
        default=20, ge=1, description="Popular items seeded by the profile answers."
    )
    answer_weight: float = Field(default=0.5, gt=0.0, description="Weight of an answer seed.")
    text_items: int = Field(default=5, ge=1, description="Items matched from free text.")
    text_weight: float = Field(default=1.0, gt=0.0, description="Weight of a text-matched item.")


@dataclass(frozen=True, slots=True)
class ProfileAnswers:
    """Answers to the onboarding questions: genres liked, decades (1970 = the 1970s)."""

    genres: tuple[str, ...] = ()
    decades: tuple[int, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.genres or self.decades)


@dataclass(frozen=True, slots=True)
class Seeds:
    """The partial interaction vector as sparse (items, weights), plus where each came from."""

    items: np.ndarray
    weights: np.ndarray
    liked: np.ndarray  # liked items: excluded from recommendations
    from_text: np.ndarray
    from_answers: np.ndarray

    def __len__(self) -> int:
        return len(self.items)

    def vector(self, n_items: int) -> np.ndarray:
        out = np.zeros((1, n_items), dtype=np.float32)
        out[0, self.items] = self.weights
        return out


@dataclass(frozen=True, slots=True)
class SyntheticProfile:
    """Per row: the synthetic pseudo-history (top-M reconstructed items and their weights)."""

    items: list[np.ndarray]
    weights: list[np.ndarray]


@dataclass(frozen=True)
class OnboardingResult:
    """A new user's profile and first recommendations.

    ``profile_items``/``profile_weights``: the partial vector's items, then the synthetic ones.
    ``source`` labels the items (``onboarding`` or ``popular``); ``method`` says how they were
    made (``reconstruction:MultVAE``, ``profile:MultVAE>EASE``, ``continuation:TIGER``,
    ``popular``).
    """

    profile_items: np.ndarray
    profile_weights: np.ndarray
    items: np.ndarray
    scores: np.ndarray
    source: str
    method: str
    seeds: Seeds
    notes: list[str] = field(default_factory=list)


class TextIndex(Protocol):
    """Free text → the best-matching item indices and their match scores (best first)."""

    def search(self, text: str, k: int) -> tuple[np.ndarray, np.ndarray]: ...


def _words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS and len(w) > 1]


class TitleMatcher:
    """Lexical fallback for free text: the share of a title's idf mass the text mentions.

    "I loved star wars and fargo" matches *Star Wars* and *Fargo* with 1.0 each; a title
    counts only when its rare words are there, so "the" or "love" alone match nothing.
    """

    def __init__(self, titles: Sequence[str], min_match: float = 0.5) -> None:
        self.min_match = min_match
        self._tokens = [sorted(set(_words(t))) for t in titles]
        df: dict[str, int] = {}
        for tokens in self._tokens:
            for w in tokens:
                df[w] = df.get(w, 0) + 1
        n = max(len(titles), 1)
        self._idf = {w: math.log((n + 1) / (c + 0.5)) for w, c in df.items()}
        self._postings: dict[str, list[int]] = {}
        for item, tokens in enumerate(self._tokens):
            for w in tokens:
                self._postings.setdefault(w, []).append(item)

    def search(self, text: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        words = set(_words(text))
        touched = {i for w in words for i in self._postings.get(w, ())}
        scored = []
        for item in touched:
            tokens = self._tokens[item]
            total = sum(self._idf[w] for w in tokens)
            hit = sum(self._idf[w] for w in tokens if w in words)
            share = hit / total if total else 0.0
            if share >= self.min_match and share > 0:
                scored.append((share, len(tokens), item))
        scored.sort(key=lambda s: (-s[0], -s[1], s[2]))  # more matched words first on ties
        top = scored[:k]
        return (
            np.array([s[2] for s in top], dtype=np.int64),
            np.array([s[0] for s in top], dtype=np.float64),
        )


class DenseTextIndex:
    """Free text → items through a :class:`recloop.generative.retrieval.DenseIndex`.

    The text is split into phrases (at commas, semicolons, full stops and "and"), each
    phrase and the whole text are searched, and an item counts when its cosine similarity
    to one of them reaches ``min_similarity`` (a heuristic cut: a phrase naming a title
    scores well above it with all-MiniLM-L6-v2, a vague one below). ``items`` maps the
    index's item ids to the model's indices; ids the model does not know are skipped.
    """

    def __init__(self, index: Any, items: IdMap, min_similarity: float = 0.5) -> None:
        self.index = index
        self.items = items
        self.min_similarity = min_similarity

    def search(self, text: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        phrases = [p.strip() for p in _PHRASES.split(text) if len(p.strip()) > 1]
        best: dict[int, float] = {}
        for query in dict.fromkeys([*phrases, text.strip()]):
            for item_id, score in self.index.search(query, k):
                if score < self.min_similarity or item_id not in self.items:
                    continue
                row = int(self.items.index([item_id])[0])
                best[row] = max(best.get(row, -1.0), float(score))
        ranked = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        return (
            np.array([r for r, _ in ranked], dtype=np.int64),
            np.array([v for _, v in ranked], dtype=np.float64),
        )


def dense_text_index(catalog: Catalog, encoder: Any = None) -> tuple[TextIndex | None, str]:
    """A :class:`DenseTextIndex` over ``catalog`` (all-MiniLM-L6-v2 unless ``encoder``), or
    None and the reason when the dense retrieval stack is not available here."""
    try:
        from recloop.generative.retrieval import DenseIndex, MiniLMEncoder
    except ImportError as exc:
        return None, f"dense retrieval unavailable ({exc})"
    try:
        index = DenseIndex.from_catalog(catalog, encoder or MiniLMEncoder())
    except (ImportError, RecloopError, OSError) as exc:
        return None, f"dense index could not be built ({' '.join(str(exc).split())[:200]})"
    return DenseTextIndex(index, catalog.items), "dense"


def parse_answers(text: str, known_genres: Sequence[str]) -> ProfileAnswers:
    """Genre names and decades named in free text ("I like 80s sci-fi" → Sci-Fi, 1980)."""
    lowered = " " + " ".join(_WORD.findall(text.lower().replace("-", " "))) + " "
    by_key = {_genre_key(g): g for g in known_genres}
    found: list[str] = []
    for key, genre in by_key.items():
        if f" {key.replace('-', ' ')} " in lowered or f" {key.replace('-', '')} " in lowered:
            found.append(genre)
    for alias, target in GENRE_ALIASES.items():
        aliased = by_key.get(target)
        if aliased is not None and f" {alias} " in lowered and aliased not in found:
            found.append(aliased)
    decades = []
    for century, digit in _DECADE.findall(text.lower()):
        base = {"18": 1800, "19": 1900, "20": 2000}.get(century, 1900)
        decade = base + 10 * int(digit)
        if decade not in decades:
            decades.append(decade)
    return ProfileAnswers(tuple(found), tuple(decades))


def _genre_key(name: str) -> str:
    return name.strip().lower()


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


class Onboarding:
    """Builds a synthetic starting profile for a new user and recommends from it.

    ``generative`` is a fitted Mult-VAE/Mult-DAE or DiffRec (reconstruction) or TIGER
    (continuation); ``recommender`` is the downstream model that reads the profile when
    ``recommend_from="profile"`` (None: the generative model itself reads it). ``catalog``
    (titles, ``genres``, ``year``) is needed for free text and profile answers;
    ``text_index`` overrides the text matcher (default: the dense index over the catalogue,
    built on the first free text with ``text_encoder`` or all-MiniLM-L6-v2, when the retrieval
    stack is installed; else :class:`TitleMatcher`).
    """

    def __init__(
        self,
        generative: Any,
        *,
        recommender: Any = None,
        catalog: Catalog | None = None,
        config: OnboardingConfig | None = None,
        text_index: TextIndex | None = None,
        text_encoder: Any = None,
    ) -> None:
        if not can_reconstruct(generative) and not isinstance(generative, TIGER):
            raise ConfigError(
                f"onboarding needs a Mult-VAE, Mult-DAE, DiffRec or TIGER model, not "
                f"{type(generative).__name__}"
            )
        if not hasattr(generative, "n_items_"):
            raise ConfigError(f"{type(generative).__name__} is not fitted; call fit() first")
        if recommender is not None and not hasattr(recommender, "n_items_"):
            raise ConfigError(f"{type(recommender).__name__} is not fitted; call fit() first")
        if recommender is not None and int(recommender.n_items_) != int(generative.n_items_):
            raise ConfigError(
                f"the recommender knows {recommender.n_items_} items, the generative model "
                f"{generative.n_items_}"
            )
        if catalog is not None and len(catalog) < int(generative.n_items_):
            raise ConfigError(
                f"the catalog has {len(catalog)} items, the model {generative.n_items_}"
            )
        self.generative = generative
        self.recommender = recommender
        self.catalog = catalog
        self.config = config or OnboardingConfig()
        self.n_items = int(generative.n_items_)
        self.popularity = np.asarray(generative.popularity_, dtype=np.float64)
        self._text_index = text_index
        self._text_encoder = text_encoder
        self.text_matching = "given" if text_index is not None else "not yet needed"

    @property
    def name(self) -> str:
        return type(self.generative).__name__

    @property
    def downstream_name(self) -> str:
        return type(self.recommender or self.generative).__name__

    # -- the partial vector ------------------------------------------------------------
    def text_index(self) -> TextIndex:
        """The matcher for free text: the one given, else the dense index over the catalogue
        when the retrieval stack is available, else :class:`TitleMatcher` (built once)."""
        if self._text_index is None:
            catalog = self._need_catalog("free text")
            dense, why = dense_text_index(catalog, self._text_encoder)
            self.text_matching = "dense" if dense is not None else f"titles: {why}"
            self._text_index = dense or TitleMatcher(catalog.title[: self.n_items])
        return self._text_index

    def _need_catalog(self, what: str) -> Catalog:
        if self.catalog is None:
            raise OnboardingError(f"onboarding from {what} needs a catalogue; none was given")
        return self.catalog

    def known_genres(self) -> list[str]:
        catalog = self._need_catalog("profile answers")
        if "genres" not in catalog.attributes:
            raise OnboardingError("the catalogue has no 'genres' attribute to answer against")
        names = {str(g) for row in catalog.attributes["genres"] for g in _as_list(row)}
        return sorted(names)

    def answer_items(self, answers: ProfileAnswers) -> np.ndarray:
        """The ``answer_items`` most popular items matching every answered question."""
        catalog = self._need_catalog("profile answers")
        keep = np.ones(self.n_items, dtype=bool)
        if answers.genres:
            known = {_genre_key(g): g for g in self.known_genres()}
            wanted = set()
            for genre in answers.genres:
                key = GENRE_ALIASES.get(_genre_key(genre), _genre_key(genre))
                if key not in known:
                    raise OnboardingError(
                        f"unknown genre {genre!r} (known: {', '.join(sorted(known.values()))})"
                    )
                wanted.add(key)
            rows = catalog.attributes["genres"][: self.n_items]
            keep &= np.array(
                [bool(wanted & {_genre_key(str(g)) for g in _as_list(r)}) for r in rows]
            )
        if answers.decades:
            for decade in answers.decades:
                if decade % 10 or not 1800 <= decade <= 2100:
                    raise OnboardingError(
                        f"a decade is written as its first year, e.g. 1980, not {decade}"
                    )
            if "year" not in catalog.attributes:
                raise OnboardingError("the catalogue has no 'year' attribute for decades")
            years = catalog.attributes["year"][: self.n_items]
            decade_of = np.array(
                [(int(y) // 10) * 10 if y is not None and not _is_nan(y) else -1 for y in years]
            )
            keep &= np.isin(decade_of, np.asarray(answers.decades))
        candidates = np.flatnonzero(keep)
        order = np.lexsort((candidates, -self.popularity[candidates]))
        return candidates[order][: self.config.answer_items]

    def seeds(
        self,
        liked_items: Sequence[int] = (),
        text: str | None = None,
        answers: ProfileAnswers | None = None,
    ) -> Seeds:
        """The partial vector from liked item indices, free text and profile answers."""
        cfg = self.config
        liked = np.asarray(list(dict.fromkeys(int(i) for i in liked_items)), dtype=np.int64)
        if len(liked) and (liked.min() < 0 or liked.max() >= self.n_items):
            bad = int(liked[(liked < 0) | (liked >= self.n_items)][0])
            raise OnboardingError(f"liked item index {bad} is outside the {self.n_items} items")
        weights: dict[int, float] = {int(i): 1.0 for i in liked}
        from_text = np.zeros(0, dtype=np.int64)
        answers = answers or ProfileAnswers()
        if text is not None and text.strip():
            found, _ = self.text_index().search(text, cfg.text_items)
            from_text = found[(found >= 0) & (found < self.n_items)]
            for item in from_text:
                weights[int(item)] = max(weights.get(int(item), 0.0), cfg.text_weight)
            if self.catalog is not None and "genres" in self.catalog.attributes:
                parsed = parse_answers(text, self.known_genres())
                answers = ProfileAnswers(
                    tuple(dict.fromkeys((*answers.genres, *parsed.genres))),
                    tuple(dict.fromkeys((*answers.decades, *parsed.decades))),
                )
        from_answers = self.answer_items(answers) if answers else np.zeros(0, dtype=np.int64)
        for item in from_answers:
            weights[int(item)] = max(weights.get(int(item), 0.0), cfg.answer_weight)
        items = np.fromiter(weights, dtype=np.int64, count=len(weights))
        return Seeds(
            items=items,
            weights=np.array([weights[int(i)] for i in items], dtype=np.float32),
            liked=liked,
            from_text=from_text.astype(np.int64),
            from_answers=from_answers.astype(np.int64),
        )

    # -- the synthetic profile -----------------------------------------------------------
    def synthesize(self, partial: np.ndarray) -> tuple[np.ndarray, SyntheticProfile]:
        """Reconstructions (rows × items) of partial vectors and their top-M pseudo-histories.

        A row's pseudo-history is its best ``profile_size`` items outside the partial vector,
        weighted ``profile_weight · r_i / r_best`` with r the reconstruction (softmax
        probabilities for the autoencoders, the denoised values for DiffRec, clipped at 0).
        """
        partial = self._check_partial(partial)
        if isinstance(self.generative, TIGER):
            return self._continue(partial)
        raw = score_vectors(self.generative, partial)
        strength = _strength(self.generative, raw)
        m = self.config.profile_size
        items, weights = [], []
        if m:
            support = sp.csr_matrix(partial)
            top, top_strength = top_k(strength, m, support)
            for row in range(len(partial)):
                keep = top[row] >= 0
                chosen, value = top[row][keep], top_strength[row][keep].astype(np.float64)
                best = value.max() if len(value) else 0.0
                w = value / best if best > 0 else np.zeros(len(value))
                items.append(chosen)
                weights.append((self.config.profile_weight * w).astype(np.float32))
        else:
            items = [np.zeros(0, np.int64) for _ in range(len(partial))]
            weights = [np.zeros(0, np.float32) for _ in range(len(partial))]
        return raw, SyntheticProfile(items, weights)

    def _continue(self, partial: np.ndarray) -> tuple[np.ndarray, SyntheticProfile]:
        """TIGER: the seed sequence (strongest last) continued by constrained beam search."""
        model: TIGER = self.generative
        histories = [_seed_sequence(row) for row in partial]
        queries = _queries(histories)
        m = max(self.config.profile_size, 1)
        found, logp, _ = model.recommend_labelled(queries, m)
        raw = np.full((len(partial), self.n_items), -np.inf, dtype=np.float32)
        items, weights = [], []
        for row in range(len(partial)):
            keep = found[row] >= 0
            chosen, value = found[row][keep], logp[row][keep].astype(np.float64)
            raw[row, chosen] = value
            w = np.exp(value - value.max()) if len(value) else np.zeros(0)
            m_row = self.config.profile_size
            items.append(chosen[:m_row])
            weights.append((self.config.profile_weight * w[:m_row]).astype(np.float32))
        return raw, SyntheticProfile(items, weights)

    def profile_vectors(self, partial: np.ndarray, profile: SyntheticProfile) -> np.ndarray:
        """Partial vectors with their synthetic pseudo-history added."""
        out = np.array(partial, dtype=np.float32, copy=True)
        for row, (items, weights) in enumerate(zip(profile.items, profile.weights, strict=True)):
            out[row, items] = np.maximum(out[row, items], weights)
        return out

    # -- recommending --------------------------------------------------------------------
    def score_batch(
        self, partial: np.ndarray, k: int = 100, exclude: sp.csr_matrix | None = None
    ) -> tuple[np.ndarray, SyntheticProfile]:
        """Scores (rows × items) for partial vectors, and their synthetic profiles.

        With ``recommend_from="generative"`` the scores are the generative model's own (its
        reconstruction; TIGER's top ``k`` continuations), else the downstream model's scores
        of the profile vectors. Rows with an empty partial vector get popularity.
        """
        partial = self._check_partial(partial)
        raw, profile = self.synthesize(partial)
        if self.mode == "generative":
            scores = (
                self._tiger_scores(self.generative, partial, k, exclude)
                if isinstance(self.generative, TIGER)
                else raw
            )
        else:
            downstream = self.recommender or self.generative
            vectors = self.profile_vectors(partial, profile)
            if isinstance(downstream, TIGER):
                scores = self._tiger_scores(downstream, vectors, k, exclude)
            else:
                scores = score_vectors(downstream, vectors)
        empty = ~(partial > 0).any(axis=1)
        if empty.any():
            scores = np.array(scores, dtype=np.float32, copy=True)
            scores[empty] = self.popularity
        return scores, profile

    def recommend_batch(
        self,
        partial: np.ndarray,
        k: int,
        exclude: sp.csr_matrix | None = None,
    ) -> tuple[np.ndarray, np.ndarray, SyntheticProfile]:
        """Top-``k`` items (rows × k) and scores for partial vectors, and their profiles.

        ``exclude`` (rows × items) is what each row may not get (the liked items, at least).
        Rows with an empty partial vector get popularity.
        """
        scores, profile = self.score_batch(partial, k, exclude)
        items, top = top_k(scores, k, exclude)
        return items, top, profile

    def _tiger_scores(
        self, model: TIGER, vectors: np.ndarray, k: int, exclude: sp.csr_matrix | None
    ) -> np.ndarray:
        histories = [_seed_sequence(row) for row in vectors]
        queries = _queries(histories)
        ex = (
            Exclusions(exclude.indptr.astype(np.int64), exclude.indices.astype(np.int32))
            if exclude is not None
            else _none(len(vectors))
        )
        found, logp, _ = model.recommend_labelled(queries, k, ex)
        scores = np.full((len(vectors), self.n_items), -np.inf, dtype=np.float32)
        for row in range(len(vectors)):
            keep = found[row] >= 0
            scores[row, found[row][keep]] = logp[row][keep]
        return scores

    @property
    def mode(self) -> Literal["generative", "profile"]:
        """Where recommendations come from (``"auto"`` resolved, see the config)."""
        if self.config.recommend_from == "auto":
            return "profile" if self.recommender is not None else "generative"
        return self.config.recommend_from

    @property
    def method(self) -> str:
        """How the recommendations are made, e.g. ``profile:MultVAE>EASE``."""
        if isinstance(self.generative, TIGER):
            base = f"continuation:{self.name}"
        else:
            base = f"reconstruction:{self.name}"
        if self.mode == "profile":
            kind = "continuation" if isinstance(self.generative, TIGER) else "profile"
            return f"{kind}:{self.name}>{self.downstream_name}"
        return base

    def onboard(
        self,
        liked_items: Sequence[int] = (),
        text: str | None = None,
        answers: ProfileAnswers | None = None,
        k: int = 10,
        exclude: Sequence[int] = (),
    ) -> OnboardingResult:
        """One new user's synthetic profile and top-``k`` items (never a liked or excluded
        item); popularity, labelled, when nothing usable was given."""
        if k < 1:
            raise ConfigError(f"k must be at least 1, not {k}")
        seeds = self.seeds(liked_items, text, answers)
        notes = []
        if text is not None and text.strip() and not len(seeds.from_text):
            notes.append("no catalogue title matched the text")
        banned = np.union1d(seeds.liked, np.asarray(list(exclude), dtype=np.int64))
        banned = banned[(banned >= 0) & (banned < self.n_items)].astype(np.int64)
        ex = sp.csr_matrix(
            (np.ones(len(banned), np.float32), banned, np.array([0, len(banned)])),
            shape=(1, self.n_items),
        )
        if not len(seeds):
            items, scores = top_k(self.popularity[None, :], k, ex)
            keep = items[0] >= 0
            return OnboardingResult(
                np.zeros(0, np.int64), np.zeros(0, np.float32), items[0][keep],
                scores[0][keep], POPULAR_SOURCE, "popular", seeds,
                [*notes, "nothing usable was given: popular items"],
            )  # fmt: skip
        items, scores, profile = self.recommend_batch(seeds.vector(self.n_items), k, ex)
        keep = items[0] >= 0
        return OnboardingResult(
            profile_items=np.concatenate([seeds.items, profile.items[0]]).astype(np.int64),
            profile_weights=np.concatenate([seeds.weights, profile.weights[0]]).astype(np.float32),
            items=items[0][keep],
            scores=scores[0][keep],
            source=ONBOARDING_SOURCE,
            method=self.method,
            seeds=seeds,
            notes=notes,
        )

    def _check_partial(self, partial: np.ndarray) -> np.ndarray:
        partial = np.asarray(partial, dtype=np.float32)
        if partial.ndim != 2 or partial.shape[1] != self.n_items:
            raise ConfigError(
                f"partial vectors must be (rows, {self.n_items}), not {partial.shape}"
            )
        if not np.isfinite(partial).all() or (partial < 0).any():
            raise ConfigError("partial vectors must hold finite, non-negative weights")
        return partial


def can_reconstruct(model: Any) -> bool:
    """Whether ``model`` rebuilds a full interaction vector from a partial one."""
    return isinstance(model, MultDAE | DiffRec)


def score_vectors(model: Any, vectors: np.ndarray) -> np.ndarray:
    """Scores (rows × items) of weighted interaction vectors.

    Mult-VAE/Mult-DAE and DiffRec read the weights through their networks, EASE as
    ``vectors @ B``; any other scoring model sees only which items are present (its queries
    are binary histories).
    """
    x = np.asarray(vectors, dtype=np.float32)
    if isinstance(model, MultDAE | DiffRec):
        net = model.net_
        was_training = net.training
        if was_training:
            net.eval()
        device = next(net.parameters()).device
        out = np.empty(x.shape, dtype=np.float32)
        with torch.no_grad():
            for start in range(0, len(x), 256):
                batch = torch.from_numpy(x[start : start + 256]).to(device)
                if isinstance(model, DiffRec):
                    got = net.denoise(batch, model.config.inference_steps)  # type: ignore[operator]
                else:
                    mu, _ = net.encode(batch)  # type: ignore[operator]
                    got = net.decode(mu)  # type: ignore[operator]
                out[start : start + len(batch)] = got.float().cpu().numpy()
        if was_training:
            net.train()
        return out
    if isinstance(model, EASE):
        return np.asarray(x @ model.weights_, dtype=np.float32)
    if isinstance(model, ScoringRecommender):
        rows = [np.flatnonzero(row > 0) for row in x]
        return np.asarray(model.score(_queries(rows)), np.float32)
    raise ConfigError(f"cannot score interaction vectors with {type(model).__name__}")


def _strength(model: Any, raw: np.ndarray) -> np.ndarray:
    """Non-negative reconstruction strengths: softmax probabilities for the autoencoders."""
    if isinstance(model, MultDAE):
        shifted = raw - raw.max(axis=1, keepdims=True)
        probs = np.exp(shifted)
        return np.asarray(probs / probs.sum(axis=1, keepdims=True), dtype=np.float32)
    return np.asarray(np.clip(raw, 0.0, None), dtype=np.float32)


def _seed_sequence(row: np.ndarray) -> np.ndarray:
    """Items of a weighted vector ordered weakest first, so the strongest are most recent."""
    items = np.flatnonzero(row > 0)
    return items[np.lexsort((items, row[items]))].astype(np.int32)


def _queries(histories: Sequence[np.ndarray]) -> Queries:
    """Queries of unknown users (−1) with the given item sequences."""
    indptr = np.zeros(len(histories) + 1, dtype=np.int64)
    np.cumsum([len(h) for h in histories], out=indptr[1:])
    flat = np.concatenate([*histories, np.zeros(0, np.int32)]).astype(np.int32)
    return Queries(np.full(len(histories), -1, dtype=np.int32), indptr, flat)


def _none(n: int) -> Exclusions:
    return Exclusions(np.zeros(n + 1, dtype=np.int64), np.zeros(0, dtype=np.int32))


def _is_nan(value: Any) -> bool:
    try:
        return bool(np.isnan(value))
    except TypeError:
        return False
