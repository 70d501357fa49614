"""Explanations pregenerated in the running service (recloop.service.pregeneration)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from generative.test_routes_explain import FakeLLM, bearer, explain, films_service
from generative.test_routes_explain import service as service  # the fixture
from recloop.errors import ConfigError
from recloop.generative.budget import ExplainSettings
from recloop.generative.llm import Generation, GenerationRequest, TemplateGenerator
from recloop.service.app import ServiceState
from recloop.service.generation import GENERATOR
from recloop.service.pregeneration import Pregenerator
from recloop.service.routes_explain import EXPLAIN
from recloop.store.cache import user_scope
from recloop.store.slates import Impression, SlateLog, SlateRecord

Service = tuple[TestClient, dict[str, str], ServiceState]
TEXT = "Like the films you watched, it is an animated film."  # faithful for users u0-u14


class BatchingLLM(FakeLLM):
    """The scripted backend, decoding batches as the local one does; ``hold()`` makes the
    next batch wait for ``release``."""

    def __init__(self, text: str = TEXT, *, hosted: bool = False) -> None:
        super().__init__(text, hosted=hosted)
        self.batches: list[int] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def hold(self) -> None:
        self.release.clear()
        self.entered.clear()

    def generate_batch(self, requests: Sequence[GenerationRequest]) -> list[Generation]:
        self.batches.append(len(requests))
        self.entered.set()
        assert self.release.wait(10.0)
        return [self.generate(request) for request in requests]


def serve(client: TestClient, keys: dict[str, str], user: str, n: int = 2) -> dict[str, Any]:
    answer = client.get(
        f"/v1/users/{user}/recommendations", params={"n": n}, headers=bearer(keys["client"])
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def explanation_keys(state: ServiceState, user: str | None = None) -> list[str]:
    """The explanation cache's entries (of ``user``) in the in-process service cache."""
    keys = [k for k in state.cache.entry_keys() if k.startswith("explanation:")]  # type: ignore[attr-defined]
    return [k for k in keys if user is None or user_scope(user) in k]


def test_a_served_slate_is_explained_before_anyone_asks(service: Service) -> None:
    client, keys, state = service
    llm = BatchingLLM()
    state.extensions[GENERATOR] = llm
    slate = serve(client, keys, "u0")
    assert state.pregenerator.wait_idle(10.0)
    assert llm.batches == [2]  # the slate's items went to the model together
    assert len(explanation_keys(state, "u0")) == 2
    state.slates.flush()
    pregenerated = [
        explain(client, keys["client"], it["explanation"]).json() for it in slate["items"]
    ]
    assert all(body["cached"] for body in pregenerated)
    assert all(body["backend"] == "fake-local" and body["text"] == TEXT for body in pregenerated)
    assert len(llm.requests) == 2  # the route generated nothing
    stats = state.pregenerator.stats()
    assert (stats["slates_offered"], stats["items_explained"], stats["queued"]) == (1, 2, 0)
    # the route on its own, from a cold cache, writes the same text from the same evidence
    state.cache.invalidate()
    for item, before in zip(slate["items"], pregenerated, strict=True):
        fresh = explain(client, keys["client"], item["explanation"]).json()
        assert fresh["cached"] is False
        assert (fresh["text"], fresh["evidence"]) == (before["text"], before["evidence"])
    metrics = client.get("/metrics").text
    assert "recloop_explain_pregeneration_items_explained_total 2.0" in metrics
    assert "recloop_explain_pregeneration_slates_dropped_total 0.0" in metrics


def test_a_request_waits_for_the_text_being_pregenerated(service: Service) -> None:
    client, keys, state = service
    llm = BatchingLLM()
    llm.hold()
    state.extensions[GENERATOR] = llm
    slate = serve(client, keys, "u5")
    assert llm.entered.wait(10.0)  # the thread is writing the slate's explanations
    state.slates.flush()
    answers: list[Any] = []
    handle = slate["items"][0]["explanation"]
    asking = threading.Thread(
        target=lambda: answers.append(explain(client, keys["client"], handle))
    )
    asking.start()
    time.sleep(0.2)
    assert not answers  # the request waits for the pregenerator ...
    llm.release.set()
    asking.join(10.0)
    body = answers[0].json()
    assert body["cached"] is True and body["text"] == TEXT  # ... and reads its text
    assert len(llm.requests) == 2  # nothing was generated twice


def test_nothing_is_pregenerated_with_the_template(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, keys, state = service
    for name in ("BACKEND", "BASE_URL", "MODEL_PATH"):
        monkeypatch.delenv(f"RECLOOP_LLM_{name}", raising=False)
    serve(client, keys, "u0")  # the generator is not built yet: the thread builds it
    assert state.pregenerator.wait_idle(10.0)
    assert isinstance(state.extensions[GENERATOR], TemplateGenerator)
    serve(client, keys, "u1")  # now the request knows: nothing is queued
    stats = state.pregenerator.stats()
    assert (stats["slates_offered"], stats["slates_skipped"], stats["items_explained"]) == (1, 1, 0)
    assert explanation_keys(state) == []


def test_users_the_policy_keeps_on_the_template_are_skipped(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, keys, state = service
    monkeypatch.setenv("RECLOOP_EXPLAIN_NEW_USER_EVENTS", "2")  # u0's 4 events: established
    state.extensions.pop(EXPLAIN, None)
    llm = BatchingLLM()
    state.extensions[GENERATOR] = llm
    slate = serve(client, keys, "u0")
    assert state.pregenerator.wait_idle(10.0)
    assert not llm.requests and explanation_keys(state) == []
    assert state.pregenerator.stats()["slates_skipped"] == 1
    state.slates.flush()
    body = explain(client, keys["client"], slate["items"][0]["explanation"]).json()
    assert body["fallback_reason"] == "policy" and not llm.requests


def test_a_hosted_backend_gets_no_prompt_without_consent(service: Service) -> None:
    client, keys, state = service
    hosted = BatchingLLM(hosted=True)
    state.extensions[GENERATOR] = hosted
    serve(client, keys, "u2")
    assert state.pregenerator.wait_idle(10.0)
    assert not hosted.requests and explanation_keys(state) == []
    assert state.pregenerator.stats()["slates_skipped"] == 1
    consent = {"personalisation": True, "training": True, "generative": True}
    put = client.put("/v1/users/u2/consent", json=consent, headers=bearer(keys["client"]))
    assert put.status_code == 200, put.text
    serve(client, keys, "u2")
    assert state.pregenerator.wait_idle(10.0)
    assert hosted.requests and all(r.contains_personal_data for r in hosted.requests)
    assert len(explanation_keys(state, "u2")) == 2


def test_a_full_queue_drops_slates_without_blocking(service: Service) -> None:
    client, keys, state = service
    state.pregenerator.close()
    state.pregenerator = Pregenerator(positions=3, max_queue=1)
    state.pregenerator.start(state)
    llm = BatchingLLM()
    llm.hold()
    state.extensions[GENERATOR] = llm
    serve(client, keys, "u0")
    assert llm.entered.wait(10.0)  # the thread holds u0's slate in the model
    serve(client, keys, "u1")  # queued
    started = time.perf_counter()
    serve(client, keys, "u3")  # dropped
    assert time.perf_counter() - started < 2.0  # the request did not wait for the model
    stats = state.pregenerator.stats()
    assert (stats["slates_offered"], stats["slates_dropped"], stats["queued"]) == (2, 1, 1)
    llm.release.set()
    assert state.pregenerator.wait_idle(10.0)
    assert len(llm.batches) == 2 and explanation_keys(state, "u3") == []
    assert "recloop_explain_pregeneration_slates_dropped_total 1.0" in client.get("/metrics").text


def test_settings_and_off_switch(service: Service) -> None:
    assert (ExplainSettings().pregenerate, ExplainSettings().pregenerate_queue) == (3, 256)
    env = {"RECLOOP_EXPLAIN_PREGENERATE": "0", "RECLOOP_EXPLAIN_PREGENERATE_QUEUE": "8"}
    assert ExplainSettings.from_env(env) == ExplainSettings(pregenerate=0, pregenerate_queue=8)
    for name, value in (("PREGENERATE", "-1"), ("PREGENERATE_QUEUE", "0"), ("PREGENERATE", "x")):
        with pytest.raises(ConfigError, match=f"RECLOOP_EXPLAIN_{name}"):
            ExplainSettings.from_env({f"RECLOOP_EXPLAIN_{name}": value})
    client, keys, state = service
    off = Pregenerator(positions=0)
    off.start(state)
    state.extensions[GENERATOR] = BatchingLLM()
    slate = serve(client, keys, "u0")
    state.slates.flush()
    record = SlateLog(state.store).slate(slate["slate_id"])
    assert record is not None and off.offer(record) is False
    assert off.stats()["slates_offered"] == 0


@pytest.fixture(params=["memory", "redis"])
def any_cache_service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Service]:
    """The explanation tests' service (tests/generative/test_routes_explain.py) on the
    in-process cache or on Redis."""
    extra: dict[str, Any] = {}
    if request.param == "redis":
        url, namespace = request.getfixturevalue("redis_url")
        extra = {"cache_url": url, "cache_namespace": namespace}
    yield from films_service(tmp_path, **extra)


def _scoped_entries(state: ServiceState, user: str) -> int:
    """Cache entries under the user's scope, in whichever cache the service uses."""
    cache: Any = state.cache
    if hasattr(cache, "entry_keys"):
        return sum(user_scope(user) in k for k in cache.entry_keys())
    return sum(1 for _ in cache._client.scan_iter(match=f"{cache.namespace}:*{user_scope(user)}*"))


def test_an_erased_user_leaves_nothing_in_the_cache(any_cache_service: Service) -> None:
    client, keys, state = any_cache_service
    llm = BatchingLLM()
    llm.hold()
    state.extensions[GENERATOR] = llm
    serve(client, keys, "u4")
    assert llm.entered.wait(10.0)  # the user's data is read; the model is writing
    erased = client.delete("/v1/users/u4", headers=bearer(keys["admin"]))
    assert erased.status_code == 200, erased.text
    llm.release.set()
    assert state.pregenerator.wait_idle(10.0)
    assert llm.batches == [2] and state.pregenerator.stats()["items_explained"] == 2
    assert _scoped_entries(state, "u4") == 0  # its writes came after the invalidation
    # a slate still queued when the user was erased is not explained at all
    record = SlateRecord("f" * 32, "u4", time.time(), "v", "all", (Impression(0, "i0", "x", 1.0),))
    assert state.pregenerator.explain(record) == "erased user"
    assert _scoped_entries(state, "u4") == 0
