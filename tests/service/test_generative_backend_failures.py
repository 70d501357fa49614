"""The service when its language model is slow, broken or malformed: never a 500, never a
blocked worker, never a backend address in an answer."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from generative.scripted_server import ScriptedServer, chat_answer, send_json
from generative.test_routes_explain import bearer, films_service, logged_slate
from recloop.generative.llm import Generation, GenerationError, GenerationRequest, Message
from recloop.generative.openai_chat import OpenAIChat
from recloop.service.app import ServiceState
from recloop.service.generation import GENERATOR
from recloop.service.routes_review import GENERATOR_KEY

Service = tuple[TestClient, dict[str, str], ServiceState]


@pytest.fixture()
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Service]:
    monkeypatch.setenv("RECLOOP_EXPLAIN_POLICY", "everyone")
    monkeypatch.setenv("RECLOOP_EXPLAIN_PREGENERATE", "0")
    yield from films_service(tmp_path)


class SlowScorer:
    """A local backend whose scoring takes as long as the test lets it (5 s at most)."""

    name = "slow-scorer"
    model = "slow-1"
    hosted = False

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def generate(self, request: GenerationRequest) -> Generation:
        raise GenerationError("this backend only scores")

    def score(self, messages: Sequence[Message], continuations: Sequence[str]) -> list[float]:
        self.entered.set()
        self.release.wait(5.0)
        return [-float(len(c)) for c in continuations]


def test_an_llm_rerank_does_not_block_the_worker(service: Service) -> None:
    client, keys, state = service
    scorer = SlowScorer()
    state.extensions[GENERATOR] = scorer
    answers: dict[str, Any] = {}

    def rerank() -> None:
        answers["rerank"] = client.get(
            "/v1/users/u1/recommendations",
            params={"n": 3, "rerank": "llm"},
            headers=bearer(keys["client"]),
        )

    worker = threading.Thread(target=rerank)
    worker.start()
    try:
        assert scorer.entered.wait(5.0), "the re-rank never reached the backend"
        start = time.monotonic()
        health = client.get("/healthz")
        plain = client.get(
            "/v1/users/u20/recommendations", params={"n": 3}, headers=bearer(keys["client"])
        )
        waited = time.monotonic() - start
        assert health.status_code == 200 and plain.status_code == 200, plain.text
        assert waited < 2.0  # answered while the LLM is still scoring, not 5 s later
        assert worker.is_alive()  # the re-rank is indeed still waiting
    finally:
        scorer.release.set()
        worker.join(10.0)
    reranked = answers["rerank"]
    assert reranked.status_code == 200, reranked.text
    assert reranked.headers["X-Recloop-Rerank"] == "llm"
    assert len(reranked.json()["items"]) == 3


def malformed_scoring(path: str, body: Any, handler: BaseHTTPRequestHandler) -> None:
    send_json(handler, {"choices": ["oops"] * len(body.get("prompt", []))})


@pytest.mark.parametrize("listening", [True, False], ids=["malformed", "unreachable"])
def test_a_failed_llm_rerank_falls_back_with_a_label(service: Service, listening: bool) -> None:
    client, keys, state = service
    with ScriptedServer(malformed_scoring) as server:
        url = server.url
        if listening:
            state.extensions[GENERATOR] = OpenAIChat(url, "m", max_retries=0)
            answer = client.get(
                "/v1/users/u1/recommendations",
                params={"n": 3, "rerank": "llm"},
                headers=bearer(keys["client"]),
            )
    if not listening:  # the server is gone: nothing listens on its port now
        state.extensions[GENERATOR] = OpenAIChat(url, "m", max_retries=0)
        answer = client.get(
            "/v1/users/u1/recommendations",
            params={"n": 3, "rerank": "llm"},
            headers=bearer(keys["client"]),
        )
    assert answer.status_code == 200, answer.text
    reason = answer.headers["X-Recloop-Rerank"]
    assert reason.startswith("fallback: ") and "cannot score" in reason
    assert "127.0.0.1" not in reason  # the backend's address stays in the server log
    assert len(answer.json()["items"]) == 3


@pytest.mark.parametrize(
    "payload",
    [
        chat_answer([{"type": "text", "text": "hi"}]),
        chat_answer("Because you watched Toy Story.", usage={"completion_tokens": "n/a"}),
    ],
)
def test_a_malformed_llm_answer_gives_a_labelled_template_explanation(
    service: Service, payload: Any
) -> None:
    client, keys, state = service
    with ScriptedServer(lambda path, body, handler: send_json(handler, payload)) as server:
        state.extensions[GENERATOR] = OpenAIChat(server.url, "m", max_retries=0)  # loopback
        slate = logged_slate(client, keys["client"], state, "u0")
        answer = client.get(
            f"/v1/explanations/{slate['items'][0]['explanation']}",
            headers=bearer(keys["client"]),
        )
        assert len(server.requests) >= 1  # the model was asked
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["backend"] == "template" and body["fallback_used"] is True
    assert body["fallback_reason"] == "error"


def overloaded(path: str, body: Any, handler: BaseHTTPRequestHandler) -> None:
    send_json(handler, {"error": {"message": "overloaded"}}, 503)


def malformed_chat(path: str, body: Any, handler: BaseHTTPRequestHandler) -> None:
    send_json(handler, chat_answer(None, usage={"completion_tokens": "?"}))


@pytest.mark.parametrize(
    ("respond", "status"), [(overloaded, 503), (malformed_chat, 502)], ids=["503", "malformed"]
)
def test_review_generate_maps_llm_failures_to_gateway_errors(
    service: Service, respond: Any, status: int
) -> None:
    client, keys, state = service
    with ScriptedServer(respond) as server:
        state.extensions[GENERATOR_KEY] = OpenAIChat(server.url, "m", max_retries=0)
        answer = client.post(
            "/v1/review/generate", json={"segments": 2, "top": 1}, headers=bearer(keys["admin"])
        )
        url = server.url
    assert answer.status_code == status, answer.text
    detail = answer.json()["detail"]
    assert "'openai'" in detail  # the backend is named ...
    assert url not in detail and "127.0.0.1" not in detail  # ... its address is not


def test_review_generate_reports_an_unreachable_llm_as_unavailable(service: Service) -> None:
    client, keys, state = service
    with ScriptedServer(overloaded) as server:
        url = server.url
    state.extensions[GENERATOR_KEY] = OpenAIChat(url, "m", max_retries=0)  # nobody listens now
    answer = client.post(
        "/v1/review/generate", json={"segments": 2, "top": 1}, headers=bearer(keys["admin"])
    )
    assert answer.status_code == 503, answer.text
    assert "127.0.0.1" not in answer.json()["detail"]
