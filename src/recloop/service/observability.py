"""JSON logs, request ids, request-size limits and Prometheus metrics for the HTTP service.

:class:`ObservabilityMiddleware` is a pure ASGI middleware (Starlette's ``BaseHTTPMiddleware``
costs a task and a queue per request) that, for every HTTP request, assigns a request id, refuses
oversized bodies with 413, writes one JSON access-log line and updates two Prometheus metrics.

Metrics live in a registry per process: under ``uvicorn --workers N`` each scrape of
``GET /metrics`` sees the worker that answered it, not the sum of all of them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TextIO

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "REGISTRY",
    "REQUEST_ID_HEADER",
    "JsonFormatter",
    "ObservabilityMiddleware",
    "configure_json_logging",
    "metrics_response",
    "register_stats",
]

REQUEST_ID_HEADER = "X-Request-ID"

# The service's own registry (not prometheus_client's global one, so tests can make theirs),
# with the usual process, platform and GC collectors.
REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

# Suited to a service whose requests take 1 ms to 2 s.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0)

# ---------------------------------------------------------------------------------------------
# JSON logging

# Attributes every LogRecord has; anything else on a record came in through ``extra=``.
_RECORD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)
_CORE_FIELDS = frozenset({"ts", "level", "logger", "msg"})


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts`` (ISO-8601 UTC), ``level``, ``logger``, ``msg``, extras."""

    def format(self, record: logging.LogRecord) -> str:
        created = record.created
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and key not in _CORE_FIELDS:
                payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        return json.dumps(payload, default=str, separators=(",", ":"))


class _JsonHandler(logging.StreamHandler[TextIO]):
    """The handler :func:`configure_json_logging` installs; its type marks it for replacement."""


_JSON_LOGGERS = ("recloop", "uvicorn.error")


def configure_json_logging(level: str = "INFO", stream: TextIO | None = None) -> None:
    """Make the ``recloop`` loggers and uvicorn's error logger write one JSON object per line.

    Calling it again replaces the handler rather than adding a second one. Call it after uvicorn
    has applied its own logging config (in the app factory or lifespan), or run uvicorn with
    ``log_config=None``; and run uvicorn with ``access_log=False``, since
    :class:`ObservabilityMiddleware` writes the access log.
    """
    handler = _JsonHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in _JSON_LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if isinstance(h, _JsonHandler)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(level.upper())
        logger.propagate = False  # otherwise a root handler would print every line twice


# ---------------------------------------------------------------------------------------------
# Prometheus


class _HttpMetrics:
    """The two HTTP metrics of one registry, with their label children cached."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "recloop_http_requests_total",
            "HTTP requests answered, by method, route template and status.",
            ("method", "route", "status"),
            registry=registry,
        )
        self.duration = Histogram(
            "recloop_http_request_duration_seconds",
            "Time from receiving an HTTP request to sending the end of its response.",
            ("method", "route"),
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one request and record its duration."""
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(method, route, str(status)),
                self.duration.labels(method, route),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


_metrics_by_registry: weakref.WeakKeyDictionary[CollectorRegistry, _HttpMetrics] = (
    weakref.WeakKeyDictionary()
)
_metrics_lock = threading.Lock()


def _metrics_for(registry: CollectorRegistry) -> _HttpMetrics:
    """The HTTP metrics registered on ``registry``, created once however many apps share it."""
    with _metrics_lock:
        metrics = _metrics_by_registry.get(registry)
        if metrics is None:
            metrics = _HttpMetrics(registry)
            _metrics_by_registry[registry] = metrics
        return metrics


class _StatsCollector:
    """A background worker's counters and gauges, read from it at every scrape."""

    def __init__(
        self,
        prefix: str,
        read: Callable[[], Mapping[str, float]],
        counters: Mapping[str, str],
        gauges: Mapping[str, str],
    ) -> None:
        self.prefix = prefix
        self.read = read
        self.counters = dict(counters)
        self.gauges = dict(gauges)

    def collect(self) -> Iterator[Metric]:
        values = self.read()
        for name, documentation in self.counters.items():
            yield CounterMetricFamily(
                f"{self.prefix}_{name}", documentation, value=values.get(name, 0.0)
            )
        for name, documentation in self.gauges.items():
            yield GaugeMetricFamily(
                f"{self.prefix}_{name}", documentation, value=values.get(name, 0.0)
            )

    def describe(self) -> Iterator[Metric]:
        """The metric names without reading the worker (checked when registered)."""
        for name, documentation in self.counters.items():
            yield CounterMetricFamily(f"{self.prefix}_{name}", documentation)
        for name, documentation in self.gauges.items():
            yield GaugeMetricFamily(f"{self.prefix}_{name}", documentation)


def register_stats(
    registry: CollectorRegistry,
    prefix: str,
    read: Callable[[], Mapping[str, float]],
    counters: Mapping[str, str],
    gauges: Mapping[str, str] | None = None,
) -> None:
    """Expose a background worker's plain counters on ``registry``: ``read()`` gives their
    values at scrape time; ``counters`` and ``gauges`` name each with its help text (counters
    get ``_total`` appended, as Prometheus expects)."""
    registry.register(_StatsCollector(prefix, read, counters, gauges or {}))


def metrics_response(registry: CollectorRegistry | None = None) -> tuple[bytes, str]:
    """``(body, content_type)`` of the Prometheus text exposition, for ``GET /metrics``."""
    return generate_latest(registry if registry is not None else REGISTRY), CONTENT_TYPE_LATEST


# ---------------------------------------------------------------------------------------------
# The middleware

_REQUEST_ID_RE = re.compile(rb"[A-Za-z0-9._-]{1,64}")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_UNMATCHED = "unmatched"  # the route label of requests no route matched: keeps labels bounded


class _BodyTooLarge(Exception):
    """Raised from ``receive`` once a streamed body passes the limit, to stop the app reading."""


class ObservabilityMiddleware:
    """Request ids, body-size limits, a JSON access log and Prometheus metrics, as pure ASGI.

    * The client's ``X-Request-ID`` is kept when it is a sane token (1-64 of ``[A-Za-z0-9._-]``),
      else replaced by a uuid4 hex; it goes into ``scope["state"]["request_id"]`` (that is,
      ``request.state.request_id``) and back in the response's ``X-Request-ID``.
    * A body over ``max_body_bytes`` gets 413 ``{"detail": "request body exceeds N bytes"}``:
      up front by ``Content-Length``, else as soon as the streamed chunks pass the limit, so an
      oversized body is never held in memory.
    * After the response, one access-log line on ``logger_name`` (INFO): ``request_id``,
      ``method``, ``path`` (the route template when a route matched, else the raw path, never
      the query string), ``status``, ``duration_ms`` and ``key_id`` when the app set
      ``request.state.key_id``. Never headers or bodies.
    * ``recloop_http_requests_total{method,route,status}`` and
      ``recloop_http_request_duration_seconds{method,route}`` on ``registry`` (default
      :data:`REGISTRY`). Unknown methods count as ``OTHER`` and unmatched paths as route
      ``unmatched``, so clients cannot grow the label sets.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int = 10 * 1024 * 1024,
        logger_name: str = "recloop.access",
        registry: CollectorRegistry | None = None,
    ) -> None:
        if max_body_bytes < 0:
            raise ValueError(f"max_body_bytes must be >= 0, got {max_body_bytes}")
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.logger = logging.getLogger(logger_name)
        self._metrics = _metrics_for(registry if registry is not None else REGISTRY)
        self._too_large_body = json.dumps(
            {"detail": f"request body exceeds {max_body_bytes} bytes"}
        ).encode()
        self._too_large_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self._too_large_body)).encode()),
            (b"connection", b"close"),  # the unread rest of the body makes the connection unusable
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        limit = self.max_body_bytes
        request_id: str | None = None
        content_length = -1
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                if request_id is None and _REQUEST_ID_RE.fullmatch(value):
                    request_id = value.decode("ascii")
            elif name == b"content-length":
                # A malformed length is the server's to reject; the chunk count still applies.
                with contextlib.suppress(ValueError):
                    content_length = int(value)
        if request_id is None:
            request_id = uuid.uuid4().hex
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state["request_id"] = request_id
        request_id_header = (b"x-request-id", request_id.encode("ascii"))
        root_path = scope.get("root_path", "")

        if content_length > limit:
            await self._reject(send, request_id_header)
            self._record(scope, state, root_path, 413, start, time.perf_counter())
            return

        status = 500  # what the client will see if the app raises before answering
        started = False
        too_large = False
        received = 0
        end = 0.0

        async def receive_limited() -> Message:
            nonlocal received, too_large
            if too_large:
                raise _BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    too_large = True
                    raise _BodyTooLarge
            return message

        async def send_wrapped(message: Message) -> None:
            nonlocal status, started, end
            if too_large and not started:
                return  # the app's answer to a body it could not read; we send 413 instead
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                started = True
                message["headers"] = [*message.get("headers", ()), request_id_header]
            elif kind == "http.response.body" and not message.get("more_body", False):
                end = time.perf_counter()
            await send(message)

        try:
            await self.app(scope, receive_limited, send_wrapped)
        except BaseException as exc:
            # An app failing on the body we cut off gets its 413; anything else goes on up.
            if not (too_large and not started and isinstance(exc, Exception)):
                self._record(scope, state, root_path, status, start, end or time.perf_counter())
                raise
        if too_large and not started:
            await self._reject(send, request_id_header)
            status = 413
            end = time.perf_counter()
        self._record(scope, state, root_path, status, start, end or time.perf_counter())

    async def _reject(self, send: Send, request_id_header: tuple[bytes, bytes]) -> None:
        """Send the 413 answer for an oversized body."""
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [*self._too_large_headers, request_id_header],
            }
        )
        await send({"type": "http.response.body", "body": self._too_large_body})

    def _record(
        self,
        scope: Scope,
        state: dict[str, Any],
        root_path: str,
        status: int,
        start: float,
        end: float,
    ) -> None:
        """Write the access-log line and update the metrics for one finished request."""
        seconds = end - start
        method = scope["method"]
        route = scope.get("route")
        path_format = getattr(route, "path_format", None) if route is not None else None
        if isinstance(path_format, str):
            # Under a Mount the router extends root_path; the template is relative to it.
            final_root = scope.get("root_path", "")
            prefix = final_root[len(root_path) :] if final_root.startswith(root_path) else ""
            path = route_label = prefix + path_format
        else:
            path = scope["path"]
            route_label = _UNMATCHED
        method_label = method if method in _METHODS else "OTHER"
        self._metrics.observe(method_label, route_label, status, seconds)
        logger = self.logger
        if logger.isEnabledFor(logging.INFO):
            fields: dict[str, Any] = {
                "request_id": state["request_id"],
                "method": method,
                "path": path,
                "status": status,
                "duration_ms": round(seconds * 1000.0, 3),
            }
            key_id = state.get("key_id")
            if key_id is not None:
                fields["key_id"] = key_id
            logger.info("request", extra=fields)
