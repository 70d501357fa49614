"""Retrieval-augmented re-ranking: a language model re-orders any source's top-N candidates.

The user's recent history titles go into a prompt (as an untrusted data block, under
:data:`recloop.generative.safety.SYSTEM_GUARD`), and every candidate title is scored as the
assistant's answer with one batched :meth:`TextGenerator.score` call per ``batch_size``
titles. The LLM score is then fused with the source's own score and the top-N re-ordered;
candidates below the top-N keep their place after it, and every candidate keeps its source
label.

How the summed log-probability is normalised (``normalisation``):

- ``"pmi"`` (default): ``log p(title | history) − log p(title | no history)``, the pointwise
  mutual information between the history and the title. Both terms sum over the same tokens,
  so title length cancels exactly, and so does how likely the title's wording is in general
  (a short, common title is not preferred just because it is cheap to spell). This needs no
  token counts, which :class:`TextGenerator` does not expose; the history-free term depends
  on the title only and is cached, so it costs one extra scoring per distinct title, ever.
- ``"per_char"``: the summed log-probability per character of the title, a token-count proxy
  (English runs at roughly four characters a token) that also removes most of the length
  bias, but not the wording prior.
- ``"sum"``: the raw sum, which prefers short titles; kept for comparison.

Fusion (``fusion``): ``"rank"`` mixes the two rankings' normalised positions, ``"zscore"``
their standardised scores, both as ``(1 − weight) · source + weight · llm``; ``weight = 1``
is the LLM alone, ``weight = 0`` the source's order. A backend that cannot score raises
:class:`RerankError` (a :class:`GenerationError`), so the caller falls back to the source's
order visibly, never silently.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

import numpy as np
from scipy.stats import rankdata

from recloop.errors import ConfigError
from recloop.generative.llm import ConsentError, GenerationError, Message, TextGenerator
from recloop.generative.safety import SYSTEM_GUARD, sanitize, untrusted

Normalisation = Literal["pmi", "per_char", "sum"]
Fusion = Literal["rank", "zscore"]
SYSTEM_PROMPT = "You recommend films. " + SYSTEM_GUARD
NEUTRAL_PROMPT = "Name a film."
TITLE_CHARS = 120  # titles are cut to this length before scoring
_PRIOR_CACHE = 50_000  # history-free title scores kept (one float each)
RERANKER = "generative.rerank"
"""``state.extensions`` key of a service worker's :class:`LLMReranker`."""


class RerankError(GenerationError):
    """LLM re-ranking could not run: the backend cannot score, or answered nonsense."""


@dataclass(frozen=True, slots=True)
class RawScores:
    """What the generator said about some titles: summed log-probabilities after the history
    prompt, after the neutral prompt (None unless PMI needs it), and each title's length."""

    summed: np.ndarray
    prior: np.ndarray | None
    chars: np.ndarray


@dataclass(frozen=True, slots=True)
class RerankCandidate:
    """One candidate from a source: its id, the title the LLM reads, its score and source."""

    item_id: str
    title: str
    score: float
    source: str


@dataclass(frozen=True, slots=True)
class RerankedCandidate:
    """A candidate after re-ranking.

    ``score`` is the fused score (the list is sorted by it within the top-N); ``source`` is
    the candidate's own source label, unchanged; ``llm_score`` is the normalised LLM score
    (None below the top-N, which is not scored); ``source_rank`` its position before.
    """

    item_id: str
    title: str
    source: str
    score: float
    source_score: float
    llm_score: float | None
    source_rank: int


class LLMReranker:
    """Re-orders the top ``top_n`` candidates of any source with a language model's scores.

    ``weight`` is the LLM's share in the fusion (1: the LLM alone); ``batch_size`` is how
    many titles go to the generator per :meth:`TextGenerator.score` call; ``history_len``
    how many recent history titles the prompt shows.
    """

    def __init__(
        self,
        generator: TextGenerator,
        top_n: int = 20,
        weight: float = 0.5,
        batch_size: int = 20,
        *,
        normalisation: Normalisation = "pmi",
        fusion: Fusion = "rank",
        history_len: int = 5,
    ) -> None:
        if top_n < 1:
            raise ConfigError(f"top_n must be at least 1, not {top_n}")
        if not 0.0 <= weight <= 1.0 or math.isnan(weight):
            raise ConfigError(f"weight must be within [0, 1], not {weight}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, not {batch_size}")
        if normalisation not in ("pmi", "per_char", "sum"):
            raise ConfigError(f"normalisation must be pmi, per_char or sum, not {normalisation!r}")
        if fusion not in ("rank", "zscore"):
            raise ConfigError(f"fusion must be rank or zscore, not {fusion!r}")
        if history_len < 1:
            raise ConfigError(f"history_len must be at least 1, not {history_len}")
        self.generator = generator
        self.top_n = top_n
        self.weight = float(weight)
        self.batch_size = batch_size
        self.normalisation: Normalisation = normalisation
        self.fusion: Fusion = fusion
        self.history_len = history_len
        self._prior: OrderedDict[str, float] = OrderedDict()
        self._prior_lock = threading.Lock()  # the service re-ranks from several threads

    # -- prompts ----------------------------------------------------------------------
    def messages(self, history_titles: Sequence[str]) -> list[Message]:
        """The prompt: the ``history_len`` most recent titles (oldest first) as a data block."""
        recent = [t for t in history_titles if t.strip()][-self.history_len :]
        if not recent:
            raise ConfigError("LLM re-ranking needs at least one history title")
        listing = "; ".join(
            f"{i}. {sanitize(t, TITLE_CHARS).text}" for i, t in enumerate(recent, 1)
        )
        user = (
            "Films the user watched, oldest first:\n"
            + untrusted("history", listing, max_chars=len(listing) + 1)
            + "\nName the film they will watch next."
        )
        return [Message("system", SYSTEM_PROMPT), Message("user", user)]

    @staticmethod
    def neutral_messages() -> list[Message]:
        """The history-free prompt whose title scores are the PMI baseline."""
        return [Message("system", SYSTEM_PROMPT), Message("user", NEUTRAL_PROMPT)]

    # -- scoring ----------------------------------------------------------------------
    def _score(self, messages: Sequence[Message], titles: Sequence[str]) -> np.ndarray:
        """Summed log-probabilities of ``titles`` after ``messages``, in batches."""
        out = np.empty(len(titles), dtype=np.float64)
        for start in range(0, len(titles), self.batch_size):
            batch = list(titles[start : start + self.batch_size])
            try:
                got = self.generator.score(messages, batch)
            except GenerationError as exc:
                raise RerankError(
                    f"LLM re-ranking unavailable: backend {self.generator.name!r} cannot "
                    f"score ({exc})"
                ) from exc
            try:
                values = np.asarray(got, dtype=np.float64)
            except (TypeError, ValueError):
                values = np.full(0, np.nan)
            if values.shape != (len(batch),) or not np.isfinite(values).all():
                raise RerankError(
                    f"LLM re-ranking unavailable: backend {self.generator.name!r} returned "
                    f"{values.shape[0] if values.ndim == 1 else values.shape} scores, not "
                    f"{len(batch)} finite ones"
                )
            out[start : start + len(batch)] = values
        return out

    def _prior_scores(self, titles: Sequence[str]) -> np.ndarray:
        """History-free scores of ``titles``, from the cache where possible."""
        with self._prior_lock:
            known = {t: self._prior[t] for t in titles if t in self._prior}
        missing = list(dict.fromkeys(t for t in titles if t not in known))
        if missing:  # scored outside the lock: another thread may score the same titles
            scored = self._score(self.neutral_messages(), missing)
            with self._prior_lock:
                for title, value in zip(missing, scored, strict=True):
                    self._prior[title] = known[title] = float(value)
                while len(self._prior) > _PRIOR_CACHE:
                    self._prior.popitem(last=False)
        return np.array([known[t] for t in titles], dtype=np.float64)

    def raw_scores(
        self,
        history_titles: Sequence[str],
        titles: Sequence[str],
        *,
        prior: bool | None = None,
        consent: bool = False,
    ) -> RawScores:
        """The generator's summed log-probabilities of ``titles`` for this history (and after
        the neutral prompt when ``prior``, by default when the normalisation is PMI).

        The history is the user's personal data: a hosted backend gets it only with the
        user's generative ``consent`` (else :class:`ConsentError`, a GenerationError)."""
        if self.generator.hosted and not consent:
            raise ConsentError(
                f"backend {self.generator.name!r} is hosted and the user has not given "
                "generative consent; their history may not be sent to it for re-ranking"
            )
        clean = [sanitize(t, TITLE_CHARS).text or "?" for t in titles]
        chars = np.array([len(t) for t in clean], dtype=np.float64)
        if not clean:
            empty = np.zeros(0, dtype=np.float64)
            return RawScores(empty, empty, chars)
        summed = self._score(self.messages(history_titles), clean)
        want_prior = self.normalisation == "pmi" if prior is None else prior
        return RawScores(summed, self._prior_scores(clean) if want_prior else None, chars)

    def normalise(self, raw: RawScores) -> np.ndarray:
        """The normalised LLM score of each title (see the module docstring)."""
        if self.normalisation == "sum":
            return raw.summed
        if self.normalisation == "per_char":
            return raw.summed / np.maximum(raw.chars, 1.0)
        if raw.prior is None:
            raise ConfigError("PMI normalisation needs the history-free scores (prior=True)")
        return raw.summed - raw.prior

    def llm_scores(
        self, history_titles: Sequence[str], titles: Sequence[str], *, consent: bool = False
    ) -> np.ndarray:
        """Normalised LLM scores of ``titles`` for this history (higher is more likely next)."""
        return self.normalise(self.raw_scores(history_titles, titles, consent=consent))

    # -- the re-ranking -----------------------------------------------------------------
    def fuse(self, source_scores: np.ndarray, llm_scores: np.ndarray) -> np.ndarray:
        """Fused scores of candidates in source order (ties later break by source order)."""
        src = _rank_score(len(source_scores)) if self.fusion == "rank" else _z(source_scores)
        llm = _rank_score(len(llm_scores), llm_scores) if self.fusion == "rank" else _z(llm_scores)
        return (1.0 - self.weight) * src + self.weight * llm

    def rerank(
        self,
        history_titles: Sequence[str],
        candidates: Sequence[RerankCandidate],
        *,
        consent: bool = False,
    ) -> list[RerankedCandidate]:
        """``candidates`` (a source's list, best first) with the top-N re-ordered.

        Raises :class:`RerankError` when the backend cannot score, :class:`ConsentError`
        when it is hosted and ``consent`` (the user's generative consent) is false, both
        :class:`GenerationError`; :class:`recloop.errors.ConfigError` when the history has
        no title.
        """
        head = candidates[: self.top_n]
        if not head:
            return []
        llm = self.llm_scores(history_titles, [c.title for c in head], consent=consent)
        return self.rerank_scored(candidates, llm)

    def rerank_scored(
        self, candidates: Sequence[RerankCandidate], llm_scores: np.ndarray
    ) -> list[RerankedCandidate]:
        """The re-ordering itself, given the normalised LLM scores of the top-N candidates."""
        head = list(candidates[: self.top_n])
        tail = list(candidates[self.top_n :])
        llm = np.asarray(llm_scores, dtype=np.float64)
        if llm.shape != (len(head),):
            raise ConfigError(f"{llm.shape} LLM scores for {len(head)} candidates")
        source = np.array([c.score for c in head], dtype=np.float64)
        fused = self.fuse(source, llm)
        order = np.lexsort((np.arange(len(head)), -fused))  # fused desc, then source order
        out = [
            RerankedCandidate(
                item_id=head[i].item_id,
                title=head[i].title,
                source=head[i].source,
                score=float(fused[i]),
                source_score=head[i].score,
                llm_score=float(llm[i]),
                source_rank=int(i),
            )
            for i in order
        ]
        floor = float(fused.min()) if len(fused) else 0.0
        for j, cand in enumerate(tail):  # below the top-N: the source's order, lower scores
            out.append(
                RerankedCandidate(
                    item_id=cand.item_id,
                    title=cand.title,
                    source=cand.source,
                    score=floor - 1.0 - j,
                    source_score=cand.score,
                    llm_score=None,
                    source_rank=len(head) + j,
                )
            )
        return out


def _rank_score(n: int, scores: np.ndarray | None = None) -> np.ndarray:
    """Positions mapped to [0, 1], best 1: of the given order, or of ``scores`` (ties share)."""
    if n == 1:
        return np.ones(1)
    if scores is None:
        return 1.0 - np.arange(n, dtype=np.float64) / (n - 1)
    # average rank of ties, so equal LLM scores do not pretend to an order
    ranks = rankdata(scores, method="average")  # 1 = lowest
    return np.asarray((ranks - 1.0) / (n - 1), dtype=np.float64)


def _z(values: np.ndarray) -> np.ndarray:
    """Standardised values (non-finite ones count as the lowest); all-equal values give 0."""
    finite = np.isfinite(values)
    if not finite.all():
        low = float(values[finite].min()) - 1.0 if finite.any() else 0.0
        values = np.where(finite, values, low)
    std = float(values.std())
    if not np.isfinite(std) or std == 0.0:
        return np.zeros(len(values), dtype=np.float64)
    return np.asarray((values - values.mean()) / std, dtype=np.float64)


class _Proposed(Protocol):
    """Any source's candidate: an item id, a score and a source label."""

    @property
    def item_id(self) -> str: ...

    @property
    def score(self) -> float: ...

    @property
    def source(self) -> str: ...


Proposed = TypeVar("Proposed", bound=_Proposed)


def display_title(title: str, year: Any = None) -> str:
    """``Title (year)``: what the prompt shows for an item (the year when it has one)."""
    title = (title or "").strip()
    if isinstance(year, int | float) and not isinstance(year, bool) and math.isfinite(year):
        return f"{title} ({int(year)})" if title else str(int(year))
    return title


def catalog_titles(catalog: Any) -> list[str]:
    """``Title (year)`` of every item of a :class:`~recloop.data.types.Catalog`, by item index:
    what the prompt and the candidates show."""
    years = catalog.attributes.get("year", [None] * len(catalog))
    return [display_title(t, y) for t, y in zip(catalog.title, years, strict=True)]


def rerank_items(
    reranker: LLMReranker,
    history_titles: Sequence[str],
    candidates: Sequence[Proposed],
    titles: Mapping[str, str],
    *,
    consent: bool = False,
) -> list[Proposed]:
    """Re-order any source's candidate objects (``item_id``, ``score``, ``source``) and give
    them back, each with its own source label; dataclass candidates get the fused score
    (``dataclasses.replace``), others come back as they were. ``titles`` maps item ids to
    what the LLM reads (the id itself when missing). Raises as :meth:`LLMReranker.rerank`."""
    wrapped = [
        RerankCandidate(c.item_id, titles.get(c.item_id) or c.item_id, float(c.score), c.source)
        for c in candidates
    ]
    ranked = reranker.rerank(history_titles, wrapped, consent=consent)
    by_rank = list(candidates)
    out: list[Proposed] = []
    for r in ranked:
        original = by_rank[r.source_rank]
        if dataclasses.is_dataclass(original) and not isinstance(original, type):
            out.append(dataclasses.replace(original, score=r.score))
        else:
            out.append(original)
    return out
