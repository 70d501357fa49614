"""Console login: an admin API key buys a server-side session; forms carry CSRF tokens.

- **Login** takes an admin key (a client key is refused) and creates a session: a random id
  (256 bits) goes to the browser in the ``recloop_console`` cookie (HttpOnly, SameSite=Strict,
  Path=/console, Secure over https); the server keeps only its SHA-256.
- **Sessions are kept in the store's key table**, as revocable rows with key ids
  ``console-<admin key id>-<random>`` and the session's hash. Not in the service cache: every
  consent change, erasure, activation or item edit invalidates the whole cache, which would
  log every operator out. A row's hash is that of ``"recloop-console-session:" + id``, which
  no well-formed API key (``rlk_…``) can hash to, so a session id is never usable as a key.
  Sessions last :data:`SESSION_TTL_S` and end at logout, when the admin key they came from is
  revoked, or with ``recloop keys revoke console-…``; every worker and host sees the same rows.
- **CSRF**: every form carries the session's token (an HMAC of the session id) in a hidden
  field, and every POST is refused unless it matches. The login form, before any session,
  uses a random token in a short-lived cookie (double submit).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from starlette.datastructures import FormData
from starlette.responses import Response

from recloop.service.auth import Principal
from recloop.service.deps import service_state
from recloop.service.state import ServiceState
from recloop.store.events import KeyRecord

log = logging.getLogger("recloop.console")

COOKIE = "recloop_console"
LOGIN_COOKIE = "recloop_console_login"
FLASH_COOKIE = "recloop_console_flash"
COOKIE_PATH = "/console"
CSRF_FIELD = "csrf_token"
SESSION_TTL_S = 8 * 3600.0
LOGIN_TTL_S = 1800.0
SESSION_PREFIX = "console-"
_HASH_PREFIX = "recloop-console-session:"
_CSRF_MESSAGE = b"recloop-console-csrf"


class LoginRequired(Exception):
    """No valid session: the page answers a redirect to the login form."""


class CsrfError(Exception):
    """A POST without the form's token, or with a wrong one."""


class RateLimited(Exception):
    """The admin key is over its rate limit: the page answers 429."""

    def __init__(self, retry_after: str) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


class LoginError(Exception):
    """A key that may not log in; the message is safe to show (it never echoes the key)."""


@dataclass(frozen=True)
class ConsoleSession:
    """A logged-in operator: the admin key they logged in with, and the form token."""

    session_key_id: str
    principal: Principal
    csrf: str
    expires_at: float


def session_hash(session_id: str) -> str:
    return hashlib.sha256((_HASH_PREFIX + session_id).encode("utf-8")).hexdigest()


def csrf_token(session_id: str) -> str:
    return hmac.new(session_id.encode("utf-8"), _CSRF_MESSAGE, hashlib.sha256).hexdigest()


def _parent_key_id(session_key_id: str) -> str:
    return session_key_id[len(SESSION_PREFIX) :].rsplit("-", 1)[0]


def login(state: ServiceState, secret_key: str, now: float | None = None) -> tuple[str, str]:
    """Check an admin key and open a session: ``(session id for the cookie, admin key id)``."""
    now = time.time() if now is None else now
    principal = state.keys.principal(secret_key.strip())
    if principal is None:
        raise LoginError("unknown or revoked key")
    if principal.role != "admin":
        raise LoginError("only admin keys may use the console; this key is a client key")
    _sweep(state, now)
    session_id = secrets.token_urlsafe(32)
    record = KeyRecord(
        key_id=f"{SESSION_PREFIX}{principal.key_id}-{secrets.token_hex(8)}",
        name=f"console session of {principal.name}",
        role="admin",
        key_hash=session_hash(session_id),
        created_at=now,
    )
    state.store.add_key(record)
    log.info("console login", extra={"key_id": principal.key_id})
    return session_id, principal.key_id


def session_of(
    state: ServiceState, session_id: str | None, now: float | None = None
) -> ConsoleSession | None:
    """The live session behind a cookie value, or None (unknown, expired, logged out, or its
    admin key revoked)."""
    if not session_id or len(session_id) > 256:
        return None
    now = time.time() if now is None else now
    record = state.store.key_by_hash(session_hash(session_id))
    if record is None or not record.key_id.startswith(SESSION_PREFIX):
        return None
    expires_at = record.created_at + SESSION_TTL_S
    if record.revoked_at is not None and record.revoked_at <= now:
        return None
    if expires_at <= now:
        state.store.revoke_key(record.key_id, expires_at)
        return None
    parent_id = _parent_key_id(record.key_id)
    parent = next((k for k in state.store.list_keys() if k.key_id == parent_id), None)
    if (
        parent is None
        or parent.role != "admin"
        or (parent.revoked_at is not None and parent.revoked_at <= now)
    ):
        return None
    return ConsoleSession(
        session_key_id=record.key_id,
        principal=Principal(parent.key_id, parent.name, parent.role, parent.owner),
        csrf=csrf_token(session_id),
        expires_at=expires_at,
    )


def logout(state: ServiceState, session: ConsoleSession, now: float | None = None) -> None:
    """End the session in every worker at once."""
    state.store.revoke_key(session.session_key_id, time.time() if now is None else now)
    log.info("console logout", extra={"key_id": session.principal.key_id})


def _sweep(state: ServiceState, now: float) -> None:
    """Mark sessions past their lifetime as revoked (at their expiry), so that key listings
    never show a stale session as live."""
    for record in state.store.list_keys():
        expires_at = record.created_at + SESSION_TTL_S
        live = record.revoked_at is None and expires_at <= now
        if record.key_id.startswith(SESSION_PREFIX) and live:
            state.store.revoke_key(record.key_id, expires_at)


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: float) -> None:
    """A console cookie: HttpOnly, SameSite=Strict, Path=/console, Secure over https."""
    response.set_cookie(
        name,
        value,
        max_age=int(max_age),
        path=COOKIE_PATH,
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )


def clear_cookie(request: Request, response: Response, name: str) -> None:
    response.delete_cookie(
        name,
        path=COOKIE_PATH,
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )


def console_session(request: Request) -> ConsoleSession:
    """The request's session (FastAPI dependency, run in the thread pool: it reads the
    store); :class:`LoginRequired` when there is none. Console requests count against the
    admin key's rate limit, like its API calls."""
    state = service_state(request)
    session = session_of(state, request.cookies.get(COOKIE))
    if session is None:
        raise LoginRequired()
    request.state.key_id = session.principal.key_id
    decision = state.limiter.check(session.principal.key_id)
    if not decision.allowed:
        raise RateLimited(decision.retry_after_header)
    return session


Session = Annotated[ConsoleSession, Depends(console_session)]


async def checked_form(request: Request, session: Session) -> FormData:
    """The POSTed form, once its CSRF token matched the session's (FastAPI dependency)."""
    form = await request.form()
    sent = form.get(CSRF_FIELD)
    if not isinstance(sent, str) or not hmac.compare_digest(sent, session.csrf):
        raise CsrfError()
    return form


Form = Annotated[FormData, Depends(checked_form)]
