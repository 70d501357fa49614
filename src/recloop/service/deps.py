"""FastAPI dependencies every router shares: the worker's state and the API-key roles."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path, Request

from recloop.service.auth import AuthError, Principal, authenticate, require_role
from recloop.service.state import ServiceState

# The ids of the request bodies' Identifier: no control characters (PostgreSQL refuses NUL).
PathId = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")]


def service_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.recloop
    return state


def _principal(request: Request, role: str) -> Principal:
    state = service_state(request)
    try:
        principal = authenticate(request.headers, state.keys)
        require_role(principal, role)
    except AuthError as exc:
        raise HTTPException(exc.status, exc.message, headers=exc.headers or None) from None
    request.state.key_id = principal.key_id
    decision = state.limiter.check(principal.key_id)
    if not decision.allowed:
        headers = {"Retry-After": decision.retry_after_header}
        raise HTTPException(429, "rate limit exceeded", headers=headers)
    return principal


async def client_key(request: Request) -> Principal:
    """A key allowed to do what client apps do (admin keys too)."""
    return _principal(request, "client")


async def admin_key(request: Request) -> Principal:
    """An admin key."""
    return _principal(request, "admin")


Client = Annotated[Principal, Depends(client_key)]
Admin = Annotated[Principal, Depends(admin_key)]
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing, unknown or revoked API key"},
    403: {"description": "The key's role does not allow this"},
    429: {"description": "Rate limit exceeded; see Retry-After"},
}
