"""``GET /v1/explanations/{slate_id}/{position}``: why an item of a slate was recommended.

The handle a recommended item carries is ``"{slate_id}/{position}"``. The answer is built
from the slate as logged (its user, item, source and score), the user's history up to the
slate's time, the catalogue in the store and the active model: evidence first, then text
from the evidence only (see :mod:`recloop.generative.explain`).

Generation settings come from the environment: the backend from ``RECLOOP_LLM_*``
(:mod:`recloop.generative.backends`; the template when unset), the policy, budget and cache
lifetime from ``RECLOOP_EXPLAIN_*`` (:class:`~recloop.generative.budget.ExplainSettings`).
A user's history goes to a hosted backend only with their generative consent: the
``generative`` flag of ``PUT /v1/users/{id}/consent``, or ``{"consent": {"generative": true}}``
in their preferences; without it they get the template.

Each worker also explains the first positions of every slate it serves in the background
(:mod:`recloop.service.pregeneration`), from the evidence :func:`slate_evidence` builds for
both, so requests usually find the text in the cache.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request
from pydantic import BaseModel, Field

from recloop.generative.budget import ExplainSettings, ExplanationCache
from recloop.generative.evidence import (
    Evidence,
    ItemFacts,
    build_evidence,
    model_attribution,
    model_semantic_ids,
)
from recloop.generative.explain import Explainer
from recloop.generative.faithfulness import FaithfulnessChecker
from recloop.service.deps import AUTH_RESPONSES, Client, PathId, service_state
from recloop.service.engine import ServingModel
from recloop.service.generation import generative_consent, text_generator
from recloop.service.privacy import may_personalise
from recloop.service.schemas import MAX_RECOMMENDATIONS
from recloop.service.state import ServiceState
from recloop.store.cache import Cache, user_scope
from recloop.store.slates import Impression, SlateLog, SlateRecord

router = APIRouter()
EXPLAIN = "generative.explain"
"""``state.extensions`` key of the explanation components (settings, cache, checker)."""
_BUILD = threading.Lock()
_MAX_HISTORY = 200


class ExplanationOut(BaseModel):
    """An explanation of one recommended item, with the evidence it was made from."""

    handle: str = Field(description="The item's explanation handle: '{slate_id}/{position}'.")
    item_id: str
    text: str
    evidence: dict[str, Any] = Field(
        description="Drivers from the user's history, shared genres/year/attributes, shared "
        "Semantic-ID prefix, the source and its score; allowed_names lists what the text may say."
    )
    backend: str = Field(description="What wrote the text: 'template' or the LLM backend.")
    faithful: bool = Field(description="Every name in the text is in the evidence.")
    fallback_used: bool = Field(description="The template replaced the model's text.")
    fallback_reason: str | None = Field(
        default=None, description="Why: policy, consent, unfaithful, budget or error."
    )
    generated: bool = Field(default=True, description="Always true: the text is generated.")
    cached: bool = Field(description="Served from the explanation cache.")


@dataclass
class ExplainComponents:
    settings: ExplainSettings
    cache: ExplanationCache
    checker: FaithfulnessChecker | None = None
    vocabulary_token: int | None = None  # the cache token the checker's vocabulary was read at


@router.get(
    "/v1/explanations/{slate_id}/{position}",
    response_model=ExplanationOut,
    responses={
        **AUTH_RESPONSES,
        404: {"description": "Unknown slate (not written yet?) or position"},
        503: {"description": "No model version is active"},
    },
    tags=["explanations"],
)
def explanation(
    slate_id: PathId,
    position: Annotated[int, Path(ge=0, lt=MAX_RECOMMENDATIONS)],
    request: Request,
    principal: Client,
) -> ExplanationOut:
    """Why the item at ``position`` of slate ``slate_id`` was recommended.

    Slates are logged by a background writer within about a second of the answer: a 404 for
    a slate just received means "not found yet", and a retry shortly after succeeds.
    """
    state = service_state(request)
    token = state.cache.token()  # before reading the user's data: see slate_explainer
    slate = SlateLog(state.store).slate(slate_id)
    if slate is None:
        raise HTTPException(
            404,
            f"slate {slate_id!r} not found (yet): slates are logged within about a second of "
            "the recommendation; retry shortly",
        )
    state.owners.check(principal, slate.user_id)  # another application's user: 403
    shown = next((imp for imp in slate.items if imp.position == position), None)
    if shown is None:
        raise HTTPException(
            404, f"slate {slate_id!r} has no position {position} (it has {len(slate.items)} items)"
        )
    model = state.models.current()
    if model is None:
        raise HTTPException(503, "no model version is active; train and activate one")
    n_events, evidences = slate_evidence(state, model, slate, [shown])
    evidence = evidences.get(position)
    if evidence is None:
        raise HTTPException(404, f"item {shown.item_id!r} is no longer in the catalogue")
    parts = explain_components(state)
    decision = parts.settings.policy.decide(n_events=n_events, segment=slate.segment)
    budget = parts.settings.budget()
    # this worker may be explaining this very slate now: wait for its text, not write it twice
    state.pregenerator.wait_for(slate_id, position, budget.time_left())
    result = slate_explainer(state, parts, slate.user_id, token=token).explain(
        evidence,
        use_llm=decision.use_llm,
        consent=generative_consent(state, slate.user_id),
        budget=budget,
    )
    return ExplanationOut(
        handle=f"{slate_id}/{position}",
        item_id=shown.item_id,
        text=result.text,
        evidence=evidence.to_dict(),
        backend=result.backend,
        faithful=result.faithful,
        fallback_used=result.fallback_used,
        fallback_reason=result.reason,
        generated=True,
        cached=result.cached,
    )


def slate_evidence(
    state: ServiceState, model: ServingModel, slate: SlateRecord, shown: Sequence[Impression]
) -> tuple[int, dict[int, Evidence]]:
    """What the explanations of ``shown`` (items of ``slate``) are made from: the user's
    number of events up to the slate's time (the policy's input) and each item's evidence,
    by position; items no longer in the catalogue are left out.

    The route and the pregenerator (:mod:`recloop.service.pregeneration`) both build their
    evidence here, so a pregenerated explanation lands under the key the route looks up.
    """
    # a user who turned personalisation off (since) is explained without their history
    personal = may_personalise(state, slate.user_id)
    events = state.store.history(slate.user_id, until=slate.created_at) if personal else []
    history = [item for item, _, kind in events if not kind.is_negative]
    recent = list(dict.fromkeys(reversed(history)))[:_MAX_HISTORY]
    facts = _item_facts(state, [*(imp.item_id for imp in shown), *recent])
    model_name = getattr(model.model, "name", type(model.model).__name__)
    attribution = None
    semantic_ids = model_semantic_ids(model.model, model.items)
    evidences: dict[int, Evidence] = {}
    for imp in shown:
        if imp.item_id not in facts:
            continue
        # the model's attribution explains the model's items; items another source chose
        # (content, popular) get the history items most similar to them
        from_model = imp.source == model_name
        if from_model and attribution is None:
            attribution = model_attribution(model.model, model.items)
        evidences[imp.position] = build_evidence(
            imp.item_id,
            history,
            # the item's facts and its history's only, whatever else ``shown`` holds
            {i: facts[i] for i in (imp.item_id, *recent) if i in facts},
            attribution=attribution if from_model else None,
            source=imp.source,
            score=imp.score,
            semantic_ids=semantic_ids,
            max_history=_MAX_HISTORY,
        )
    return len(events), evidences


class TokenBoundCache:
    """The service cache with every write bound to one cache token: once the cache is
    invalidated (an item edit, a model activation; an erasure with the in-process cache) the
    writes are dropped, so text made from a user's data read before an erasure cannot be
    stored after it."""

    def __init__(self, cache: Cache, token: int) -> None:
        self.cache = cache
        self.token = token

    def get(self, key: str) -> bytes | None:
        return self.cache.get(key)

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self.cache.set(key, value, ttl, token=self.token)


def slate_explainer(
    state: ServiceState, parts: ExplainComponents, user_id: str, *, token: int
) -> Explainer:
    """The explainer of ``user_id``'s items: the worker's generator, the catalogue's checker,
    and the explanation cache under the user's scope (erasing the user purges what it stores),
    its writes bound to ``token``, the cache token taken before the user's data was read."""
    cache = ExplanationCache(
        TokenBoundCache(state.cache, token), ttl_s=parts.cache.ttl_s, prefix=parts.cache.prefix
    )
    return Explainer(
        text_generator(state),
        explanation_checker(state, parts),
        cache=cache,
        scope=user_scope(user_id),
    )


def explain_components(state: ServiceState) -> ExplainComponents:
    """The worker's explanation settings, cache and checker, built once from the environment."""
    found = state.extensions.get(EXPLAIN)
    if found is None:
        with _BUILD:
            found = state.extensions.get(EXPLAIN)
            if found is None:
                settings = ExplainSettings.from_env()
                cache = ExplanationCache(state.cache, ttl_s=settings.cache_ttl_s)
                found = ExplainComponents(settings, cache)
                state.extensions[EXPLAIN] = found
    parts: ExplainComponents = found
    return parts


def explanation_checker(state: ServiceState, parts: ExplainComponents) -> FaithfulnessChecker:
    """The checker over the whole catalogue, rebuilt after any cache invalidation (item
    edits and model activations invalidate the cache in every worker)."""
    token = state.cache.token()
    if parts.checker is not None and (token == parts.vocabulary_token or token < 0):
        return parts.checker  # token < 0: the cache is unreachable, keep what we have
    parts.checker = FaithfulnessChecker.from_items(
        ItemFacts.from_attributes(r.item_id, r.title, r.attributes) for r in state.store.all_items()
    )
    parts.vocabulary_token = token
    return parts.checker


def _item_facts(state: ServiceState, item_ids: list[str]) -> dict[str, ItemFacts]:
    """Facts of the given items."""
    return {
        item: ItemFacts.from_attributes(item, record.title, record.attributes)
        for item, record in state.store.get_items(item_ids).items()
    }
