"""The observability middleware in a real FastAPI app: request ids, 413s, access log, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from recloop.service.observability import (
    REQUEST_ID_HEADER,
    ObservabilityMiddleware,
    configure_json_logging,
    metrics_response,
)

LIMIT = 1000
SECRET = "rlk_0123456789ab_" + "s3cr3t" * 7


class Event(BaseModel):
    item_id: str
    payload: str = ""


@contextlib.contextmanager
def _restored_loggers() -> Iterator[None]:
    """Put the loggers :func:`configure_json_logging` touches back as they were."""
    loggers = [logging.getLogger(name) for name in ("recloop", "uvicorn.error")]
    saved = [(lg.handlers[:], lg.level, lg.propagate) for lg in loggers]
    try:
        yield
    finally:
        for logger, (handlers, level, propagate) in zip(loggers, saved, strict=True):
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate


@pytest.fixture()
def log_stream() -> Iterator[io.StringIO]:
    """JSON logging into a buffer; the loggers' previous state is restored afterwards."""
    stream = io.StringIO()
    with _restored_loggers():
        configure_json_logging("INFO", stream=stream)
        yield stream


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def _access_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [line for line in _lines(stream) if line["logger"] == "recloop.access"]


class World:
    """An app behind the middleware, its own metrics registry, and what its endpoints saw."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.calls = 0
        app = FastAPI()

        @app.get("/v1/users/{user_id}/recommendations")
        def recommendations(user_id: str, request: Request) -> dict[str, str]:
            request.state.key_id = "0123456789ab"
            return {"request_id": request.state.request_id}

        @app.post("/v1/events")
        def events(event: Event) -> dict[str, str]:  # FastAPI parses the body
            self.calls += 1
            return {"item_id": event.item_id}

        @app.post("/v1/raw")
        async def raw(request: Request) -> dict[str, int]:  # the endpoint reads the body
            self.calls += 1
            return {"bytes": len(await request.body())}

        @app.get("/boom")
        def boom() -> None:
            raise RuntimeError("kaboom")

        sub = FastAPI()

        @sub.get("/items/{item_id:int}")
        def item(item_id: int) -> dict[str, int]:
            return {"item_id": item_id}

        app.mount("/sub", sub)
        app.add_middleware(ObservabilityMiddleware, max_body_bytes=LIMIT, registry=self.registry)
        self.client = TestClient(app, raise_server_exceptions=False)

    def count(self, method: str, route: str, status: int) -> float:
        labels = {"method": method, "route": route, "status": str(status)}
        return self.registry.get_sample_value("recloop_http_requests_total", labels) or 0.0

    def observed(self, method: str, route: str) -> float:
        labels = {"method": method, "route": route}
        name = "recloop_http_request_duration_seconds_count"
        return self.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture()
def world() -> World:
    return World()


RECS = "/v1/users/u-42/recommendations"
RECS_ROUTE = "/v1/users/{user_id}/recommendations"


# --- request ids -----------------------------------------------------------------------------


def test_request_id_is_generated(world: World) -> None:
    response = world.client.get(RECS)
    request_id = response.headers[REQUEST_ID_HEADER]
    assert len(request_id) == 32 and int(request_id, 16) >= 0
    assert response.json() == {"request_id": request_id}
    assert world.client.get(RECS).headers[REQUEST_ID_HEADER] != request_id


def test_sane_client_request_id_is_echoed(world: World) -> None:
    for sane in ("abc-123_X.y", "a" * 64):
        response = world.client.get(RECS, headers={REQUEST_ID_HEADER: sane})
        assert response.headers[REQUEST_ID_HEADER] == sane
        assert response.json() == {"request_id": sane}


@pytest.mark.parametrize("bad", ["a" * 65, "has space", "semi;colon", "ünï", "<script>"])
def test_bad_client_request_id_is_replaced(world: World, bad: str) -> None:
    response = world.client.get(RECS, headers={REQUEST_ID_HEADER: bad.encode("utf-8")})
    request_id = response.headers[REQUEST_ID_HEADER]
    assert request_id != bad and len(request_id) == 32
    assert response.json() == {"request_id": request_id}


# --- body limits -----------------------------------------------------------------------------


def test_body_within_limit_passes(world: World) -> None:
    response = world.client.post("/v1/raw", content=b"x" * LIMIT)
    assert response.status_code == 200 and response.json() == {"bytes": LIMIT}


def test_413_by_content_length_without_calling_the_app(world: World) -> None:
    response = world.client.post(
        "/v1/events", content=b"x" * (LIMIT + 1), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json() == {"detail": f"request body exceeds {LIMIT} bytes"}
    assert response.headers[REQUEST_ID_HEADER]
    assert world.calls == 0
    assert world.count("POST", "unmatched", 413) == 1


def _chunks(n: int, size: int) -> Iterator[bytes]:
    for _ in range(n):
        yield b"y" * size


@pytest.mark.parametrize("path", ["/v1/raw", "/v1/events"])
def test_413_for_a_chunked_body(world: World, path: str) -> None:
    """No Content-Length: the middleware counts the streamed chunks."""
    response = world.client.post(path, content=_chunks(30, 100))
    assert response.status_code == 413, response.text
    assert response.json() == {"detail": f"request body exceeds {LIMIT} bytes"}
    assert response.headers[REQUEST_ID_HEADER]
    assert world.count("POST", path, 413) == 1


def test_chunked_body_within_limit_passes(world: World) -> None:
    response = world.client.post("/v1/raw", content=_chunks(10, 100))
    assert response.status_code == 200 and response.json() == {"bytes": 1000}


def test_oversized_stream_is_not_read_to_the_end() -> None:
    """At the ASGI level: the app stops being fed as soon as the limit is passed."""
    pulled = 0
    total_chunks = 1000

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b"z" * 100, "more_body": pulled < total_chunks}

    async def greedy_app(scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    middleware = ObservabilityMiddleware(
        greedy_app, max_body_bytes=LIMIT, registry=CollectorRegistry()
    )
    scope = {"type": "http", "method": "POST", "path": "/x", "headers": [], "root_path": ""}
    asyncio.run(middleware(scope, receive, send))
    assert pulled == LIMIT // 100 + 1
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"]) == {"detail": f"request body exceeds {LIMIT} bytes"}


# --- access log ------------------------------------------------------------------------------


def test_access_log_line(world: World, log_stream: io.StringIO) -> None:
    response = world.client.get(
        RECS + "?token=querysecret",
        headers={"Authorization": f"Bearer {SECRET}", REQUEST_ID_HEADER: "req-1"},
    )
    assert response.status_code == 200
    text = log_stream.getvalue()
    assert SECRET not in text and "querysecret" not in text and "u-42" not in text
    (line,) = _access_lines(log_stream)
    assert line["msg"] == "request" and line["level"] == "INFO"
    assert line["ts"].endswith("Z") and "T" in line["ts"]
    assert line["request_id"] == "req-1"
    assert line["method"] == "GET"
    assert line["path"] == RECS_ROUTE
    assert line["status"] == 200
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert line["key_id"] == "0123456789ab"


def test_access_log_without_key_or_route(world: World, log_stream: io.StringIO) -> None:
    world.client.post("/v1/raw", content=b"{}", headers={"X-API-Key": SECRET})
    world.client.get("/no/such/path")
    world.client.get("/sub/items/7")
    world.client.get("/boom")
    lines = _access_lines(log_stream)
    assert [(x["path"], x["status"]) for x in lines] == [
        ("/v1/raw", 200),
        ("/no/such/path", 404),  # no route: the raw path
        ("/sub/items/{item_id}", 200),  # under a mount: the full template
        ("/boom", 500),
    ]
    assert all("key_id" not in x for x in lines)
    assert SECRET not in log_stream.getvalue()


def test_access_log_can_be_turned_down(world: World, log_stream: io.StringIO) -> None:
    logging.getLogger("recloop.access").setLevel(logging.WARNING)
    try:
        world.client.get(RECS)
    finally:
        logging.getLogger("recloop.access").setLevel(logging.NOTSET)
    assert _access_lines(log_stream) == []
    assert world.count("GET", RECS_ROUTE, 200) == 1  # metrics still count


def test_json_logging_fields_and_idempotence(log_stream: io.StringIO) -> None:
    configure_json_logging("INFO", stream=log_stream)  # a second call: still one handler
    logger = logging.getLogger("recloop.test")
    logger.info("hello %s", "world", extra={"user": "u1", "n": 3, "odd": object()})
    logger.debug("not at INFO")
    try:
        raise ValueError("bad")
    except ValueError:
        logger.exception("failed")
    logging.getLogger("uvicorn.error").warning("from uvicorn")
    first, second, third = _lines(log_stream)
    assert first["msg"] == "hello world" and first["logger"] == "recloop.test"
    assert first["user"] == "u1" and first["n"] == 3 and first["odd"].startswith("<object")
    assert set(first) == {"ts", "level", "logger", "msg", "user", "n", "odd"}
    assert second["level"] == "ERROR" and "ValueError: bad" in second["exc"]
    assert third == {**third, "logger": "uvicorn.error", "level": "WARNING"}


def test_json_logging_level() -> None:
    stream = io.StringIO()
    with _restored_loggers():
        configure_json_logging("warning", stream=stream)
        logging.getLogger("recloop.x").info("quiet")
        logging.getLogger("recloop.x").warning("loud")
    assert [line["msg"] for line in _lines(stream)] == ["loud"]


# --- Prometheus ------------------------------------------------------------------------------


def test_prometheus_counter_and_histogram(world: World) -> None:
    for _ in range(3):
        world.client.get(RECS)
    world.client.get("/v1/users/other/recommendations")
    world.client.get("/nope")
    world.client.get("/boom")
    world.client.request("BREW", "/v1/raw")
    assert world.count("GET", RECS_ROUTE, 200) == 4
    assert world.observed("GET", RECS_ROUTE) == 4
    assert world.count("GET", "unmatched", 404) == 1
    assert world.count("GET", "/boom", 500) == 1
    assert world.count("OTHER", "/v1/raw", 405) == 1
    sum_seconds = world.registry.get_sample_value(
        "recloop_http_request_duration_seconds_sum", {"method": "GET", "route": RECS_ROUTE}
    )
    assert sum_seconds is not None and sum_seconds > 0
    le_2s = world.registry.get_sample_value(
        "recloop_http_request_duration_seconds_bucket",
        {"method": "GET", "route": RECS_ROUTE, "le": "2.0"},
    )
    assert le_2s == 4


def test_two_apps_can_share_a_registry() -> None:
    registry = CollectorRegistry()
    for _ in range(2):
        app = FastAPI()

        @app.get("/ping")
        def ping() -> dict[str, bool]:
            return {"ok": True}

        app.add_middleware(ObservabilityMiddleware, registry=registry)
        assert TestClient(app).get("/ping").status_code == 200
    labels = {"method": "GET", "route": "/ping", "status": "200"}
    assert registry.get_sample_value("recloop_http_requests_total", labels) == 2


def test_metrics_response(world: World) -> None:
    world.client.get(RECS)
    body, content_type = metrics_response(world.registry)
    assert content_type.startswith("text/plain")
    text = body.decode()
    assert "recloop_http_requests_total{" in text
    assert "recloop_http_request_duration_seconds_bucket{" in text
    default_body, default_type = metrics_response()
    assert default_type == content_type and isinstance(default_body, bytes)


def test_metrics_route_in_an_app() -> None:
    registry = CollectorRegistry()
    app = FastAPI()

    @app.get("/metrics")
    def metrics() -> Any:
        from fastapi import Response

        body, content_type = metrics_response(registry)
        return Response(body, media_type=content_type)

    app.add_middleware(ObservabilityMiddleware, registry=registry)
    client = TestClient(app)
    client.get("/metrics")
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    assert 'recloop_http_requests_total{method="GET",route="/metrics",status="200"} 1.0' in (
        response.text
    )


def test_non_http_scopes_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    middleware = ObservabilityMiddleware(app, registry=CollectorRegistry())
    asyncio.run(middleware({"type": "lifespan"}, None, None))
    assert seen == ["lifespan"]


def test_unique_logger_name_is_used() -> None:
    name = f"recloop.test.{uuid.uuid4().hex}"
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        app = FastAPI()

        @app.get("/ping")
        def ping() -> dict[str, bool]:
            return {"ok": True}

        app.add_middleware(ObservabilityMiddleware, logger_name=name, registry=CollectorRegistry())
        TestClient(app).get("/ping")
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue().strip() == "request"
