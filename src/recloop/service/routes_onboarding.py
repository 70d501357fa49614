"""Onboarding over HTTP: ``POST /v1/onboarding`` (client keys).

A new user names a few liked items, writes what they like, or answers the profile questions
(genres, decades); the answer is a synthetic starting profile and the first recommendations,
at once (see :mod:`recloop.generative.onboarding` and docs/generative_onboarding.md).

The generative model: when the active model can reconstruct an interaction vector (Mult-VAE,
Mult-DAE, DiffRec), it is used itself. Otherwise this worker fits a Mult-VAE on the store's
events in the active model's id space the first time onboarding is asked for, keeps it in
``state.extensions`` and refits it after a model activation; the pseudo-history is then
handed to the active model (EASE reads the profile's weights, other scoring models its
items). That fit reads every stored event and trains for up to ``ONBOARDING_VAE["max_epochs"]``
epochs: on MovieLens-100K about half a minute on one CPU thread (the first onboarding request
of a worker waits for it; later ones take milliseconds).

``store_likes: true`` stores each liked item as a ``like`` event with the id
``onboarding-<sha256(user_id, item_id)[:32]>``, so a retried request stores nothing twice;
stored events then count for the user's later recommendations like any other.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from recloop.data.split import make_split
from recloop.data.types import Catalog, EventKind, IdMap
from recloop.errors import ConfigError
from recloop.generative.onboarding import (
    Onboarding,
    OnboardingResult,
    ProfileAnswers,
    can_reconstruct,
)
from recloop.service.bootstrap import interactions_from_store
from recloop.service.deps import AUTH_RESPONSES, Client, service_state
from recloop.service.privacy import may_personalise
from recloop.service.routes_conversation import ENCODER  # the text encoder, shared
from recloop.service.schemas import MAX_RECOMMENDATIONS, Identifier, unicode_text
from recloop.service.state import ServiceState
from recloop.service.visibility import blocked_items
from recloop.store.events import EventRecord

log = logging.getLogger("recloop.service")
router = APIRouter()

ONBOARDING = "generative.onboarding"
"""``state.extensions`` key of this worker's onboarding component."""
ONBOARDING_VAE: dict[str, Any] = {"max_epochs": 100, "patience": 10, "threads": 1}
"""Settings of the Mult-VAE fitted when the active model cannot reconstruct (else defaults)."""
MAX_LIKED = 200
_BUILD = threading.Lock()


class OnboardingAnswersIn(BaseModel):
    """Answers to the onboarding questions."""

    model_config = ConfigDict(extra="forbid")

    genres: list[str] = Field(default_factory=list, max_length=40, examples=[["Sci-Fi"]])
    decades: list[int] = Field(
        default_factory=list, max_length=30, description="First year of each decade, e.g. 1980."
    )

    @field_validator("genres")
    @classmethod
    def _genre_names(cls, values: list[str]) -> list[str]:
        for value in values:
            if not value.strip() or len(value) > 64:
                raise ValueError("each genre must be 1-64 characters")
            unicode_text(value)
        return values


class OnboardingIn(BaseModel):
    """What a new user gives: liked items, free text and/or answers; all optional."""

    model_config = ConfigDict(extra="forbid")

    user_id: Identifier
    liked_items: list[Identifier] = Field(default_factory=list, max_length=MAX_LIKED)
    text: str | None = Field(
        default=None, max_length=2000, examples=["I loved Star Wars and 80s sci-fi"]
    )
    answers: OnboardingAnswersIn | None = None
    n: int = Field(default=10, ge=1, le=MAX_RECOMMENDATIONS)
    store_likes: bool = Field(
        default=False, description="Store the liked items as 'like' events (idempotent ids)."
    )

    @field_validator("text")
    @classmethod
    def _unicode(cls, value: str | None) -> str | None:
        return None if value is None else unicode_text(value)


class ProfileEntry(BaseModel):
    item_id: str
    weight: float


class OnboardedItem(BaseModel):
    item_id: str
    score: float
    source: str = Field(description="'onboarding', or 'popular' when nothing usable was given.")


class OnboardingOut(BaseModel):
    """The synthetic starting profile and the first recommendations."""

    user_id: str
    profile: list[ProfileEntry] = Field(
        description="The given items (liked 1.0, text matches, answer seeds), then the "
        "synthetic pseudo-history with its weights."
    )
    items: list[OnboardedItem]
    method: str = Field(
        description="How the items were made, e.g. 'profile:MultVAE>EASE', "
        "'reconstruction:MultVAE' or 'popular'."
    )
    model_version: str
    stored_events: int = Field(description="Liked items stored as new events now.")
    notes: list[str] = Field(description="What was skipped or assumed, and why.")


@dataclass
class _Component:
    onboarding: Onboarding
    model_version: str
    n_items: int
    fitted: bool  # a Mult-VAE was fitted for onboarding (the active model cannot reconstruct)


def _store_catalog(state: ServiceState, items: IdMap) -> tuple[Catalog, set[str]]:
    """The store's titles, texts, genres and years in the model's item index space, and
    every item id the store knows."""
    records = {record.item_id: record for record in state.store.all_items()}
    ids = items.ids()
    titles, texts, genres, years = [], [], [], []
    for item_id in ids:
        record = records.get(item_id)
        attrs = record.attributes if record is not None else {}
        titles.append(record.title if record is not None else "")
        texts.append(record.text if record is not None else "")
        genres.append(attrs.get("genres") or [])
        year = attrs.get("year")
        years.append(year if isinstance(year, int | float) and not isinstance(year, bool) else None)
    catalog = Catalog(IdMap(ids), titles, texts, {"genres": genres, "year": years})
    return catalog, set(records)


def _component(state: ServiceState, serving: Any) -> _Component:
    """This worker's onboarding for the active model version, built once per version."""
    n_items = state.store.count_items()
    found: _Component | None = state.extensions.get(ONBOARDING)
    if found is not None and found.model_version == serving.version and found.n_items == n_items:
        return found
    with _BUILD:
        found = state.extensions.get(ONBOARDING)
        if (
            found is not None
            and found.model_version == serving.version
            and found.n_items == n_items
        ):
            return found
        catalog, _ = _store_catalog(state, serving.items)
        encoder = state.extensions.get(ENCODER)
        model = serving.model
        if can_reconstruct(model):
            onboarding = Onboarding(model, catalog=catalog, text_encoder=encoder)
            fitted = False
        else:
            onboarding = Onboarding(
                _fit_vae(state, serving),
                recommender=model,
                catalog=catalog,
                text_encoder=encoder,
            )
            fitted = True
        found = _Component(onboarding, serving.version, n_items, fitted)
        state.extensions[ONBOARDING] = found
    return found


def _fit_vae(state: ServiceState, serving: Any) -> Any:
    """A Mult-VAE on the stored events, in the active model's id space (see the docstring)."""
    from recloop.models.multvae import MultVAE, MultVAEConfig

    started = time.perf_counter()
    data = interactions_from_store(state.store, serving.users, serving.items)
    config = MultVAEConfig(**ONBOARDING_VAE)
    model = MultVAE(config)
    if len(data) >= 3 * max(data.n_users, 1):  # enough for a held-out last item per user
        model.fit(make_split(data, "loo", seed=0))
    else:
        model.fit(data)
    log.info(
        "onboarding Mult-VAE fitted on %d events in %.1f s",
        len(data),
        time.perf_counter() - started,
        extra={"model_version": serving.version},
    )
    return model


def event_id(user_id: str, item_id: str) -> str:
    """The id of an onboarding 'like': the same user and item always give the same id."""
    digest = hashlib.sha256(json.dumps([user_id, item_id]).encode()).hexdigest()
    return f"onboarding-{digest[:32]}"


@router.post(
    "/v1/onboarding",
    response_model=OnboardingOut,
    responses={**AUTH_RESPONSES, 503: {"description": "No model version is active"}},
    tags=["onboarding"],
)
def onboard(body: OnboardingIn, request: Request, principal: Client) -> OnboardingOut:
    """A synthetic starting profile and the first ``n`` recommendations for a new user.

    Liked items are never recommended back, nor hidden or unavailable items, nor anything
    the user already has an event for; the user's stored history (if any) joins the liked
    items. With nothing usable, or when the user turned personalisation off or was erased,
    the answer is popularity, labelled ``popular``. ``store_likes`` stores first (the store
    refuses events of erased users), so a retry after an error stores nothing twice.
    """

    state = service_state(request)
    # stored likes claim an unowned user; another application's user is refused (403)
    state.owners.check(principal, body.user_id, claim=body.store_likes)
    serving = state.models.current()
    if serving is None:
        raise HTTPException(503, "no model version is active; train and activate one")
    component = _component(state, serving)
    onboarding = component.onboarding
    notes: list[str] = []
    newer = _check_items(state, serving, body.liked_items)
    if newer:
        notes.append(f"{newer} liked items are newer than model {serving.version}: not used")
    stored_now = _store_likes(state, body) if body.store_likes else 0
    if not may_personalise(
        state, body.user_id
    ):  # as /recommendations does: popularity, nothing about the user read
        blocked = serving.items.index(sorted(blocked_items(state, time.time())), unknown="new")
        result = onboarding.onboard(k=body.n, exclude=[int(i) for i in blocked if i >= 0])
        notes.append("personalisation is off for this user (consent or erasure): popular items")
        return _answer(body.user_id, serving, result, stored_now, notes)
    events = state.store.history(body.user_id)
    stored = [item for item, _, kind in events if not kind.is_negative]
    earlier = set(stored) - set(body.liked_items)
    if earlier:
        notes.append(f"the user's {len(earlier)} earlier stored events count as liked items")
    liked_ids = list(dict.fromkeys([*stored, *body.liked_items]))
    liked = [int(i) for i in serving.items.index(liked_ids, unknown="new") if i >= 0]
    answers = None
    if body.answers is not None:
        answers = ProfileAnswers(tuple(body.answers.genres), tuple(body.answers.decades))
    excluded = {item for item, _, _ in events} | blocked_items(state, time.time())
    exclude = [int(i) for i in serving.items.index(sorted(excluded), unknown="new") if i >= 0]
    result = onboarding.onboard(liked, body.text, answers, k=body.n, exclude=exclude)
    notes += result.notes
    if body.text and body.text.strip():
        notes.append(f"text matching: {onboarding.text_matching}")
    if component.fitted and result.method != "popular":
        notes.append(
            f"the active model ({serving.model.name}) cannot reconstruct; a Mult-VAE fitted "
            "on the stored events made the profile"
        )
    return _answer(body.user_id, serving, result, stored_now, notes)


def _check_items(state: ServiceState, serving: Any, item_ids: list[str]) -> int:
    """How many of ``item_ids`` the model does not know but the store does (newer items);
    an id neither knows is the caller's mistake."""
    known = serving.items.index(item_ids, unknown="new")
    unknown = [i for i, idx in zip(item_ids, known, strict=True) if idx < 0]
    for item_id in unknown:
        if state.store.get_item(item_id) is None:
            raise ConfigError(f"unknown item {item_id!r}")
    return len(set(unknown))


def _store_likes(state: ServiceState, body: OnboardingIn) -> int:
    """Store the request's liked items as 'like' events; returns how many were new."""
    now = time.time()
    records = [
        EventRecord(
            event_id=event_id(body.user_id, item_id),
            user_id=body.user_id,
            item_id=item_id,
            kind=EventKind.LIKE,
            timestamp=now,
            value=1.0,
            context={"source": "onboarding"},
        )
        for item_id in dict.fromkeys(body.liked_items)
    ]
    if not records:
        return 0
    stored = state.store.add_events(records).stored
    state.counters["events"].inc(stored)
    return stored


def _answer(
    user_id: str, serving: Any, result: OnboardingResult, stored: int, notes: list[str]
) -> OnboardingOut:
    ids = serving.items.ids
    return OnboardingOut(
        user_id=user_id,
        profile=[
            ProfileEntry(item_id=item_id, weight=round(float(weight), 6))
            for item_id, weight in zip(
                ids(result.profile_items), result.profile_weights, strict=True
            )
        ],
        items=[
            OnboardedItem(item_id=item_id, score=float(score), source=result.source)
            for item_id, score in zip(ids(result.items), result.scores, strict=True)
        ],
        method=result.method,
        model_version=serving.version,
        stored_events=stored,
        notes=notes,
    )
