"""The service's own ``/v1`` routes, called in-process on behalf of a console session.

The console shows exactly what the HTTP API answers, without a key in the browser: each call
finds the route this app serves for ``method`` and ``path`` (a template such as
``/v1/models/{version}/activate``), hands its endpoint the console's request, the session's
admin principal for the route's key dependency, the given path and query values and the body
(validated by the route's own body model), and returns the answer as plain JSON values. A
route this service does not serve raises :class:`NotAvailable`, so a page can say "not
available" on one panel instead of failing. FastAPI's parameter checks do not run on this
path: callers pass values they have validated.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, Request
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from recloop.errors import RecloopError
from recloop.service.auth import Principal
from recloop.service.deps import admin_key, client_key
from recloop.store.artifacts import ArtifactError
from recloop.store.events import StoreError

_KEY_DEPENDENCIES = (admin_key, client_key)


class ApiError(Exception):
    """A route answered 4xx/5xx: ``status`` and a message fit to show on the page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class NotAvailable(ApiError):
    """This service does not serve the route (an older or partial deployment)."""

    def __init__(self, what: str) -> None:
        super().__init__(501, f"not available on this service ({what})")


def route_for(app: Any, method: str, path: str) -> APIRoute | None:
    """The API route that serves ``method`` on the path template ``path``, if any."""
    for full_path, route in _api_routes(app.router.routes):
        if full_path == path and method in (route.methods or ()):
            return route
    return None


def _api_routes(routes: Iterable[Any], prefix: str = "") -> Iterator[tuple[str, APIRoute]]:
    """Every API route with its full path. Older FastAPI copies included routes into the
    app's list; newer FastAPI keeps each included router behind a wrapper that holds it as
    ``original_router``, with the include's prefix. A router included with dependencies of
    its own is skipped: calling its endpoints directly would bypass them."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield prefix + route.path, route
            continue
        included = getattr(route, "original_router", None)
        context = getattr(route, "include_context", None)
        if included is None or getattr(context, "dependencies", None):
            continue
        yield from _api_routes(included.routes, prefix + str(getattr(context, "prefix", "")))


def validation_message(exc: ValidationError) -> str:
    """A pydantic error as one readable line: ``field: message; …``."""
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{field}: {err.get('msg', 'invalid')}" if field else err.get("msg", ""))
    return "; ".join(parts) or "invalid input"


def plain(value: Any) -> Any:
    """An endpoint's return value as JSON values (dicts, lists, numbers, strings)."""
    if isinstance(value, Response):
        body = bytes(value.body)
        if value.media_type == "application/json":
            return json.loads(body)
        return body.decode("utf-8", errors="replace")
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


@dataclass(frozen=True)
class ServiceApi:
    """The ``/v1`` routes as seen by one admin principal, for one console request."""

    request: Request
    principal: Principal

    def serves(self, method: str, path: str) -> bool:
        return route_for(self.request.app, method, path) is not None

    async def call(
        self, method: str, path: str, *, body: dict[str, Any] | None = None, **values: Any
    ) -> Any:
        """The route's answer as JSON values; :class:`ApiError` for a 4xx/5xx answer."""
        route = route_for(self.request.app, method, path)
        if route is None:
            raise NotAvailable(f"{method} {path}")
        dependant = route.dependant
        kwargs: dict[str, Any] = {}
        if dependant.request_param_name:
            kwargs[dependant.request_param_name] = self.request
        for dependency in dependant.dependencies:
            if dependency.call not in _KEY_DEPENDENCIES or dependency.name is None:
                raise NotAvailable(f"{method} {path} needs a dependency the console lacks")
            kwargs[dependency.name] = self.principal
        for field in [*dependant.path_params, *dependant.query_params]:
            if field.name in values:
                kwargs[field.name] = values.pop(field.name)
        if values:
            raise TypeError(f"{method} {path} takes no parameter {', '.join(values)}")
        if dependant.body_params:
            field = dependant.body_params[0]
            model = field.field_info.annotation
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                raise NotAvailable(f"{method} {path} takes a body the console cannot build")
            try:
                kwargs[field.name] = model.model_validate(body or {})
            except ValidationError as exc:
                raise ApiError(422, validation_message(exc)) from None
        try:
            if inspect.iscoroutinefunction(route.endpoint):
                result = await route.endpoint(**kwargs)
            else:
                result = await run_in_threadpool(route.endpoint, **kwargs)
        except HTTPException as exc:
            raise ApiError(exc.status_code, str(exc.detail)) from None
        except ArtifactError as exc:
            raise ApiError(404, str(exc)) from None
        except (StoreError, RecloopError) as exc:
            raise ApiError(400, str(exc)) from None
        except ValidationError as exc:
            raise ApiError(422, validation_message(exc)) from None
        return plain(result)
