"""The FastAPI app behind ``recloop serve``: events in, labelled recommendations out.

Every ``/v1`` route needs an API key (``Authorization: Bearer …`` or ``X-API-Key``) whose role
allows it, and counts against that key's rate limit; a client key acts only for its own
application's users (:mod:`recloop.service.owners`). Bad input answers 4xx with the field at
fault; a 500 always means a bug. The routes read and write the stores through
:class:`ServiceState`; nothing about a user is kept in a worker between requests, so any
number of workers can serve the same store.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from dataclasses import asdict
from functools import partial
from typing import Annotated, Any, Literal

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from recloop import __version__
from recloop.engine.bandit import Choice
from recloop.engine.loop import (
    attribution,
    bandit_from_posteriors,
    learning_window,
    offpolicy_report,
    segment_of,
)
from recloop.errors import RecloopError
from recloop.service.bootstrap import interactions_from_store
from recloop.service.deps import AUTH_RESPONSES, Admin, Client, PathId, service_state
from recloop.service.engine import Candidate
from recloop.service.observability import (
    ObservabilityMiddleware,
    configure_json_logging,
    metrics_response,
)
from recloop.service.privacy import may_personalise
from recloop.service.schemas import (
    MAX_RECOMMENDATIONS,
    ArmOut,
    AuditEntryOut,
    AuditOut,
    ConsentBody,
    Count,
    ErasureOut,
    ErrorBody,
    EventBatch,
    EventIn,
    EventsResult,
    FieldError,
    GapsOut,
    Health,
    ItemBatch,
    ItemOut,
    ItemPatch,
    LoopOut,
    ModelList,
    ModelVersion,
    OwnerBody,
    OwnerOut,
    PolicySnapshot,
    Preferences,
    RecommendedItem,
    RejectedEvent,
    RetrainOut,
    SegmentPolicy,
    SimilarItems,
    Slate,
    SourceStatsOut,
    UserBatch,
    UsersCount,
    json_safe,
    parse_events,
)
from recloop.service.settings import ServiceSettings
from recloop.service.state import ServiceState, warm_up
from recloop.service.visibility import blocked_items
from recloop.store.artifacts import ArtifactError
from recloop.store.cache import user_scope
from recloop.store.events import (
    ErasedUserError,
    EventRecord,
    ForeignUserError,
    ItemRecord,
    StoreError,
)
from recloop.store.privacy import Consent, UserOwner
from recloop.store.slates import Impression, SlateRecord

log = logging.getLogger("recloop.service")


def _item_out(record: ItemRecord) -> ItemOut:
    return ItemOut(
        item_id=record.item_id,
        title=record.title,
        text=record.text,
        attributes=record.attributes,
        hidden=record.hidden,
        available_from=record.available_from,
        available_until=record.available_until,
    )


def _labelled(slate_id: str | None, candidates: list[Candidate]) -> list[RecommendedItem]:
    """The answer's items; with a logged slate's id, each with its explanation handle."""
    return [
        RecommendedItem(
            item_id=c.item_id,
            score=c.score,
            source=c.source,
            position=position,
            generated=c.generated,
            explanation=None if slate_id is None else f"{slate_id}/{position}",
        )
        for position, c in enumerate(candidates)
    ]


def create_app(
    settings: ServiceSettings | None = None, *, state: ServiceState | None = None
) -> FastAPI:
    """The app for ``settings`` (default: from the environment), or around an open ``state``."""
    settings = settings or (state.settings if state else ServiceSettings.from_env())
    configure_json_logging(settings.log_level)
    state = state or ServiceState.open(settings)
    app = FastAPI(
        title="recloop",
        version=__version__,
        description="Generative recommendation as a service: events in, labelled "
        "recommendations out. Every /v1 route needs an API key (Bearer or X-API-Key).",
    )
    app.state.recloop = state
    _connect_generated_source(state)
    app.add_middleware(
        ObservabilityMiddleware, max_body_bytes=settings.max_body_bytes, registry=state.metrics
    )
    _add_error_handlers(app)
    _add_routes(app)
    for router in _extra_routers():
        app.include_router(router)
    from recloop.console import mount as mount_console

    mount_console(app)
    _finish_openapi(app)
    app.router.add_event_handler("startup", partial(warm_up, state))
    app.router.add_event_handler("shutdown", state.close)
    return app


APPROVED_COUNT = "generated-approved-count"  # cache key: approved generated pieces, or 0


def _connect_generated_source(state: ServiceState) -> None:
    """Approved generated collections (the review queue's) become the loop's generated source.

    While no piece is approved (the usual case) the queue is not read per request: the count
    of approved pieces is cached for 10 s. A zero can only delay a new approval by that
    long; once pieces are approved the queue is read at every request, so a piece that is
    rejected or edited is never served after the decision.
    """
    from recloop.service.routes_review import generated_source, review_queue

    def source(user_id: str, segment: str, n: int, exclude: set[str]) -> list[Candidate]:
        raw = state.cache.get(APPROVED_COUNT)
        if raw is None:
            approved = review_queue(state).counts().get("approved", 0)
            state.cache.set(APPROVED_COUNT, str(approved).encode(), ttl=10.0)
        else:
            approved = int(raw)
        if approved == 0:
            return []
        return generated_source(state).candidates(user_id, None, n, exclude)

    state.loop.generated_source = source


def _extra_routers() -> list[Any]:
    """Routers defined outside this module (the generative module's)."""
    from recloop.service import (
        routes_conversation,
        routes_explain,
        routes_onboarding,
        routes_review,
    )

    return [
        routes_explain.router,
        routes_conversation.router,
        routes_onboarding.router,
        routes_review.router,
    ]


def _finish_openapi(app: FastAPI) -> None:
    """Publish what FastAPI cannot infer: ``EventIn`` (batches take raw objects, checked one
    by one), our 4xx body (:class:`ErrorBody`, also for 422) and the 400/413 answers."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = build()
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        ref = "#/components/schemas/{model}"
        schemas["EventIn"] = EventIn.model_json_schema(ref_template=ref)
        error = ErrorBody.model_json_schema(ref_template=ref)
        schemas.update(error.pop("$defs", {}))
        schemas["ErrorBody"] = error
        schemas["HTTPValidationError"] = error  # our handler answers 422 in the same shape
        schemas.pop("ValidationError", None)
        body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
        for path, operations in spec.get("paths", {}).items():
            for method, operation in operations.items():
                answers = operation.setdefault("responses", {})
                if path.startswith("/v1/"):
                    answers.setdefault("400", {"description": "Input the store refused"})
                if method in ("post", "put", "patch"):
                    answers.setdefault("413", {"description": "Request body too large"})
                for status, answer in answers.items():
                    if status.startswith("4") and "content" not in answer:
                        answer["content"] = body
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "field": ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body",
                "message": err.get("msg", "invalid"),
            }
            for err in exc.errors()
        ]
        return JSONResponse({"detail": "invalid request", "errors": errors}, status_code=422)

    @app.exception_handler(ErasedUserError)
    async def _erased(request: Request, exc: ErasedUserError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=410)

    @app.exception_handler(ForeignUserError)
    async def _foreign(request: Request, exc: ForeignUserError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=403)

    @app.exception_handler(StoreError)
    async def _store(request: Request, exc: StoreError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(ArtifactError)
    async def _artifact(request: Request, exc: ArtifactError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(RecloopError)
    async def _recloop(request: Request, exc: RecloopError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)


def _add_routes(app: FastAPI) -> None:
    @app.get("/healthz", response_model=Health, tags=["ops"])
    def healthz() -> Health:
        """Liveness: the process answers."""
        return Health(status="ok")

    @app.get(
        "/readyz",
        response_model=Health,
        responses={503: {"model": Health, "description": "Not ready"}},
        tags=["ops"],
    )
    def readyz(request: Request) -> Response | Health:
        """Readiness: the store answers and a model version is loaded."""
        state = service_state(request)
        try:
            state.store.count_items()
        except Exception as exc:  # the store is down: say so, never a 500
            body = Health(status="unavailable", detail=f"event store: {type(exc).__name__}")
            return JSONResponse(body.model_dump(), status_code=503)
        model = state.models.current()
        if model is None:
            body = Health(status="unavailable", detail="no active model version")
            return JSONResponse(body.model_dump(), status_code=503)
        return Health(status="ok", model_version=model.version)

    @app.get("/metrics", tags=["ops"], response_class=Response)
    def metrics(request: Request) -> Response:
        """Prometheus metrics of this worker."""
        body, content_type = metrics_response(service_state(request).metrics)
        return Response(body, media_type=content_type)

    @app.post("/v1/events", response_model=EventsResult, responses=AUTH_RESPONSES, tags=["events"])
    def post_events(batch: EventBatch, request: Request, principal: Client) -> EventsResult:
        """Store a batch of events, answered only after they are committed.

        Each event is checked on its own: invalid ones are listed in ``rejected`` with the
        field at fault while the valid ones are stored. An ``event_id`` already stored is
        counted in ``duplicates`` and not stored again, so a client may retry freely. A
        client key claims the batch's unowned users for its application; events about users
        another application owns are rejected (field ``user_id``), the others stored.
        """
        state = service_state(request)
        valid, rejected, unknown = parse_events(
            batch.events, allowed_context=state.settings.context_allow_list
        )
        owner = principal.owner if principal.role == "client" else None
        result = state.store.add_events(valid, owner=owner) if valid else None
        if result is not None and owner is not None:
            if result.foreign_users:
                rejected = _with_foreign(rejected, valid, result.foreign_users)
            left_out = result.foreign_users | result.refused_users
            ours = {event.user_id for event in valid} - left_out
            state.owners.claimed(ours, owner)
        stored = result.stored if result else 0
        state.counters["events"].inc(stored)
        state.counters["rejected"].inc(len(rejected))
        state.counters["unknown_fields"].inc(unknown)
        return EventsResult(
            stored=stored,
            duplicates=len(result.duplicates) if result else 0,
            rejected=rejected,
            unknown_fields_dropped=unknown,
            refused_erased=len(result.refused) if result else 0,
        )

    @app.get(
        "/v1/users/{user_id}/recommendations",
        response_model=Slate,
        responses={**AUTH_RESPONSES, 503: {"description": "No model version is active"}},
        tags=["recommendations"],
    )
    async def recommendations(
        user_id: PathId,
        request: Request,
        principal: Client,
        n: Annotated[int, Query(ge=1, le=MAX_RECOMMENDATIONS)] = 10,
        context: Annotated[str | None, Query(max_length=128)] = None,
        rerank: Annotated[
            Literal["none", "llm"],
            Query(
                description="'llm': a language model re-orders the blended top "
                f"{LLM_RERANK_TOP_N}; the X-Recloop-Rerank header says whether it ran ('llm') "
                "or why not ('fallback: ...')"
            ),
        ] = "none",
    ) -> Response:
        """The user's next ``n`` items, each labelled with its source.

        Items the user already has an event for, and hidden or unavailable items, never
        appear. A user with no usable history gets the model's popularity answer, labelled
        ``source="popular"``. When exposure prices are fitted for the active version
        (``recloop model prices``), the model's candidates are re-ranked with them first.
        """
        # Runs on the event loop, not in the thread pool: its store reads and model call take
        # about a millisecond, and one request at a time per worker keeps the latency tail
        # short (threads would only contend for the GIL). The LLM re-rank is the exception:
        # it waits seconds on a model server or a local forward pass, so it goes to the
        # thread pool and the worker keeps answering meanwhile.
        state = service_state(request)
        state.owners.check(principal, user_id)  # cached: no store read per request
        model = _model(state)
        token = state.cache.token()  # before any read: see _candidates
        if not may_personalise(state, user_id):
            return _unpersonalised(state, model, user_id, n)
        events = state.store.history(user_id)
        history = [item for item, _, kind in events if not kind.is_negative]
        excluded = {item for item, _, _ in events} | blocked_items(state, time.time())
        preferences = state.store.get_preferences(user_id) if history else {}
        loop = state.loop if state.settings.loop else None
        wanted = max(n, loop.config.candidates_per_source) if loop is not None else n
        prices = state.prices.current(model.version)  # exposure-fair re-ranking, when fitted
        pool = max(wanted, prices.candidates) if prices is not None else wanted
        candidates = _candidates(state, model, user_id, events, history, pool, excluded, token)
        if prices is not None:
            candidates = prices.rerank(candidates, n)[:wanted]
            state.counters["priced"].inc()
        slate_id = uuid.uuid4().hex
        shown = max(n, LLM_RERANK_TOP_N) if rerank == "llm" else n
        if loop is not None:
            answer = loop.answer(user_id, candidates, history, shown, excluded, preferences)
            final, segment, choice = answer.items, answer.segment, answer.choice
        else:
            final, segment, choice = (
                candidates[:shown],
                segment_of(len(history), state.loop.config),
                None,
            )
        rerank_status = "none"
        if rerank == "llm":
            final, rerank_status = await run_in_threadpool(
                _llm_rerank, state, user_id, history, final
            )
        final = final[:n]
        record = _slate_record(slate_id, user_id, model.version, segment, final, choice)
        state.slates.add(record)
        state.pregenerator.offer(record)  # explanations, off the request path
        slate = Slate(
            slate_id=slate_id,
            user_id=user_id,
            model_version=model.version,
            items=_labelled(slate_id, final),
        )
        return Response(
            slate.model_dump_json(),
            media_type="application/json",
            headers={"X-Recloop-Rerank": rerank_status},
        )

    @app.get(
        "/v1/items/{item_id}/similar",
        response_model=SimilarItems,
        responses={**AUTH_RESPONSES, 404: {"description": "Unknown item"}},
        tags=["items"],
    )
    def similar(
        item_id: PathId,
        request: Request,
        _: Client,
        n: Annotated[int, Query(ge=1, le=MAX_RECOMMENDATIONS)] = 10,
    ) -> SimilarItems:
        """Items the active model ranks highest after ``item_id`` (hidden ones never)."""
        state = service_state(request)
        model = _model(state)
        found = model.similar(item_id, n, blocked_items(state, time.time()))
        if found is None:
            raise HTTPException(404, f"unknown item {item_id!r} for model {model.version}")
        # Not a slate for a user: nothing is logged, so no explanation handle is given.
        return SimilarItems(
            item_id=item_id, model_version=model.version, items=_labelled(None, found)
        )

    @app.post("/v1/items", response_model=Count, responses=AUTH_RESPONSES, tags=["items"])
    def post_items(batch: ItemBatch, request: Request, _: Admin) -> Count:
        """Add or replace catalogue items (by ``item_id``)."""
        state = service_state(request)
        records = [ItemRecord(**item.model_dump()) for item in batch.items]
        state.store.upsert_items(records)
        state.cache.invalidate()
        return Count(stored=len(records))

    @app.patch(
        "/v1/items/{item_id}",
        response_model=ItemOut,
        responses={**AUTH_RESPONSES, 404: {"description": "Unknown item"}},
        tags=["items"],
    )
    def patch_item(item_id: PathId, patch: ItemPatch, request: Request, _: Admin) -> ItemOut:
        """Change an item: hide it, set its availability window, edit its text."""
        state = service_state(request)
        if state.store.get_item(item_id) is None:
            raise HTTPException(404, f"unknown item {item_id!r}")
        record = state.store.update_item(item_id, **patch.model_dump(exclude_unset=True))
        state.cache.invalidate()
        return _item_out(record)

    @app.post("/v1/users", response_model=UsersCount, responses=AUTH_RESPONSES, tags=["users"])
    def post_users(batch: UserBatch, request: Request, principal: Client) -> UsersCount:
        """Add or replace users and their attributes; attributes outside the data policy's
        allow-list (``RECLOOP_ALLOWED_USER_ATTRIBUTES``) are dropped and counted. A client
        key claims the unowned users; if another application owns any, nothing is stored
        (403). Erased users are left out and counted (``refused_erased``)."""
        state = service_state(request)
        allowed = state.settings.user_attribute_allow_list
        rows, dropped = [], 0
        for user in batch.users:
            kept = user.attributes
            if allowed is not None:
                kept = {k: v for k, v in user.attributes.items() if k in allowed}
                dropped += len(user.attributes) - len(kept)
            rows.append((user.user_id, kept))
        owner = principal.owner if principal.role == "client" else None
        refused = set(state.store.upsert_users(rows, owner=owner))
        if owner is not None:
            state.owners.claimed([user_id for user_id, _ in rows if user_id not in refused], owner)
        state.counters["unknown_fields"].inc(dropped)
        stored = sum(1 for user_id, _ in rows if user_id not in refused)
        return UsersCount(stored=stored, fields_dropped=dropped, refused_erased=len(refused))

    @app.put(
        "/v1/users/{user_id}/preferences",
        response_model=Preferences,
        responses={**AUTH_RESPONSES, 410: {"description": "The user was erased"}},
        tags=["users"],
    )
    def put_preferences(
        user_id: PathId, body: Preferences, request: Request, principal: Client
    ) -> Preferences:
        """Replace a user's own controls (read by blending and re-ranking); a client key
        claims an unowned user. Values are checked here (422 naming the key), and an erased
        user's are refused (410)."""
        state = service_state(request)
        state.owners.check(principal, user_id, claim=True)
        state.store.set_preferences(user_id, body.preferences)
        return Preferences(preferences=state.store.get_preferences(user_id))

    @app.get(
        "/v1/users/{user_id}/consent",
        response_model=ConsentBody,
        responses=AUTH_RESPONSES,
        tags=["privacy"],
    )
    def get_consent(user_id: PathId, request: Request, principal: Client) -> ConsentBody:
        """The user's consent (defaults: personalisation and training on, generative off)."""
        state = service_state(request)
        state.owners.check(principal, user_id)
        return ConsentBody(**asdict(state.privacy.consent(user_id)))

    @app.put(
        "/v1/users/{user_id}/consent",
        response_model=ConsentBody,
        responses=AUTH_RESPONSES,
        tags=["privacy"],
    )
    def put_consent(
        user_id: PathId, body: ConsentBody, request: Request, principal: Client
    ) -> ConsentBody:
        """Replace the user's consent; every component honours it from the next request on
        (training from the next training run). Audited. A client key claims an unowned
        user."""
        state = service_state(request)
        state.owners.check(principal, user_id, claim=True)
        state.consent.set(user_id, Consent(**body.model_dump()), f"key:{principal.key_id}")
        return ConsentBody(**asdict(state.privacy.consent(user_id)))

    @app.get(
        "/v1/users/{user_id}/owner",
        response_model=OwnerOut,
        responses=AUTH_RESPONSES,
        tags=["privacy"],
    )
    def get_owner(user_id: PathId, request: Request, _: Admin) -> OwnerOut:
        """The client application that acts for the user (null: nobody claimed them)."""
        return _owner_out(user_id, service_state(request).privacy.owner(user_id))

    @app.put(
        "/v1/users/{user_id}/owner",
        response_model=OwnerOut,
        responses=AUTH_RESPONSES,
        tags=["privacy"],
    )
    def put_owner(user_id: PathId, body: OwnerBody, request: Request, principal: Admin) -> OwnerOut:
        """Give the user to another client application, or release them (``owner: null``);
        every worker honours it at its next request. Audited."""
        state = service_state(request)
        changed = state.privacy.set_owner(user_id, body.owner, f"key:{principal.key_id}")
        state.owners.forget(user_id)
        state.cache.invalidate()  # every worker's ownership cache
        return _owner_out(user_id, changed)

    @app.delete(
        "/v1/users/{user_id}",
        response_model=ErasureOut,
        responses=AUTH_RESPONSES,
        tags=["privacy"],
    )
    def delete_user(user_id: PathId, request: Request, principal: Admin) -> ErasureOut:
        """Erase the user: their events, profile, preferences, consent and slates are deleted
        and every cache entry derived from them purged before the answer; a tombstone refuses
        their events from then on; models are rebuilt without them by ``model_rebuild_by``.
        Audited (request and completion)."""
        from recloop.service.privacy import erase

        report = erase(service_state(request), user_id, f"key:{principal.key_id}")
        log.info("user erased", extra={"key_id": principal.key_id})
        return report

    @app.get("/v1/audit", response_model=AuditOut, responses=AUTH_RESPONSES, tags=["privacy"])
    def audit(
        request: Request,
        _: Admin,
        subject: Annotated[str | None, Query(max_length=128)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> AuditOut:
        """The privacy audit log, newest first (of one user, with ``subject``)."""
        entries = service_state(request).privacy.audit(subject=subject, limit=limit)
        return AuditOut(entries=[AuditEntryOut(**asdict(e)) for e in entries])

    @app.get(
        "/v1/gaps",
        response_model=GapsOut,
        responses={**AUTH_RESPONSES, 503: {"description": "No model version is active"}},
        tags=["loop"],
    )
    def gaps(
        request: Request,
        _: Admin,
        segments: Annotated[int, Query(ge=2, le=64)] = 8,
    ) -> GapsOut:
        """User segments the active model serves worst, worst first (see docs/loop_gaps.md).

        Users are clustered by their stored events; each segment is scored by the model's
        predicted satisfaction, its coverage of what the segment consumes, and how much tail
        the segment wants against how much it gets. Cached until events or the model change.
        """
        from recloop.engine.gaps import (  # scikit-learn: load on use
            GapConfig,
            analyse_gaps,
            segment_map,
        )

        state = service_state(request)
        model = _model(state)
        key = f"gaps:{model.version}:{state.store.count_events()}:{segments}"
        cached = state.cache.get(key)
        if cached is not None:
            return GapsOut.model_validate_json(cached)
        train = interactions_from_store(state.store, model.users, model.items)
        config = GapConfig(n_segments=segments)
        analysis = analyse_gaps(train, model.model, config)
        report = analysis.to_json(include_users=False)
        for segment in report["segments"]:
            segment["top_items"] = model.items.ids(segment["top_items"])
        out = GapsOut(
            model_version=model.version,
            events=len(train),
            map=segment_map(train, analysis, config),
            **report,
        )
        state.cache.set(key, out.model_dump_json().encode(), ttl=3600.0)
        return out

    @app.get(
        "/v1/loop",
        response_model=LoopOut,
        responses=AUTH_RESPONSES,
        tags=["loop"],
    )
    def loop(request: Request, _: Admin) -> LoopOut:
        """The feedback loop: arm probabilities per segment, rewards by source and position,
        off-policy estimates of alternative policies, and the retraining history.

        Learned from slates whose attribution window has closed; cached for 10 seconds.
        """
        state = service_state(request)
        cached = state.cache.get("loop-report")
        if cached is not None:
            return LoopOut.model_validate_json(cached)
        report = _loop_report(state)
        state.cache.set("loop-report", report.model_dump_json().encode(), ttl=10.0)
        return report

    @app.get("/v1/fairness", responses=AUTH_RESPONSES, tags=["loop"])
    def fairness(
        request: Request,
        _: Admin,
        days: Annotated[float, Query(gt=0, le=365)] = 7.0,
    ) -> JSONResponse:
        """Exposure audit of the slates shown over the last ``days``: impression Gini, share
        of impressions by popularity band and genre against their catalogue share, and each
        user segment's slates and reward rate (docs/fairness.md). Cached for 60 s."""
        from recloop.service.exposure import exposure_audit

        state = service_state(request)
        key = f"fairness:{days:g}"
        cached = state.cache.get(key)
        if cached is not None:
            return JSONResponse(json.loads(cached))
        now = time.time()
        since = now - days * 86400.0
        log_ = state.loop.log
        report = exposure_audit(
            state.store.all_items(),
            state.store.item_counts(),
            log_.item_impressions(since),
            log_.segment_counts(since, now, state.loop.config.attribution_s),
            days * 86400.0,
        )
        state.cache.set(key, json.dumps(report).encode(), ttl=60.0)
        return JSONResponse(report)

    @app.get("/v1/models", response_model=ModelList, responses=AUTH_RESPONSES, tags=["models"])
    def list_models(request: Request, _: Admin) -> ModelList:
        """Every registered model version and which one is active."""
        registry = service_state(request).registry
        active = registry.active()
        return ModelList(
            active=active,
            versions=[
                ModelVersion(
                    version=v.version,
                    model=v.model,
                    created_at=v.created_at,
                    n_items=v.n_items,
                    n_users=v.n_users,
                    active=v.version == active,
                    metadata=v.metadata,
                )
                for v in registry.versions()
            ],
        )

    @app.get(
        "/v1/models/{version}/card",
        responses={**AUTH_RESPONSES, 404: {"description": "Unknown version, or no card"}},
        tags=["models"],
    )
    def model_card(
        version: PathId,
        request: Request,
        _: Client,
        format: Annotated[Literal["json", "markdown"], Query()] = "json",
    ) -> Response:
        """The version's model card: data, protocol, holdout metrics by segment, privacy,
        limitations (written when it was trained)."""
        from recloop.service.cards import card_markdown

        info = service_state(request).registry.info(version)  # unknown -> 404
        card = info.metadata.get("card")
        if card is None:
            raise HTTPException(404, f"version {version} was trained without a model card")
        if format == "markdown":
            return Response(card_markdown(version, card), media_type="text/markdown")
        return JSONResponse(card)

    @app.post(
        "/v1/models/{version}/activate",
        response_model=ModelList,
        responses={**AUTH_RESPONSES, 404: {"description": "Unknown version"}},
        tags=["models"],
    )
    def activate(version: PathId, request: Request, principal: Admin) -> ModelList:
        """Make ``version`` the active model in every worker, without dropping requests."""
        state = service_state(request)
        state.registry.info(version)  # unknown -> ArtifactError -> 404
        state.registry.activate(version)
        state.models.reload_now()
        state.cache.invalidate()
        log.info("model version %s activated", version, extra={"key_id": principal.key_id})
        return list_models(request, principal)


def _with_foreign(
    rejected: list[RejectedEvent], valid: list[EventRecord], foreign_users: frozenset[str]
) -> list[RejectedEvent]:
    """``rejected`` with the events the store left out because another client application
    owns their user, at their index in the batch, in batch order."""
    invalid = {r.index for r in rejected}
    indices = (i for i in range(len(valid) + len(rejected)) if i not in invalid)
    added = [
        RejectedEvent(
            index=index,
            event_id=event.event_id,
            errors=[FieldError(field="user_id", message=str(ForeignUserError([event.user_id])))],
        )
        for index, event in zip(indices, valid, strict=False)  # parse_events keeps the order
        if event.user_id in foreign_users
    ]
    return sorted([*rejected, *added], key=lambda r: r.index)


def _owner_out(user_id: str, owner: UserOwner | None) -> OwnerOut:
    if owner is None:
        return OwnerOut(user_id=user_id, owner=None, claimed_at=None)
    return OwnerOut(user_id=user_id, owner=owner.owner, claimed_at=owner.claimed_at)


def _unpersonalised(state: ServiceState, model: Any, user_id: str, n: int) -> Response:
    """The model's popularity answer, as for a user it knows nothing about: for users who
    turned personalisation off, or were erased. Labelled ``personalised: false``; logged
    without the bandit."""
    excluded = blocked_items(state, time.time())
    final = list(model.recommend("", [], n, excluded))  # "" is never a known user
    slate_id = uuid.uuid4().hex
    logged = user_id not in state.erased  # an erased user's slates are never kept
    if logged:
        segment = "unpersonalised"
        record = _slate_record(slate_id, user_id, model.version, segment, final, None)
        state.slates.add(record)
        state.pregenerator.offer(record)  # explanations, off the request path
    slate = Slate(
        slate_id=slate_id,
        user_id=user_id,
        model_version=model.version,
        personalised=False,
        items=_labelled(slate_id if logged else None, final),
    )
    return Response(slate.model_dump_json(), media_type="application/json")


def _slate_record(
    slate_id: str,
    user_id: str,
    version: str,
    segment: str,
    final: list[Candidate],
    choice: Choice | None,
) -> SlateRecord:
    """What the loop logs of an answer: items with sources, and the arm with its propensity."""
    return SlateRecord(
        slate_id=slate_id,
        user_id=user_id,
        created_at=time.time(),
        model_version=version,
        segment=segment,
        items=tuple(
            Impression(position, c.item_id, c.source, c.score, c.generated)
            for position, c in enumerate(final)
        ),
        arm=choice.arm if choice is not None else None,
        arm_probability=choice.propensity if choice is not None else None,
        policy={"arm": choice.arm_name} if choice is not None else None,
    )


def _loop_report(state: ServiceState) -> LoopOut:
    """Everything /v1/loop shows, computed from the stored logs (the database aggregates)."""
    loop = state.loop
    config = loop.config
    now = time.time()
    since, until = learning_window(config, now)
    bandit = bandit_from_posteriors(config, loop.log.arms())
    names = [arm.name for arm in config.arms]
    segments = {}
    for segment in sorted({*config.segments, *bandit.segments}):
        alpha, beta = bandit.posterior(segment)
        probs = bandit.probabilities(segment)
        segments[segment] = SegmentPolicy(
            probabilities=dict(zip(names, probs.tolist(), strict=True)),
            posterior_mean=dict(zip(names, (alpha / (alpha + beta)).tolist(), strict=True)),
            alpha=alpha.tolist(),
            beta=beta.tolist(),
        )
    counts = attribution(loop.log.impression_counts(since, now, config.attribution_s))
    rows = loop.log.reward_rows(since, until, config.attribution_s)

    def stats(table: dict[str, Any]) -> dict[str, SourceStatsOut]:
        return {
            key: SourceStatsOut(impressions=v.impressions, clicks=v.clicks, ctr=v.ctr)
            for key, v in table.items()
        }

    return LoopOut(
        enabled=state.settings.loop,
        epsilon=config.epsilon,
        window_since=since,
        window_until=until,
        attribution_s=config.attribution_s,
        arms=[ArmOut(index=i, name=a.name, weights=a.weights) for i, a in enumerate(config.arms)],
        segments=segments,
        sources=stats(counts.get("sources", {})),
        positions=stats(counts.get("positions", {})),
        offpolicy=json_safe(offpolicy_report(rows, config, bandit)),
        slates_logged=loop.log.count_slates(),
        retraining=[RetrainOut(**asdict(e)) for e in loop.log.retrain_history(20)],
        history=[
            PolicySnapshot(at=at, segment=segment, probabilities=probs)
            for at, segment, probs in loop.log.policy_history(500)
        ],
    )


def _candidates(
    state: ServiceState,
    model: Any,
    user_id: str,
    events: list[tuple[str, float, Any]],
    history: list[str],
    n: int,
    excluded: set[str],
    token: int,
) -> list[Candidate]:
    """The model's best ``n`` items for the user, none excluded.

    With the candidate cache on, the model's top ``settings.candidates`` for this user are
    cached under the model version and a fingerprint of the history (its length and last
    event), so they are recomputed when either changes; exclusions are applied at every
    request, so an item hidden or consumed since is never served from the cache. ``token``
    was taken before the request read anything, so candidates computed from data that an
    invalidation has since changed are not cached.
    """
    settings = state.settings
    if not settings.candidate_cache or n > settings.candidates:
        return list(model.recommend(user_id, history, n, excluded))
    last = f"{events[-1][0]}@{events[-1][1]}" if events else "-"
    key = f"candidates:{model.version}:{len(events)}:{last}{user_scope(user_id)}"
    cached = state.cache.get(key)
    if cached is not None:
        rows = json.loads(cached)
        fresh = [Candidate(item, score, source) for item, score, source in rows]
        kept = [c for c in fresh if c.item_id not in excluded]
        if len(kept) >= n or len(fresh) < settings.candidates:
            return kept[:n]
    found = model.recommend(user_id, history, settings.candidates, excluded)
    rows = json.dumps([[c.item_id, c.score, c.source] for c in found]).encode()
    state.cache.set(key, rows, token=token)
    return list(found[:n])


LLM_RERANK_TOP_N = 20  # items the LLM re-orders when a request asks (rerank=llm)
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)  # hidden from fallback reasons


def _llm_rerank(
    state: ServiceState, user_id: str, history: list[str], candidates: list[Candidate]
) -> tuple[list[Candidate], str]:
    """The candidates re-ordered by the LLM ("llm"), or unchanged with the reason it could
    not run ("fallback: ..."): never silently. Each keeps its source label."""
    from recloop.generative.llm import GenerationError
    from recloop.generative.rerank import RERANKER, LLMReranker, display_title, rerank_items
    from recloop.service.generation import generative_consent, text_generator

    reranker = state.extensions.get(RERANKER)
    if reranker is None:
        reranker = LLMReranker(text_generator(state), top_n=LLM_RERANK_TOP_N)
        state.extensions[RERANKER] = reranker
    recent = history[-reranker.history_len :]
    if not recent:
        return candidates, "fallback: no history to re-rank from"
    titles = {}
    for item_id in {*recent, *(c.item_id for c in candidates[: reranker.top_n])}:
        record = state.store.get_item(item_id)
        year = record.attributes.get("year") if record is not None else None
        titles[item_id] = display_title(record.title, year) if record is not None else item_id
    consent = generative_consent(state, user_id)  # the history may go to a hosted LLM
    try:
        reordered = rerank_items(
            reranker, [titles[i] for i in recent], candidates, titles, consent=consent
        )
    except (GenerationError, RecloopError) as exc:
        log.warning("LLM re-ranking fell back to the blended order: %s", exc)
        # the backend's address is the operator's business, not the API caller's
        reason = _URL.sub("<backend>", " ".join(str(exc).split()))
        return candidates, f"fallback: {reason[:200]}"
    return reordered, "llm"


def _model(state: ServiceState) -> Any:
    model = state.models.current()
    if model is None:
        raise HTTPException(503, "no model version is active; train and activate one")
    return model


def app_from_env() -> FastAPI:
    """The app uvicorn's workers build (``recloop serve`` sets the environment)."""
    return create_app(ServiceSettings.from_env())
