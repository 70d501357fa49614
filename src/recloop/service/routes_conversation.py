"""Conversational recommendation over HTTP: ``/v1/conversations`` (client keys).

``POST /v1/conversations`` starts a conversation for a user with a first message,
``POST /v1/conversations/{id}/messages`` adds a turn, ``GET /v1/conversations/{id}`` reads its
state. The state (turns, accumulated constraints, items shown) is JSON in the service cache
with a sliding TTL, so any worker can continue any conversation; an invalidation of the cache
(an item edit, a model activation) ends open conversations, which then answer 404. Only the
key that started a conversation (or an admin key) can read or continue it.

Each worker builds the dense index of the store's items once, keeps it in
``state.extensions`` and rebuilds it when the number of items changes; the encoder is
all-MiniLM-L6-v2 unless ``state.extensions[ENCODER]`` holds another. The collaborative profile
comes from the active model and the user's stored history; the text generator is the one the
generative routes share (``RECLOOP_LLM_*``, the template when unset). A user's message goes to
a hosted backend only with their generative consent (``PUT /v1/users/{id}/consent``).
Hidden and unavailable items, and items the user has an event for, are never recommended.
Conversation ids carry the user's cache scope, so erasing the user ends their conversations.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from recloop.data.types import Catalog, IdMap
from recloop.errors import RecloopError
from recloop.generative.conversation import (
    MAX_MESSAGE_CHARS,
    CollaborativeProfile,
    Conversation,
    ConversationalRecommender,
    ConversationError,
)
from recloop.generative.retrieval import DenseIndex, MiniLMEncoder, TextEncoder, item_text
from recloop.service.auth import Principal
from recloop.service.deps import AUTH_RESPONSES, Client, PathId, service_state
from recloop.service.generation import generative_consent, text_generator
from recloop.service.privacy import may_personalise
from recloop.service.schemas import Identifier, unicode_text
from recloop.service.state import ServiceState
from recloop.service.visibility import blocked_items
from recloop.store.cache import user_scope

log = logging.getLogger("recloop.service")
router = APIRouter()

CONVERSATION = "generative.conversation"
"""``state.extensions`` key of this worker's dense index and recommender."""
ENCODER = "generative.conversation.encoder"
"""``state.extensions`` key of a text encoder to use instead of all-MiniLM-L6-v2."""
CONVERSATION_TTL_S = 6 * 3600.0
_BUILD = threading.Lock()


# ----------------------------------------------------------------------------- schemas
def _message(value: str) -> str:
    if not value.strip():
        raise ValueError("must contain text")
    return unicode_text(value)


class ConversationStart(BaseModel):
    """The first message of a conversation and whose it is."""

    model_config = ConfigDict(extra="forbid")

    user_id: Identifier
    message: str = Field(
        min_length=1,
        max_length=MAX_MESSAGE_CHARS,
        description="What the user asks for, e.g. 'a 90s comedy like Toy Story but darker'.",
    )

    _check = field_validator("message")(_message)


class ConversationMessage(BaseModel):
    """A further message in a conversation ('something older', 'no, funnier')."""

    model_config = ConfigDict(extra="forbid")

    message: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS)

    _check = field_validator("message")(_message)


class ConversationItem(BaseModel):
    item_id: str
    title: str
    score: float
    source: str = Field(description="What ranked it highest: dense, profile or similar.")


class ConversationAnswer(BaseModel):
    """One turn's answer: the items, the text, and the constraints now in force."""

    conversation_id: str
    user_id: str
    turn: int = Field(description="1 for the first message.")
    items: list[ConversationItem]
    text: str = Field(description="Generated text; it names only the listed items.")
    constraints: dict[str, Any]
    follow_up: bool = Field(description="The message refined the previous turn.")
    notes: list[str] = Field(description="What was skipped or dropped, and why.")
    backend: str = Field(description="What wrote the text: 'template' or the LLM backend.")
    generated: bool = Field(default=True, description="Always true: the text is generated.")


class ConversationTurnOut(BaseModel):
    """One stored turn: the message, the items shown and the generated text, labelled."""

    message: str
    items: list[str]
    text: str = Field(description="Generated text; it names only the turn's items.")
    constraints: dict[str, Any]
    follow_up: bool
    backend: str | None = Field(
        description="What wrote the text: 'template' or the LLM backend; null for turns "
        "stored before the backend was kept."
    )
    generated: bool = Field(default=True, description="Always true: the text is generated.")


class ConversationState(BaseModel):
    """A conversation as stored: its turns and every item shown so far."""

    conversation_id: str
    user_id: str
    turns: list[ConversationTurnOut]
    shown: list[str]
    constraints: dict[str, Any]


# ------------------------------------------------------------------------------ engine
@dataclass
class _Engine:
    index: DenseIndex
    catalogue: Catalog
    n_items: int
    model_version: str | None = None
    recommender: ConversationalRecommender | None = None


def _store_catalogue(state: ServiceState) -> Catalog:
    records = state.store.all_items()
    return Catalog(
        IdMap(r.item_id for r in records),
        [r.title for r in records],
        [item_text(r.title, r.text, r.attributes) for r in records],
        {
            "genres": [r.attributes.get("genres") for r in records],
            "year": [r.attributes.get("year") for r in records],
        },
    )


def _recommender(state: ServiceState) -> tuple[ConversationalRecommender, list[str]]:
    """This worker's recommender, (re)built when the item count or the model changes."""
    notes: list[str] = []
    n_items = state.store.count_items()
    serving = state.models.current()
    version = serving.version if serving is not None else None
    engine: _Engine | None = state.extensions.get(CONVERSATION)
    if engine is not None and engine.n_items == n_items and engine.model_version == version:
        assert engine.recommender is not None
        return engine.recommender, notes
    with _BUILD:
        engine = state.extensions.get(CONVERSATION)
        if engine is None or engine.n_items != n_items:
            if n_items == 0:
                raise HTTPException(503, "the catalogue is empty; add items first")
            catalogue = _store_catalogue(state)
            encoder: TextEncoder = state.extensions.get(ENCODER) or MiniLMEncoder()
            started = time.perf_counter()
            try:
                index = DenseIndex.build(catalogue.items.ids(), list(catalogue.text), encoder)
            except RecloopError as exc:
                raise HTTPException(503, f"cannot build the conversation index: {exc}") from None
            log.info(
                "conversation index built: %d items in %.1f s",
                len(index),
                time.perf_counter() - started,
            )
            engine = _Engine(index, catalogue, n_items)
        if engine.recommender is None or engine.model_version != version:
            profile = None
            if serving is not None:
                try:
                    profile = CollaborativeProfile(
                        serving.model, serving.items, serving.users, name=serving.model.name
                    )
                except RecloopError as exc:
                    log.warning("conversation without a collaborative profile: %s", exc)
            engine.recommender = ConversationalRecommender(
                engine.index, engine.catalogue, profile, text_generator(state)
            )
            engine.model_version = version
        state.extensions[CONVERSATION] = engine
    if serving is None:
        notes.append("no active model: no collaborative profile")
    return engine.recommender, notes


# ------------------------------------------------------------------------------ state
def _new_id(user_id: str | None) -> str:
    """A conversation id that carries its user's cache scope, so its key can be built from the
    id alone and erasing the user purges the conversation."""
    scope = user_scope(user_id or "")[3:-1]  # the digest inside "|u=...|"
    return f"{scope}-{uuid.uuid4().hex}"


def _key(conversation_id: str) -> str:
    scope = conversation_id.split("-", 1)[0]
    return f"conversation:{conversation_id}|u={scope}|"


def _load(
    state: ServiceState, conversation_id: str, principal: Principal
) -> tuple[Conversation, str]:
    """The conversation and the client application it belongs to; 404 for another one's."""
    raw = state.cache.get(_key(conversation_id))
    missing = HTTPException(404, f"unknown or expired conversation {conversation_id!r}")
    if raw is None:
        raise missing
    try:
        data = json.loads(raw)
        conversation = Conversation.from_json(data["state"])
        owner = str(data["owner"])
    except (ValueError, KeyError, TypeError, ConversationError):
        log.warning("dropping an unreadable conversation state %s", conversation_id)
        raise missing from None
    if owner != principal.owner and principal.role != "admin":
        raise missing  # another client's conversation: not even its existence is told
    if conversation.user_id:  # the user may since belong to another application: 403
        state.owners.check(principal, conversation.user_id)
    return conversation, owner


def _save(state: ServiceState, conversation: Conversation, owner: str, token: int) -> None:
    """Kept under the client application (``owner``), not the key, so any of the
    application's keys, a rotated one too, can continue it; not kept when the cache was
    invalidated since ``token`` (an erasure during the turn: the state must not come back)."""
    payload = {"owner": owner, "state": conversation.to_json()}
    state.cache.set(
        _key(conversation.conversation_id),
        json.dumps(payload, ensure_ascii=False).encode(),
        ttl=CONVERSATION_TTL_S,
        token=token,
    )


def _turn(
    state: ServiceState, conversation: Conversation, message: str, owner: str, token: int
) -> ConversationAnswer:
    """Answer ``message``; ``token``: the cache's, taken before the conversation was read.

    The user's history and collaborative profile are used only while they may personalise
    (consent on, not erased), as on every other route."""
    recommender, notes = _recommender(state)
    user_id = conversation.user_id or ""
    events = state.store.history(user_id) if user_id and may_personalise(state, user_id) else []
    history = [item for item, _, kind in events if not kind.is_negative]
    excluded = {item for item, _, _ in events} | blocked_items(state, time.time())
    consent = generative_consent(state, user_id) if user_id else False
    try:
        answer = recommender.respond(
            conversation, message, history, exclude=excluded, consent=consent
        )
    except ConversationError as exc:
        raise HTTPException(422, str(exc)) from None
    _save(state, answer.state, owner, token)
    last = answer.state.turns[-1]
    return ConversationAnswer(
        conversation_id=answer.state.conversation_id,
        user_id=user_id,
        turn=len(conversation.turns) + 1,
        items=[
            ConversationItem(item_id=i.item_id, title=i.title, score=i.score, source=i.source)
            for i in answer.items
        ],
        text=answer.text,
        constraints=answer.constraints.to_json(),
        follow_up=last.follow_up,
        notes=[*notes, *answer.notes],
        backend=answer.backend,
    )


# ------------------------------------------------------------------------------ routes
_RESPONSES: dict[int | str, dict[str, Any]] = {
    **AUTH_RESPONSES,
    503: {"description": "The conversation index cannot be built (no items, no encoder)"},
}


@router.post(
    "/v1/conversations",
    response_model=ConversationAnswer,
    responses=_RESPONSES,
    tags=["conversation"],
)
def start_conversation(
    body: ConversationStart, request: Request, principal: Client
) -> ConversationAnswer:
    """Start a conversation: the first message's items, text and understood constraints.

    The message is parsed into genres (with synonyms such as "funny" or "scary"), excluded
    genres ("not a horror"), a year range ("90s", "before 1980") and reference titles ("like
    Toy Story"); what is left stays a free-text query. Items come from dense retrieval over
    item text, the user's collaborative profile and the references' neighbours.
    """
    state = service_state(request)
    state.owners.check(principal, body.user_id)  # their history is read: 403 for others
    token = state.cache.token()
    conversation = Conversation.new(body.user_id, _new_id(body.user_id))
    return _turn(state, conversation, body.message, principal.owner, token)


@router.post(
    "/v1/conversations/{conversation_id}/messages",
    response_model=ConversationAnswer,
    responses={**_RESPONSES, 404: {"description": "Unknown or expired conversation"}},
    tags=["conversation"],
)
def add_message(
    conversation_id: PathId, body: ConversationMessage, request: Request, principal: Client
) -> ConversationAnswer:
    """The next turn: a follow-up ("something older", "no, funnier") refines the previous
    constraints; a new request replaces them. Items already shown are not shown again."""
    state = service_state(request)
    token = state.cache.token()  # before the read: an erasure from now on refuses the save
    conversation, owner = _load(state, conversation_id, principal)
    return _turn(state, conversation, body.message, owner, token)


@router.get(
    "/v1/conversations/{conversation_id}",
    response_model=ConversationState,
    responses={**AUTH_RESPONSES, 404: {"description": "Unknown or expired conversation"}},
    tags=["conversation"],
)
def get_conversation(
    conversation_id: PathId, request: Request, principal: Client
) -> ConversationState:
    """A conversation's turns, the constraints now in force and every item shown. Each turn's
    text is labelled ``generated`` with the ``backend`` that wrote it."""
    state = service_state(request)
    conversation, _ = _load(state, conversation_id, principal)
    return ConversationState(
        conversation_id=conversation.conversation_id,
        user_id=conversation.user_id or "",
        turns=[
            ConversationTurnOut(
                message=t.message,
                items=list(t.items),
                text=t.text,
                constraints=t.constraints.to_json(),
                follow_up=t.follow_up,
                backend=t.backend,
            )
            for t in conversation.turns
        ],
        shown=list(conversation.shown),
        constraints=conversation.constraints.to_json(),
    )
