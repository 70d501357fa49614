"""Explanations of recommendations: evidence first, then text generated from it only.

The template registered here for the task ``"explanation"`` turns an :class:`Evidence` into
one or two plain sentences ("Because you watched Toy Story (1995) and Aladdin (1992): like
them, it is an animated children's comedy from the 1990s."); it is deterministic and names
nothing outside the evidence. A language model gets the same evidence as a prompt whose item
text sits in untrusted-data blocks under :data:`~recloop.generative.safety.SYSTEM_GUARD`.

:class:`Explainer` asks the generator, checks the text with the
:class:`~recloop.generative.faithfulness.FaithfulnessChecker`, asks once more (telling the
model what it named wrongly) when the text is unfaithful, and otherwise falls back to the
template, saying so in the :class:`Explanation`. The template also answers when the policy
reserves the model for others, when the user has not consented to a hosted backend, when the
budget is spent, and when the backend fails.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from recloop.generative.budget import Budget, ExplanationCache
from recloop.generative.evidence import Driver, Evidence, ItemFacts
from recloop.generative.faithfulness import FaithfulnessChecker, Verdict
from recloop.generative.llm import (
    ConsentError,
    Generation,
    GenerationError,
    GenerationRequest,
    Message,
    TemplateGenerator,
    TextGenerator,
    check_consent,
    generate_many,
    register_template,
)
from recloop.generative.openai_chat import DeadlineExceeded
from recloop.generative.safety import SYSTEM_GUARD, sanitize, untrusted

TASK = "explanation"
PROMPT_VERSION = "explanation-v1"
MAX_TEXT_CHARS = 600

# A genre as the head noun of a phrase, most preferred first, and as a modifier before it.
_HEADS: dict[str, str] = {
    "comedy": "comedy",
    "thriller": "thriller",
    "drama": "drama",
    "musical": "musical",
    "western": "western",
    "documentary": "documentary",
    "mystery": "mystery",
    "adventure": "adventure",
    "fantasy": "fantasy",
    "romance": "romance",
    "film-noir": "film noir",
    "horror": "horror film",
    "sci-fi": "sci-fi film",
    "action": "action film",
    "war": "war film",
    "crime": "crime film",
    "children's": "children's film",
    "animation": "animated film",
}
_MODIFIERS: dict[str, str] = {
    "animation": "animated",
    "romance": "romantic",
    "drama": "dramatic",
    "film-noir": "noir",
}


# ---------------------------------------------------------------------------- template
def genre_phrase(genres: Sequence[str], *, article: bool = True) -> str:
    """``["Animation", "Comedy"]`` -> ``"an animated comedy"`` (at most three genres)."""
    if not genres:
        return "a title" if article else "title"
    keys = [g.lower() for g in genres]
    head = next((k for k in _HEADS if k in keys), None)
    if head is None:
        head_text = f"{genres[0].lower()} title"
        rest = keys[1:]
    else:
        head_text = _HEADS[head]
        rest = [k for k in keys if k != head]
    rest.sort(key=lambda k: k != "animation")  # "an animated children's comedy"
    modifiers = [_MODIFIERS.get(k, k) for k in rest[:2]]
    phrase = " ".join([*modifiers, head_text])
    if not article:
        return phrase
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def _join(names: Sequence[str]) -> str:
    if len(names) <= 1:
        return "".join(names)
    return f"{', '.join(names[:-1])} and {names[-1]}"


def _period(item: ItemFacts, drivers: Sequence[Driver]) -> str:
    if item.year is None or not drivers:
        return ""
    if all(d.same_year for d in drivers):
        return f"from {item.year}"
    if all(d.same_decade for d in drivers):
        return f"from the {item.year - item.year % 10}s"
    return ""


def render_explanation(evidence: Evidence) -> str:
    """The template text for ``evidence``: grounded, deterministic, one or two sentences."""
    item = evidence.item
    if evidence.source == "popular":
        return _popular(evidence)
    if not evidence.drivers:
        return _without_drivers(evidence)
    named = evidence.drivers[:2]
    them = "them" if len(named) > 1 else "it"
    because = f"Because you watched {_join([d.item.display for d in named])}"
    common = [g for g in item.genres if all(g in d.shared_genres for d in named)]
    period = _period(item, named)
    if common:
        clause = f"like {them}, it is {genre_phrase(common[:3])}"
        clause += f" {period}" if period else ""
    elif period:
        clause = f"like {them}, it is {period}"
    elif named[0].shared_genres:
        clause = f"like {named[0].item.name}, it is {genre_phrase(named[0].shared_genres[:3])}"
    elif evidence.method in ("item_weights", "leave_one_out"):
        clause = f"viewers who watched {them} often watch {item.name} too"
    else:
        clause = f"{item.name} is close to {them} in the catalogue"
    text = f"{because}: {clause}."
    prefix = named[0].shared_sid_prefix
    if prefix:
        codes = "-".join(str(c) for c in prefix)
        text += (
            f" It also sits next to {named[0].item.name} in the catalogue's Semantic-ID index "
            f"(shared prefix {codes})."
        )
    return text


def _popular(evidence: Evidence) -> str:
    """The popularity source: say so first; a similar watched item may follow."""
    item = evidence.item
    text = f"{item.display} is one of the most popular titles with other viewers"
    similar = next((d for d in evidence.drivers if d.shared_genres), None)
    if similar is not None:
        phrase = genre_phrase(similar.shared_genres[:3])
        return f"{text}, and like {similar.item.display}, which you watched, it is {phrase}."
    return f"{text}; it is {genre_phrase(item.genres[:3])}." if item.genres else f"{text}."


def _without_drivers(evidence: Evidence) -> str:
    item = evidence.item
    source = evidence.source or "the recommender"
    if item.genres:
        return f"Recommended by {source}: {item.display}, {genre_phrase(item.genres[:3])}."
    return f"Recommended by {source}: {item.display}."


@register_template(TASK)
def explanation_template(evidence: Mapping[str, Any]) -> str:
    """The registered renderer: the evidence dict (``Evidence.to_dict()``) to text."""
    return render_explanation(Evidence.from_dict(evidence))


# ---------------------------------------------------------------------------- prompt
_INSTRUCTIONS = (
    "You explain to a user why a movie was recommended to them. Write one or two short "
    "sentences addressed to the user as 'you'. Use only the facts given. Name only the "
    "titles, genres and years listed as allowed names; never name any other movie, person, "
    "studio, award, place or year. Do not invent plot details."
)


def _facts_line(facts: ItemFacts) -> str:
    parts = [facts.display]
    if facts.genres:
        parts.append("genres: " + ", ".join(facts.genres))
    for name, values in facts.attributes:
        parts.append(f"{name}: {', '.join(values)}")
    return "; ".join(parts)


def explanation_messages(evidence: Evidence) -> tuple[Message, ...]:
    """The chat prompt for ``evidence``: instructions, then every catalogue text as data."""
    blocks = [untrusted("recommended item", _facts_line(evidence.item))]
    for n, driver in enumerate(evidence.drivers, start=1):
        blocks.append(untrusted(f"watched item {n}", _facts_line(driver.item)))
    shared = []
    if evidence.shared_genres:
        shared.append("genres " + ", ".join(evidence.shared_genres))
    if evidence.shared_decade:
        shared.append(f"decade {evidence.shared_decade}")
    if evidence.shared_attributes:
        shared.append(", ".join(f"{name} {value}" for name, value in evidence.shared_attributes))
    if shared:
        blocks.append(untrusted("shared with the watched items", "; ".join(shared)))
    blocks.append(untrusted("allowed names", "; ".join(evidence.allowed_names), max_chars=2000))
    if evidence.drivers:
        task = "Explain why the recommended item suits someone who watched the watched items."
    else:
        task = "The user has no history; explain briefly what the recommended item is."
    user = "\n".join([*blocks, task])
    return (Message("system", f"{SYSTEM_GUARD} {_INSTRUCTIONS}"), Message("user", user))


def _retry_messages(
    messages: tuple[Message, ...], rejected: str, problem: str
) -> tuple[Message, ...]:
    feedback = (
        f"That answer is not allowed: {problem}.\n"
        + untrusted("rejected names", rejected or "none")
        + "\nWrite the explanation again, naming only the allowed names."
    )
    return (*messages, Message("assistant", rejected), Message("user", feedback))


# ---------------------------------------------------------------------------- explainer
@dataclass(frozen=True, slots=True)
class Explanation:
    """An explanation shown to a user, with how it was made.

    ``faithful`` is the checker's verdict on ``text``; ``fallback_used`` says the template
    replaced the model's text, and ``reason`` why (policy, consent, unfaithful, budget,
    error). ``attempt_faithful`` holds the verdict on each text the model produced (before
    any fallback); ``rejected`` the names those attempts got wrong.
    """

    text: str
    evidence: Evidence
    backend: str
    model: str
    faithful: bool
    attempts: int
    fallback_used: bool
    generated: bool = True
    cached: bool = False
    reason: str | None = None
    attempt_faithful: tuple[bool, ...] = ()
    rejected: tuple[str, ...] = ()
    tokens: int = 0
    latency_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "evidence": self.evidence.to_dict(),
            "backend": self.backend,
            "model": self.model,
            "faithful": self.faithful,
            "attempts": self.attempts,
            "fallback_used": self.fallback_used,
            "generated": self.generated,
            "cached": self.cached,
            "reason": self.reason,
            "attempt_faithful": list(self.attempt_faithful),
            "rejected": list(self.rejected),
        }


_CACHED_FIELDS = ("text", "backend", "model", "faithful", "attempts", "fallback_used", "reason")


class Explainer:
    """Generate, check, regenerate once, else the template (see the module docstring).

    ``cache`` (optional) keeps finished explanations by content hash; ``scope`` is appended
    to every cache key (the service passes the user's cache scope, so erasing the user purges
    their explanations); ``max_tokens`` caps each generation (a :class:`Budget` may lower it
    further).
    """

    def __init__(
        self,
        generator: TextGenerator,
        checker: FaithfulnessChecker,
        max_attempts: int = 2,
        *,
        cache: ExplanationCache | None = None,
        scope: str = "",
        max_tokens: int = 96,
        temperature: float = 0.0,
    ) -> None:
        if max_attempts < 1:
            raise GenerationError(f"max_attempts must be at least 1, not {max_attempts}")
        self.generator = generator
        self.checker = checker
        self.max_attempts = max_attempts
        self.cache = cache
        self.scope = scope
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.template = TemplateGenerator()

    @property
    def uses_model(self) -> bool:
        """False when the generator is itself the template."""
        return self.generator.name != self.template.name

    def explain(
        self,
        evidence: Evidence,
        *,
        use_llm: bool = True,
        consent: bool = False,
        budget: Budget | None = None,
    ) -> Explanation:
        """The explanation to show for ``evidence``.

        ``use_llm`` is the policy's decision; ``consent`` the user's generative consent (a
        hosted backend never sees their history without it); ``budget`` this request's
        allowance.
        """
        if not self.uses_model:
            return self._cached_or(
                evidence, "template", "template", lambda: self._template(evidence)
            )
        if not use_llm:
            return self._template(evidence, reason="policy")
        request = self._request(evidence)
        try:
            check_consent(self.generator, request, consent)
        except ConsentError:
            return self._template(evidence, reason="consent")
        model = str(getattr(self.generator, "model", self.generator.name))
        return self._cached_or(
            evidence, self.generator.name, model, lambda: self._generate(evidence, request, budget)
        )

    # -- steps ------------------------------------------------------------------------
    def _cached_or(self, evidence: Evidence, backend: str, model: str, make: Any) -> Explanation:
        key = self._key(evidence, backend, model)
        if key is None:
            made: Explanation = make()
            return made
        stored = self._cached(key, evidence)
        if stored is not None:
            return stored
        result: Explanation = make()
        self._store(key, result)
        return result

    def _key(self, evidence: Evidence, backend: str, model: str) -> str | None:
        if self.cache is None:
            return None
        return self.cache.key(evidence, backend, model, PROMPT_VERSION) + self.scope

    def _cached(self, key: str, evidence: Evidence) -> Explanation | None:
        assert self.cache is not None
        stored = self.cache.get(key)
        if stored is None or not all(name in stored for name in _CACHED_FIELDS):
            return None
        return Explanation(
            text=str(stored["text"]),
            evidence=evidence,
            backend=str(stored["backend"]),
            model=str(stored["model"]),
            faithful=bool(stored["faithful"]),
            attempts=int(stored["attempts"]),
            fallback_used=bool(stored["fallback_used"]),
            cached=True,
            reason=stored["reason"],
        )

    def _store(self, key: str, result: Explanation) -> None:
        if self.cache is not None and result.reason not in ("budget", "error"):
            # budget and error are transient: try again next time
            self.cache.put(key, {name: getattr(result, name) for name in _CACHED_FIELDS})

    def _request(
        self, evidence: Evidence, messages: tuple[Message, ...] | None = None
    ) -> GenerationRequest:
        """The first attempt's request (no budget limits), for consent checks and templates."""
        prompt = messages if messages is not None else explanation_messages(evidence)
        return self._attempt(evidence, prompt, None)

    def _template(
        self, evidence: Evidence, *, reason: str | None = None, **extra: Any
    ) -> Explanation:
        text = self.template.generate(self._request(evidence, ())).text
        verdict = self.checker.check(text, evidence)
        return Explanation(
            text=text,
            evidence=evidence,
            backend=self.template.name,
            model="template",
            faithful=verdict.faithful,
            attempts=extra.pop("attempts", 0),
            fallback_used=reason is not None,
            reason=reason,
            **extra,
        )

    def explain_many(
        self, evidences: Sequence[Evidence], *, use_llm: bool = True, consent: bool = False
    ) -> list[Explanation]:
        """:meth:`explain` for many items at once, for pregeneration off the request path.

        Cached items are answered from the cache; the rest go to the generator together, one
        attempt round at a time (every first attempt, then every regeneration), through its
        ``generate_batch`` when it has one (the local backend decodes a batch at once), so a
        CPU explains hundreds of items in a fraction of the one-by-one time. No per-request
        budget applies; the results equal :meth:`explain`'s for the same texts.
        """
        if not self.uses_model or not use_llm:
            return [self.explain(e, use_llm=use_llm, consent=consent) for e in evidences]
        first: dict[str, int] = {}  # each distinct evidence is explained once
        copies = [
            first.setdefault(json.dumps(e.to_dict(), sort_keys=True), n)
            for n, e in enumerate(evidences)
        ]
        distinct = [evidences[n] for n in sorted(first.values())]
        done = dict(
            zip(sorted(first.values()), self._explain_distinct(distinct, consent), strict=True)
        )
        return [
            done[n] if n == source else replace(done[source], cached=True)
            for n, source in enumerate(copies)
        ]

    def _explain_distinct(self, evidences: Sequence[Evidence], consent: bool) -> list[Explanation]:
        model = str(getattr(self.generator, "model", self.generator.name))
        results: list[Explanation | None] = [None] * len(evidences)
        pending: list[tuple[int, _Attempts, str | None]] = []
        for index, evidence in enumerate(evidences):
            request = self._request(evidence)
            try:
                check_consent(self.generator, request, consent)
            except ConsentError:
                results[index] = self._template(evidence, reason="consent")
                continue
            key = self._key(evidence, self.generator.name, model)
            cached = self._cached(key, evidence) if key is not None else None
            if cached is not None:
                results[index] = cached
            else:
                pending.append((index, _Attempts(evidence, request.messages), key))
        for _ in range(self.max_attempts):
            live = [(i, a, k) for i, a, k in pending if a.result is None and a.reason is None]
            if not live:
                break
            requests = [self._attempt(a.evidence, a.messages, None) for _, a, _ in live]
            try:
                generations: list[Generation] = generate_many(self.generator, requests)
            except GenerationError:
                for _, attempts, _ in live:
                    attempts.reason = "error"
                break
            for (_, attempts, _), request, generation in zip(
                live, requests, generations, strict=True
            ):
                self._take(attempts, generation, sum(len(m.content) for m in request.messages) // 4)
        for index, attempts, key in pending:
            result = attempts.result or self._fallback(attempts)
            if key is not None:
                self._store(key, result)
            results[index] = result
        return [r for r in results if r is not None]

    def _generate(
        self, evidence: Evidence, request: GenerationRequest, budget: Budget | None
    ) -> Explanation:
        attempts = _Attempts(evidence, request.messages)
        for _ in range(self.max_attempts):
            prompt_estimate = sum(len(m.content) for m in attempts.messages) // 4
            limits = (budget or Budget()).limits(self.max_tokens, prompt_estimate)
            if limits is None:
                attempts.reason = "budget"
                break
            try:
                generation = self.generator.generate(
                    self._attempt(evidence, attempts.messages, limits)
                )
            except GenerationError as exc:
                attempts.reason = "budget" if _out_of_time(exc, budget) else "error"
                break
            spent = self._take(attempts, generation, prompt_estimate)
            if budget is not None:
                budget.charge(spent)
            if attempts.result is not None or attempts.reason is not None:
                break
        return attempts.result or self._fallback(attempts)

    def _attempt(
        self,
        evidence: Evidence,
        messages: tuple[Message, ...],
        limits: tuple[float | None, int] | None,
    ) -> GenerationRequest:
        timeout_s, max_tokens = limits if limits is not None else (None, self.max_tokens)
        return GenerationRequest(
            task=TASK,
            evidence=evidence.to_dict(),
            messages=messages,
            max_tokens=max_tokens,
            temperature=self.temperature,
            timeout_s=timeout_s,
            contains_personal_data=evidence.has_personal_data,
        )

    def _take(self, attempts: _Attempts, generation: Generation, prompt_estimate: int) -> int:
        """Check one attempt's text: a faithful one finishes ``attempts``, an unfaithful one
        sets up the regeneration prompt. Returns the tokens the attempt spent."""
        spent = _tokens_of(generation, prompt_estimate)
        attempts.tokens += spent
        if generation.finish_reason == "timeout":
            attempts.reason = "budget"
            return spent
        text, problem = _clean(generation)
        verdict: Verdict | None = None
        if text:
            verdict = self.checker.check(text, attempts.evidence)
            if verdict.faithful:
                attempts.verdicts.append(True)
                attempts.result = Explanation(
                    text=text,
                    evidence=attempts.evidence,
                    backend=generation.backend,
                    model=generation.model,
                    faithful=True,
                    attempts=len(attempts.verdicts),
                    fallback_used=False,
                    attempt_faithful=tuple(attempts.verdicts),
                    rejected=tuple(attempts.rejected),
                    tokens=attempts.tokens,
                    latency_s=time.perf_counter() - attempts.started,
                )
                return spent
            problem = f"it names {verdict.summary()}, which the facts do not hold"
        attempts.verdicts.append(False)
        names = [m.text for m in verdict.unsupported] if verdict is not None else []
        attempts.rejected.extend(names)
        attempts.messages = _retry_messages(attempts.messages, ", ".join(names) or text, problem)
        return spent

    def _fallback(self, attempts: _Attempts) -> Explanation:
        return self._template(
            attempts.evidence,
            reason=attempts.reason or "unfaithful",
            attempts=len(attempts.verdicts),
            attempt_faithful=tuple(attempts.verdicts),
            rejected=tuple(attempts.rejected),
            tokens=attempts.tokens,
            latency_s=time.perf_counter() - attempts.started,
        )


@dataclass(slots=True)
class _Attempts:
    """One explanation being generated: its prompt so far and what the attempts gave."""

    evidence: Evidence
    messages: tuple[Message, ...]
    verdicts: list[bool] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    tokens: int = 0
    started: float = field(default_factory=time.perf_counter)
    reason: str | None = None  # why generation stopped early: "budget" or "error"
    result: Explanation | None = None


def _out_of_time(exc: GenerationError, budget: Budget | None) -> bool:
    """Whether a failed generation ran out of the budget's time rather than failing."""
    if isinstance(exc, DeadlineExceeded):
        return True
    seconds = budget.time_left() if budget is not None else None
    return seconds is not None and seconds <= 0.01


def _tokens_of(generation: Generation, prompt_estimate: int) -> int:
    used = generation.prompt_tokens + generation.completion_tokens
    return used if used else prompt_estimate + len(generation.text) // 4


_LABEL = re.compile(r"^\s*(explanation|answer|response)\s*:\s*", re.IGNORECASE)


def _clean(generation: Generation) -> tuple[str, str]:
    """The text worth checking, or ``("", why not)``: labels, quotes and a cut-off tail go."""
    text = generation.text.strip().split("\n\n")[0]
    text = _LABEL.sub("", text).strip().strip("\"'“”").strip()
    text = sanitize(text, max_chars=MAX_TEXT_CHARS).text
    if generation.finish_reason == "length" or text.endswith("…"):
        end = max(text.rfind("."), text.rfind("!"), text.rfind("?"))
        text = text[: end + 1] if end > 0 else ""
        if not text:
            return "", "it was cut off before the first sentence ended"
    if not text:
        return "", "it was empty"
    return text, ""
