"""The console's pages at ``/console``: server-rendered HTML over the service's own routes.

Every page needs an admin session (see :mod:`recloop.console.auth`); each POST checks the
form's CSRF token and answers a redirect (post/redirect/get) with a one-time notice. Pages read
the service through :class:`~recloop.console.api.ServiceApi`, i.e. exactly what ``/v1``
answers, so a route this deployment lacks shows "not available" on its panel only. Input
mistakes come back as a notice on the page, never as a traceback.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.staticfiles import StaticFiles

from recloop import __version__
from recloop.console import auth, views
from recloop.console.api import ApiError, ServiceApi
from recloop.console.auth import Form, Session
from recloop.console.views import FormError
from recloop.service.deps import service_state
from recloop.store.artifacts import ArtifactError
from recloop.store.slates import SlateLog

log = logging.getLogger("recloop.console")
router = APIRouter(prefix="/console", include_in_schema=False)
STATIC = Path(__file__).parent / "static"
NAV = (
    ("", "overview", "Overview"),
    ("/try", "try", "Try it"),
    ("/loop", "loop", "Loop"),
    ("/gaps", "gaps", "Gaps"),
    ("/review", "review", "Review"),
    ("/privacy", "privacy", "Privacy & fairness"),
)
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_templates = Environment(
    loader=PackageLoader("recloop.console", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _when(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def _num(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return "n/a" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _pct(value: Any) -> str:
    return f"{value:.1%}" if isinstance(value, int | float) else "n/a"


_templates.filters.update(when=_when, num=_num, pct=_pct)


# ------------------------------------------------------------------------------ helpers
def _base(request: Request) -> str:
    return f"{request.scope.get('root_path', '')}/console"


def _secure(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def _flash(request: Request) -> dict[str, str] | None:
    raw = request.cookies.get(auth.FLASH_COOKIE)
    if not raw:
        return None
    kind, _, message = unquote(raw).partition(":")
    return {"kind": "error" if kind == "error" else "ok", "text": message[:500]}


def render(
    request: Request,
    template: str,
    *,
    session: auth.ConsoleSession | None,
    page: str = "",
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    """A page in the base layout; the pending notice is shown once and cleared."""
    flash = _flash(request)
    body = _templates.get_template(template).render(
        base=_base(request),
        nav=NAV,
        page=page,
        session=session,
        csrf=session.csrf if session else "",
        flash=flash,
        recloop_version=__version__,
        **context,
    )
    response = HTMLResponse(body, status_code=status)
    if flash:
        auth.clear_cookie(request, response, auth.FLASH_COOKIE)
    _secure(response)
    return response


def redirect(
    request: Request, path: str, notice: str | None = None, *, error: bool = False
) -> Response:
    """303 to a console page (``path`` relative to /console), with a one-time notice."""
    response = RedirectResponse(_base(request) + path, status_code=303)
    if notice:
        value = quote(("error:" if error else "ok:") + notice[:500], safe="")
        auth.set_cookie(request, response, auth.FLASH_COOKIE, value, max_age=60)
    return _secure(response)


def _page(path: str, **params: Any) -> str:
    kept = {k: v for k, v in params.items() if v not in (None, "")}
    return path + ("?" + urlencode(kept) if kept else "")


def _field(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def _api(request: Request, session: auth.ConsoleSession) -> ServiceApi:
    return ServiceApi(request, session.principal)


async def _fetch(call: Awaitable[Any]) -> tuple[Any, str | None]:
    """``(answer, None)`` or ``(None, message)``: a failed panel, not a failed page."""
    try:
        return await call, None
    except ApiError as exc:
        return None, exc.message


def _error_page(request: Request, session: auth.ConsoleSession, status: int, message: str) -> Any:
    return render(
        request, "error.html", session=session, status=status, title="Error", message=message
    )


# ------------------------------------------------------------------------------ login
@router.get("", include_in_schema=False)
async def console_root(request: Request) -> Response:
    return redirect(request, "/")


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str = "") -> Response:
    state = service_state(request)
    session = await run_in_threadpool(auth.session_of, state, request.cookies.get(auth.COOKIE))
    if session is not None:
        return redirect(request, "/")
    return _login_page(request, _safe_next(next))


def _login_page(
    request: Request, next_path: str, error: str | None = None, status: int = 200
) -> HTMLResponse:
    token = request.cookies.get(auth.LOGIN_COOKIE) or secrets.token_urlsafe(32)
    response = render(
        request,
        "login.html",
        session=None,
        status=status,
        title="Log in",
        login_token=token,
        next=next_path,
        error=error,
    )
    auth.set_cookie(request, response, auth.LOGIN_COOKIE, token, max_age=auth.LOGIN_TTL_S)
    return response


def _safe_next(value: str) -> str:
    """A path inside the console to return to after login (always under /console, so never
    another site); anything odd becomes the overview."""
    if value.startswith("/") and len(value) < 500 and value.isprintable() and "\\" not in value:
        return value
    return "/"


@router.post("/login")
async def login(request: Request) -> Response:
    form = await request.form()
    expected = request.cookies.get(auth.LOGIN_COOKIE, "")
    sent = _field(form, auth.CSRF_FIELD)
    next_path = _safe_next(_field(form, "next"))
    if not expected or not sent or not _same(sent, expected):
        return _login_page(
            request, next_path, "The login form expired; please try again.", status=403
        )
    key = _field(form, "api_key")
    if not key.strip():
        return _login_page(request, next_path, "Enter an admin API key.", status=400)
    state = service_state(request)
    try:
        session_id, _ = await run_in_threadpool(auth.login, state, key)
    except auth.LoginError as exc:
        return _login_page(request, next_path, f"Login refused: {exc}.", status=401)
    response = redirect(request, next_path)
    auth.set_cookie(request, response, auth.COOKIE, session_id, max_age=auth.SESSION_TTL_S)
    auth.clear_cookie(request, response, auth.LOGIN_COOKIE)
    return response


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


@router.post("/logout")
async def logout(request: Request, session: Session, form: Form) -> Response:
    await run_in_threadpool(auth.logout, service_state(request), session)
    response = redirect(request, "/login", "Logged out.")
    auth.clear_cookie(request, response, auth.COOKIE)
    return response


# ------------------------------------------------------------------------------ overview
@router.get("/", response_class=HTMLResponse)
async def overview(request: Request, session: Session) -> Response:
    api = _api(request, session)
    state = service_state(request)
    models, error = await _fetch(api.call("GET", "/v1/models"))
    rows = views.version_rows(models) if models else []
    active = next((r for r in rows if r.active), None)
    card = None
    if models and active is not None:
        for v in models["versions"]:
            if v["version"] == active.version:
                card = (v.get("metadata") or {}).get("card")
    history = await run_in_threadpool(state.registry.history)
    return render(
        request,
        "overview.html",
        session=session,
        page="overview",
        title="Overview",
        error=error,
        rows=rows,
        active=active,
        board=views.leaderboard(rows),
        board_charts=views.leaderboard_charts(rows),
        segment_charts=views.segment_charts(card),
        metrics=views.LEADERBOARD_METRICS + views.BEYOND_METRICS,
        activations=list(reversed(history[-10:])),
        can_roll_back=len(history) >= 2,
    )


@router.post("/models/activate")
async def activate(request: Request, session: Session, form: Form) -> Response:
    try:
        version = views.matching(_field(form, "version"), views.VERSION, "version")
        await _api(request, session).call("POST", "/v1/models/{version}/activate", version=version)
    except (FormError, ApiError) as exc:
        return redirect(request, "/", _message(exc), error=True)
    return redirect(request, "/", f"{version} is now the active version.")


@router.post("/models/rollback")
async def rollback(request: Request, session: Session, form: Form) -> Response:
    state = service_state(request)

    def roll_back() -> str:
        version = state.registry.rollback()
        state.models.reload_now()
        state.cache.invalidate()
        return version

    try:
        version = await run_in_threadpool(roll_back)
    except ArtifactError as exc:
        return redirect(request, "/", f"Rollback refused: {exc}", error=True)
    log.info(
        "model version %s re-activated by rollback",
        version,
        extra={"key_id": session.principal.key_id},
    )
    return redirect(request, "/", f"Rolled back: {version} is active again.")


@router.get("/models/{version}", response_class=HTMLResponse)
async def model_card(request: Request, session: Session, version: str) -> Response:
    try:
        version = views.matching(version, views.VERSION, "version")
    except FormError as exc:
        return _error_page(request, session, 404, str(exc))
    card, error = await _fetch(
        _api(request, session).call("GET", "/v1/models/{version}/card", version=version)
    )
    return render(
        request,
        "card.html",
        session=session,
        page="overview",
        title=f"Model card {version}",
        version=version,
        card=card,
        error=error,
        segment_charts=views.segment_charts(card),
    )


@router.get("/models/{version}/card.md")
async def model_card_markdown(request: Request, session: Session, version: str) -> Response:
    try:
        version = views.matching(version, views.VERSION, "version")
        text = await _api(request, session).call(
            "GET", "/v1/models/{version}/card", version=version, format="markdown"
        )
    except (FormError, ApiError) as exc:
        return _error_page(request, session, 404, _message(exc))
    return _secure(Response(str(text), media_type="text/markdown; charset=utf-8"))


# ------------------------------------------------------------------------------ try it
@router.get("/try", response_class=HTMLResponse)
async def try_it(
    request: Request,
    session: Session,
    user: str = "",
    slate: str = "",
    conversation: str = "",
) -> Response:
    state = service_state(request)
    api = _api(request, session)
    problems: list[str] = []
    users = await run_in_threadpool(views.known_users, state)
    context: dict[str, Any] = {"users": users, "user": None, "slate": None, "chat": None}
    try:
        user_id = views.optional_identifier(user, "user id")
    except FormError as exc:
        problems.append(str(exc))
        user_id = None
    if user_id is not None:
        context.update(await _user_panel(request, session, user_id))
        if slate:
            view, problem = await _slate_panel(request, api, user_id, slate)
            context["slate"] = view
            if problem:
                problems.append(problem)
        if conversation:
            chat, problem = await _chat_panel(request, api, conversation)
            context["chat"] = chat
            if problem:
                problems.append(problem)
    return render(
        request,
        "try.html",
        session=session,
        page="try",
        title="Try it",
        problems=problems,
        chat_available=api.serves("POST", "/v1/conversations"),
        **context,
    )


async def _user_panel(
    request: Request, session: auth.ConsoleSession, user_id: str
) -> dict[str, Any]:
    state = service_state(request)

    def read() -> dict[str, Any]:
        events = state.store.history(user_id)
        recent = list(reversed(events[-25:]))
        names = views.titles(state, [item for item, _, _ in recent])
        return {
            "profile": state.store.get_user(user_id),
            "events": len(events),
            "history": [
                (item, names.get(item, ""), ts, kind.name.lower()) for item, ts, kind in recent
            ],
            "erased": user_id in state.erased,
        }

    found = await run_in_threadpool(read)
    consent, consent_error = await _fetch(
        _api(request, session).call("GET", "/v1/users/{user_id}/consent", user_id=user_id)
    )
    return {"user": user_id, **found, "consent": consent, "consent_error": consent_error}


async def _slate_panel(
    request: Request, api: ServiceApi, user_id: str, slate_id: str
) -> tuple[views.SlateView | None, str | None]:
    state = service_state(request)
    if not views.SLATE_ID.fullmatch(slate_id):
        return None, "That slate id is not valid."

    def read() -> views.SlateView | None:
        record = SlateLog(state.store).slate(slate_id)
        if record is None:
            return None
        names = views.titles(state, [imp.item_id for imp in record.items])
        feedback = views.slate_feedback(state, slate_id, record.user_id)
        return views.slate_from_log(record, names, feedback)

    view = await run_in_threadpool(read)
    if view is None:
        return None, f"Slate {slate_id} is not in the slate log (not written yet, or erased)."
    if view.user_id != user_id:
        return None, f"Slate {slate_id} belongs to another user."
    await _explain(api, view)
    return view, None


async def _explain(api: ServiceApi, view: views.SlateView) -> None:
    """Each item's explanation, or why there is none."""
    if not api.serves("GET", "/v1/explanations/{slate_id}/{position}"):
        for item in view.items:
            item.explanation_error = "explanations are not available on this service"
        return
    for item in view.items:
        found, error = await _fetch(
            api.call(
                "GET",
                "/v1/explanations/{slate_id}/{position}",
                slate_id=view.slate_id,
                position=item.position,
            )
        )
        item.explanation, item.explanation_error = found, error


async def _chat_panel(
    request: Request, api: ServiceApi, conversation_id: str
) -> tuple[dict[str, Any] | None, str | None]:
    if not views.SLATE_ID.fullmatch(conversation_id):
        return None, "That conversation id is not valid."
    found, error = await _fetch(
        api.call("GET", "/v1/conversations/{conversation_id}", conversation_id=conversation_id)
    )
    if found is None:
        return None, f"Conversation: {error}"
    state = service_state(request)
    items = [i for turn in found.get("turns", []) for i in turn.get("items", [])]
    names = await run_in_threadpool(views.titles, state, items)
    return {**found, "names": names}, None


@router.post("/try/users")
async def create_user(request: Request, session: Session, form: Form) -> Response:
    try:
        user_id = views.identifier(_field(form, "user"), "user id")
        attributes = {
            name: value
            for name in ("age", "gender", "occupation")
            if (value := views.text(_field(form, name), name, 64, required=False))
        }
        await _api(request, session).call(
            "POST", "/v1/users", body={"users": [{"user_id": user_id, "attributes": attributes}]}
        )
    except (FormError, ApiError) as exc:
        return redirect(request, "/try", _message(exc), error=True)
    return redirect(request, _page("/try", user=user_id), f"User {user_id} saved.")


@router.post("/try/recommend", response_class=HTMLResponse)
async def recommend(request: Request, session: Session, form: Form) -> Response:
    state = service_state(request)
    api = _api(request, session)
    try:
        user_id = views.identifier(_field(form, "user"), "user id")
        n = views.integer(_field(form, "n"), "number of items", 1, 50, 10)
        answer = await api.call("GET", "/v1/users/{user_id}/recommendations", user_id=user_id, n=n)
    except (FormError, ApiError) as exc:
        back = _page("/try", user=_field(form, "user"))
        return redirect(request, back, _message(exc), error=True)
    await run_in_threadpool(state.slates.flush)  # the slate log now holds it (explanations)
    if await run_in_threadpool(SlateLog(state.store).slate, answer["slate_id"]) is not None:
        return redirect(request, _page("/try", user=user_id, slate=answer["slate_id"]))
    # not logged (an erased user's unpersonalised answer): show it once, as answered
    names = await run_in_threadpool(views.titles, state, [i["item_id"] for i in answer["items"]])
    view = views.slate_from_answer(answer, names)
    context = await _user_panel(request, session, user_id)
    return render(
        request,
        "try.html",
        session=session,
        page="try",
        title="Try it",
        problems=["This slate was not logged (the user is erased): feedback cannot cite it."],
        users=await run_in_threadpool(views.known_users, state),
        slate=view,
        chat=None,
        chat_available=api.serves("POST", "/v1/conversations"),
        **context,
    )


FEEDBACK_KINDS = ("click", "like", "dislike", "purchase")


def _check_shown(state: Any, slate_id: str, user_id: str, item_id: str) -> None:
    """Feedback answers a slate: it must exist, be the user's and have shown the item."""
    record = SlateLog(state.store).slate(slate_id)
    if record is None:
        raise FormError(f"slate {slate_id} is not in the slate log (not written yet, or erased)")
    if record.user_id != user_id:
        raise FormError(f"slate {slate_id} belongs to another user")
    if item_id not in {imp.item_id for imp in record.items}:
        raise FormError(f"slate {slate_id} did not show {item_id}")


@router.post("/try/feedback")
async def feedback(request: Request, session: Session, form: Form) -> Response:
    user = _field(form, "user")
    slate_id = _field(form, "slate")
    back = _page("/try", user=user, slate=slate_id)
    try:
        user_id = views.identifier(user, "user id")
        item_id = views.identifier(_field(form, "item"), "item id")
        slate_id = views.matching(slate_id, views.SLATE_ID, "slate id")
        kind = _field(form, "kind")
        if kind not in FEEDBACK_KINDS:
            raise FormError(f"feedback must be one of {', '.join(FEEDBACK_KINDS)}")
        await run_in_threadpool(_check_shown, service_state(request), slate_id, user_id, item_id)
        event = {
            "event_id": f"console-{uuid.uuid4().hex}",
            "user_id": user_id,
            "item_id": item_id,
            "kind": kind,
            "slate_id": slate_id,
            "context": {"surface": "console"},
        }
        result = await _api(request, session).call("POST", "/v1/events", body={"events": [event]})
    except (FormError, ApiError) as exc:
        return redirect(request, back, _message(exc), error=True)
    if result.get("stored") == 1:
        return redirect(request, back, f"Stored: {kind} on {item_id} (slate {slate_id[:8]}…).")
    if result.get("refused_erased"):
        return redirect(request, back, f"Refused: {user_id} is erased.", error=True)
    reasons = "; ".join(
        f"{e['field']}: {e['message']}" for r in result.get("rejected", []) for e in r["errors"]
    )
    return redirect(request, back, f"Not stored: {reasons or 'duplicate'}", error=True)


@router.post("/try/chat")
async def chat(request: Request, session: Session, form: Form) -> Response:
    user = _field(form, "user")
    conversation = _field(form, "conversation")
    slate_id = _field(form, "slate")
    api = _api(request, session)
    try:
        user_id = views.identifier(user, "user id")
        message = views.text(_field(form, "message"), "message", 1000)
        if conversation:
            conversation = views.matching(conversation, views.SLATE_ID, "conversation id")
            answer = await api.call(
                "POST",
                "/v1/conversations/{conversation_id}/messages",
                conversation_id=conversation,
                body={"message": message},
            )
        else:
            answer = await api.call(
                "POST", "/v1/conversations", body={"user_id": user_id, "message": message}
            )
    except (FormError, ApiError) as exc:
        back = _page("/try", user=user, slate=slate_id, conversation=conversation)
        return redirect(request, back, _message(exc), error=True)
    back = _page("/try", user=user_id, slate=slate_id, conversation=answer["conversation_id"])
    return redirect(request, back)


# ------------------------------------------------------------------------------ loop
@router.get("/loop", response_class=HTMLResponse)
async def loop_page(request: Request, session: Session) -> Response:
    loop, error = await _fetch(_api(request, session).call("GET", "/v1/loop"))
    return render(
        request,
        "loop.html",
        session=session,
        page="loop",
        title="Loop",
        report=loop,
        error=error,
        charts=views.loop_charts(loop) if loop else None,
    )


# ------------------------------------------------------------------------------ gaps
@router.get("/gaps", response_class=HTMLResponse)
async def gaps_page(request: Request, session: Session, segments: str = "8") -> Response:
    api = _api(request, session)
    problems = []
    try:
        n = views.integer(segments, "segments", 2, 64, 8)
    except FormError as exc:
        problems.append(str(exc))
        n = 8
    gaps, error = await _fetch(api.call("GET", "/v1/gaps", segments=n))
    content: dict[int, list[dict[str, Any]]] = {}
    names: dict[str, str] = {}
    review_error = None
    if gaps:
        pieces, review_error = await _fetch(api.call("GET", "/v1/review", status="all", limit=1000))
        by_name = {
            views.gap_segment_name(gaps["model_version"], len(gaps["segments"]), s["segment"]): s[
                "segment"
            ]
            for s in gaps["segments"]
        }
        for piece in (pieces or {}).get("pieces", []):
            segment = by_name.get(piece.get("segment"))
            if segment is not None:
                content.setdefault(segment, []).append(piece)
        state = service_state(request)
        names = await run_in_threadpool(
            views.titles, state, [i for s in gaps["segments"] for i in s["top_items"][:5]]
        )
    return render(
        request,
        "gaps.html",
        session=session,
        page="gaps",
        title="Gaps",
        n_segments=n,
        gaps=gaps,
        error=error,
        problems=problems,
        map_svg=views.gap_map(gaps) if gaps else None,
        colours=views.gap_colours(gaps) if gaps else {},
        content=content,
        names=names,
        review_error=review_error,
    )


# ------------------------------------------------------------------------------ review
REVIEW_STATUSES = ("pending", "approved", "rejected", "all")


@router.get("/review", response_class=HTMLResponse)
async def review_page(request: Request, session: Session, status: str = "pending") -> Response:
    api = _api(request, session)
    status = status if status in REVIEW_STATUSES else "pending"
    listing, error = await _fetch(api.call("GET", "/v1/review", status=status, limit=200))
    pieces = []
    if listing:
        state = service_state(request)
        names = await run_in_threadpool(
            views.titles, state, [i for p in listing["pieces"] for i in p.get("items", [])]
        )
        pieces = [views.piece_view(p, names) for p in listing["pieces"]]
    return render(
        request,
        "review.html",
        session=session,
        page="review",
        title="Review",
        shown=status,
        statuses=REVIEW_STATUSES,
        listing=listing,
        pieces=pieces,
        error=error,
    )


@router.post("/review/generate")
async def generate(request: Request, session: Session, form: Form) -> Response:
    back = "/gaps" if _field(form, "back") == "gaps" else "/review"
    try:
        segments = views.integer(_field(form, "segments"), "segments", 2, 64, 8)
        top = views.integer(_field(form, "top"), "segments to serve", 1, 20, 3)
        result = await _api(request, session).call(
            "POST", "/v1/review/generate", body={"segments": segments, "top": top}
        )
    except (FormError, ApiError) as exc:
        return redirect(request, back, _message(exc), error=True)
    if back == "/gaps":
        back = _page("/gaps", segments=segments)
    submitted = result.get("submitted", [])
    pending = sum(1 for p in submitted if p.get("status") == "pending")
    return redirect(
        request,
        back,
        f"Generated {len(submitted)} pieces for the worst-served segments: {pending} await "
        f"review, {len(submitted) - pending} failed the automatic checks.",
    )


@router.post("/review/{content_id}/{action}")
async def decide(
    request: Request, session: Session, form: Form, content_id: str, action: str
) -> Response:
    status = _field(form, "status")
    back = _page("/review", status=status if status in REVIEW_STATUSES else None)
    try:
        content_id = views.matching(content_id, views.CONTENT_ID, "content id")
        body: dict[str, Any] | None = None
        if action == "reject":
            body = {"reason": views.text(_field(form, "reason"), "a reason to reject", 2000)}
        elif action == "edit":
            body = {
                "title": views.text(_field(form, "title"), "title", 500),
                "description": views.text(_field(form, "description"), "description", 5000),
                "items": views.id_list(_field(form, "items"), "items"),
                "approve": _field(form, "approve") == "on",
            }
        elif action != "approve":
            raise FormError("unknown review action (approve, reject or edit)")
        piece = await _api(request, session).call(
            "POST", f"/v1/review/{{content_id}}/{action}", content_id=content_id, body=body
        )
    except (FormError, ApiError) as exc:
        return redirect(request, back, _message(exc), error=True)
    return redirect(
        request, back, f"“{piece.get('title', content_id)}” is now {piece.get('status')}."
    )


# ------------------------------------------------------------------------------ privacy
@router.get("/privacy", response_class=HTMLResponse)
async def privacy_page(
    request: Request, session: Session, user: str = "", subject: str = ""
) -> Response:
    api = _api(request, session)
    problems = []
    consent = consent_error = None
    try:
        user_id = views.optional_identifier(user, "user id")
        subject_id = views.optional_identifier(subject, "audit subject")
    except FormError as exc:
        problems.append(str(exc))
        user_id = subject_id = None
    if user_id:
        consent, consent_error = await _fetch(
            api.call("GET", "/v1/users/{user_id}/consent", user_id=user_id)
        )
    audit, audit_error = await _fetch(api.call("GET", "/v1/audit", subject=subject_id, limit=50))
    fairness, fairness_error = await _fetch(api.call("GET", "/v1/fairness"))
    models, _ = await _fetch(api.call("GET", "/v1/models"))
    card = None
    for v in (models or {}).get("versions", []):
        if v.get("active"):
            card = (v.get("metadata") or {}).get("card")
    return render(
        request,
        "privacy.html",
        session=session,
        page="privacy",
        title="Privacy & fairness",
        problems=problems,
        user=user_id,
        subject=subject_id,
        consent=consent,
        consent_error=consent_error,
        audit=(audit or {}).get("entries", []),
        audit_error=audit_error,
        fairness=views.fairness_charts(fairness) if fairness else None,
        fairness_error=fairness_error,
        segment_charts=views.segment_charts(card),
        active=(models or {}).get("active"),
    )


@router.post("/privacy/consent")
async def set_consent(request: Request, session: Session, form: Form) -> Response:
    user = _field(form, "user")
    try:
        user_id = views.identifier(user, "user id")
        flags = ("personalisation", "training", "generative")
        body = {flag: _field(form, flag) == "on" for flag in flags}
        await _api(request, session).call(
            "PUT", "/v1/users/{user_id}/consent", user_id=user_id, body=body
        )
    except (FormError, ApiError) as exc:
        return redirect(request, _page("/privacy", user=user), _message(exc), error=True)
    shown = ", ".join(f"{k} {'on' if v else 'off'}" for k, v in body.items())
    return redirect(request, _page("/privacy", user=user_id), f"Consent of {user_id}: {shown}.")


@router.post("/privacy/erase")
async def erase(request: Request, session: Session, form: Form) -> Response:
    user = _field(form, "user")
    try:
        user_id = views.identifier(user, "user id")
        if _field(form, "confirm").strip() != user_id:
            raise FormError("type the user id again to confirm the erasure")
        report = await _api(request, session).call("DELETE", "/v1/users/{user_id}", user_id=user_id)
    except (FormError, ApiError) as exc:
        return redirect(request, _page("/privacy", user=user), _message(exc), error=True)
    rebuild = report.get("model_rebuild_by")
    notice = (
        f"Erased {user_id}: {report.get('events', 0)} events, {report.get('slates', 0)} slates, "
        f"{report.get('cache_entries_purged', 0)} cache entries; "
        + (f"models rebuilt by {_when(rebuild)}." if rebuild else "retrain models by hand.")
    )
    return redirect(request, _page("/privacy", subject=user_id), notice)


def _message(exc: Exception) -> str:
    return exc.message if isinstance(exc, ApiError) else str(exc)


# ------------------------------------------------------------------------------ mounting
def mount(app: FastAPI) -> None:
    """Serve the console at ``/console`` (pages) and ``/console/static`` (CSS, JS) on ``app``.

    Safe to call twice; the second call does nothing."""
    if any(getattr(route, "name", None) == "console-static" for route in app.routes):
        return
    app.include_router(router)
    app.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")

    async def login_required(request: Request, exc: Exception) -> Response:
        target = request.url.path.removeprefix(_base(request))
        if request.method == "GET" and target not in ("", "/"):
            query = f"?{request.url.query}" if request.url.query else ""
            return redirect(request, "/login?" + urlencode({"next": target + query}))
        return redirect(request, "/login")

    async def csrf_failed(request: Request, exc: Exception) -> Response:
        return render(
            request,
            "error.html",
            session=None,
            status=403,
            title="Form expired",
            message="This form was stale or did not come from the console (CSRF token "
            "mismatch). Go back, reload the page and try again.",
        )

    async def rate_limited(request: Request, exc: Exception) -> Response:
        response = render(
            request,
            "error.html",
            session=None,
            status=429,
            title="Slow down",
            message="This admin key is over its rate limit; try again shortly.",
        )
        if isinstance(exc, auth.RateLimited):
            response.headers["Retry-After"] = exc.retry_after
        return response

    app.add_exception_handler(auth.LoginRequired, login_required)
    app.add_exception_handler(auth.CsrfError, csrf_failed)
    app.add_exception_handler(auth.RateLimited, rate_limited)
