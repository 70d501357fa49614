"""OpenAIChat facing malformed answers, slow servers, proxies and odd timeouts.

Every failure must be a :class:`GenerationError` (callers fall back to the template, labelled),
a request's ``timeout_s`` must bound the whole call, and a loopback server must be contacted
directly whatever the proxy variables say.
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from recloop.errors import ConfigError
from recloop.generative.backends import GeneratorConfig
from recloop.generative.budget import Budget, ExplainSettings
from recloop.generative.evidence import ItemFacts, build_evidence
from recloop.generative.explain import Explainer
from recloop.generative.faithfulness import FaithfulnessChecker
from recloop.generative.llm import GenerationError, GenerationRequest, Message, check_consent
from recloop.generative.openai_chat import BackendUnavailable, DeadlineExceeded, OpenAIChat

from .scripted_server import ScriptedServer, chat_answer, send_json, trickle


def ask(timeout_s: float | None = None) -> GenerationRequest:
    return GenerationRequest(
        task="explanation",
        evidence={},
        messages=(Message("user", "user u42 watched Toy Story and Aladdin"),),
        timeout_s=timeout_s,
        contains_personal_data=True,
    )


@pytest.fixture()
def answers() -> Iterator[tuple[ScriptedServer, list[Any]]]:
    """A server answering each request with the next scripted payload (the last repeats)."""
    script: list[Any] = []

    def respond(path: str, body: Any, handler: BaseHTTPRequestHandler) -> None:
        payload = script.pop(0) if len(script) > 1 else script[0]
        send_json(handler, payload(body) if callable(payload) else payload)

    with ScriptedServer(respond) as server:
        yield server, script


# -- malformed answers are GenerationErrors ----------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        (chat_answer(5), r"message\.content that is a number, not text"),
        (chat_answer([{"type": "text", "text": "hi"}]), r"message\.content that is a list"),
        (chat_answer({"text": "hi"}), r"message\.content that is an object"),
        (chat_answer("hi", usage={"completion_tokens": "many"}), r"usage\.completion_tokens"),
        (chat_answer("hi", usage={"completion_tokens": 3, "prompt_tokens": [1]}), "prompt_tok"),
        (chat_answer("hi", usage={"completion_tokens": True}), r"usage\.completion_tokens"),
        ({"choices": ["hi"]}, r"without choices\[0\]\.message"),
        ({"choices": [{"message": "hi"}]}, r"without choices\[0\]\.message"),
        ({"choices": {"0": {"message": {"content": "hi"}}}}, r"without choices\[0\]\.message"),
    ],
)
def test_a_malformed_chat_answer_is_a_generation_error(
    answers: tuple[ScriptedServer, list[Any]], payload: Any, complaint: str
) -> None:
    server, script = answers
    script.append(payload)
    with OpenAIChat(server.url, "m", max_retries=0) as client:
        with pytest.raises(GenerationError, match=complaint):
            client.generate(ask())
        assert client.counters()["errors"] == 1


def test_negative_token_counts_are_clamped_to_zero(
    answers: tuple[ScriptedServer, list[Any]],
) -> None:
    server, script = answers
    script.append(chat_answer("hi", usage={"prompt_tokens": -1000, "completion_tokens": -5}))
    with OpenAIChat(server.url, "m", max_retries=0) as client:
        out = client.generate(ask())
        assert (out.text, out.prompt_tokens, out.completion_tokens) == ("hi", 0, 0)
        assert client.counters()["prompt_tokens"] == 0
        assert client.counters()["completion_tokens"] == 0


def test_null_content_is_empty_text_and_whole_float_counts_are_accepted(
    answers: tuple[ScriptedServer, list[Any]],
) -> None:
    server, script = answers
    script.append(chat_answer(None, usage={"prompt_tokens": 7.0, "completion_tokens": 2}))
    with OpenAIChat(server.url, "m", max_retries=0) as client:
        out = client.generate(ask())
    assert (out.text, out.prompt_tokens, out.completion_tokens) == ("", 7, 2)


def echo(body: Any, **change: Any) -> Any:
    """A vLLM-like scoring answer for ``body``'s prompts, with ``change`` applied to each."""
    choices = []
    for index, prompt in enumerate(body["prompt"]):
        offsets = list(range(0, len(prompt), 4))
        choices.append(
            {
                "index": index,
                "text": prompt + " ok",
                "logprobs": {"text_offset": offsets, "token_logprobs": [-1.0] * len(offsets)},
                **change,
            }
        )
    return {"choices": choices}


@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        (lambda body: {"choices": ["x"] * len(body["prompt"])}, "sent"),
        (lambda body: echo(body, logprobs=[1]), "did not echo"),
        (lambda body: echo(body, index="a"), "index values are not 0 to 1"),
        (lambda body: echo(body, index=0), "index values are not 0 to 1"),
        (lambda body: echo(body, index=True), "index values are not 0 to 1"),
        (lambda body: echo(body, text=5), "did not echo"),
        (
            lambda body: echo(body, logprobs={"text_offset": ["0"], "token_logprobs": [-1.0]}),
            "not a number",
        ),
        (
            lambda body: echo(body, logprobs={"text_offset": [0], "token_logprobs": ["-1"]}),
            "not a number",
        ),
        (
            lambda body: {**echo(body), "usage": {"prompt_tokens": "n/a"}},
            r"usage\.prompt_tokens",
        ),
    ],
)
def test_a_malformed_scoring_answer_is_a_generation_error(
    answers: tuple[ScriptedServer, list[Any]],
    payload: Callable[[Any], Any],
    complaint: str,
) -> None:
    server, script = answers
    script.append(payload)
    with (
        OpenAIChat(server.url, "m", max_retries=0) as client,
        pytest.raises(GenerationError, match=complaint),
    ):
        client.score([Message("system", "s")], ["a b", "c d"])


def test_a_well_formed_scoring_answer_still_scores(
    answers: tuple[ScriptedServer, list[Any]],
) -> None:
    server, script = answers
    script.append(lambda body: {**echo(body), "usage": {"prompt_tokens": -3}})
    with OpenAIChat(server.url, "m", max_retries=0) as client:
        scores = client.score([Message("system", "s")], ["a b", "c d"])
        assert len(scores) == 2 and all(math.isfinite(s) and s < 0 for s in scores)
        assert client.counters()["prompt_tokens"] == 0


def sse(handler: BaseHTTPRequestHandler, events: list[Any]) -> None:
    data = b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events) + b"data: [DONE]\n\n"
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


@pytest.mark.parametrize(
    "event",
    [
        {"choices": {"delta": {"content": "hi"}}},
        {"choices": ["hi"]},
        {"choices": [{"delta": "hi"}]},
        {"choices": [{"delta": {"content": 5}}]},
        {"choices": [{"delta": {"content": "hi"}}], "usage": {"completion_tokens": "?"}},
    ],
)
def test_a_malformed_stream_is_a_generation_error(event: Any) -> None:
    with (
        ScriptedServer(lambda path, body, handler: sse(handler, [event])) as server,
        OpenAIChat(server.url, "m", max_retries=0) as client,
        pytest.raises(GenerationError),
    ):
        list(client.stream(ask()))


# -- a request's timeout_s is the deadline of the whole call -----------------------------------


def hang(server_box: list[ScriptedServer]) -> Callable[[str, Any, BaseHTTPRequestHandler], None]:
    def respond(path: str, body: Any, handler: BaseHTTPRequestHandler) -> None:
        server_box[0].released.wait(5.0)

    return respond


def test_a_hang_ends_at_the_deadline_without_retries() -> None:
    box: list[ScriptedServer] = []
    with ScriptedServer(hang(box)) as server:
        box.append(server)
        with OpenAIChat(server.url, "m", max_retries=2, backoff_s=0.01) as client:
            start = time.monotonic()
            with pytest.raises(DeadlineExceeded, match="timeout_s ran out"):
                client.generate(ask(timeout_s=0.5))
            took = time.monotonic() - start
    assert 0.45 <= took < 1.5  # not 3 attempts of 0.5 s
    assert len(server.requests) == 1


def test_a_trickling_answer_is_cut_off_at_the_deadline() -> None:
    box: list[ScriptedServer] = []

    def respond(path: str, body: Any, handler: BaseHTTPRequestHandler) -> None:
        trickle(handler, chat_answer("hi"), every_s=0.1, released=box[0].released)

    with ScriptedServer(respond) as server:
        box.append(server)
        with OpenAIChat(server.url, "m", max_retries=2, backoff_s=0.01) as client:
            start = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                client.generate(ask(timeout_s=0.6))  # the whole answer takes ~6 s
            assert time.monotonic() - start < 1.5
        # without a request deadline the client's timeout_s bounds each whole attempt
        with OpenAIChat(server.url, "m", timeout_s=0.6, max_retries=0) as client:
            start = time.monotonic()
            with pytest.raises(BackendUnavailable, match="still arriving after"):
                client.generate(ask())
            assert time.monotonic() - start < 1.5


def test_a_retry_after_past_the_deadline_ends_the_call_at_once() -> None:
    def respond(path: str, body: Any, handler: BaseHTTPRequestHandler) -> None:
        send_json(handler, {"error": {"message": "slow down"}}, 429, {"Retry-After": "5"})

    with ScriptedServer(respond) as server:
        with OpenAIChat(server.url, "m", max_retries=2) as client:
            start = time.monotonic()
            with pytest.raises(DeadlineExceeded, match=r"too little to wait 5\.00 s"):
                client.generate(ask(timeout_s=1.0))
            assert time.monotonic() - start < 0.8  # no 5 s sleep
        assert len(server.requests) == 1
        with (
            OpenAIChat(server.url, "m", max_retries=2, backoff_s=2.0) as client,
            pytest.raises(DeadlineExceeded),  # nor a back-off past it
        ):
            client.generate(ask(timeout_s=0.5))


def test_a_deadline_with_time_to_spare_still_retries() -> None:
    calls: list[int] = []

    def respond(path: str, body: Any, handler: BaseHTTPRequestHandler) -> None:
        calls.append(1)
        if len(calls) == 1:
            send_json(handler, {"error": {"message": "busy"}}, 503)
        else:
            send_json(handler, chat_answer("hi"))

    with (
        ScriptedServer(respond) as server,
        OpenAIChat(server.url, "m", max_retries=2, backoff_s=0.01) as client,
    ):
        out = client.generate(ask(timeout_s=5.0))
    assert out.text == "hi" and out.metadata["attempts"] == 2


def test_the_deadline_bounds_a_stream() -> None:
    box: list[ScriptedServer] = []

    def respond(path: str, body: Any, handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        event = {"choices": [{"delta": {"content": " word"}}]}
        data = f"data: {json.dumps(event)}\n\n".encode()
        for _ in range(100):  # a piece every 0.1 s, forever
            handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            handler.wfile.flush()
            if box[0].released.wait(0.1):
                return

    with ScriptedServer(respond) as server:
        box.append(server)
        with OpenAIChat(server.url, "m", max_retries=0) as client:
            start = time.monotonic()
            pieces: list[str] = []
            with pytest.raises(DeadlineExceeded, match=r"after \d+ piece"):
                pieces.extend(client.stream(ask(timeout_s=0.5)))
            assert time.monotonic() - start < 1.5


def facts() -> dict[str, ItemFacts]:
    return {
        "1": ItemFacts.from_attributes("1", "Toy Story (1995)", {"genres": ["Animation"]}),
        "2": ItemFacts.from_attributes("2", "Aladdin (1992)", {"genres": ["Animation"]}),
    }


def explain_with(server: ScriptedServer, budget: Budget) -> Any:
    catalogue = facts()
    evidence = build_evidence("2", ["1"], catalogue, source="EASE", score=1.0)
    explainer = Explainer(
        OpenAIChat(server.url, "m", backoff_s=0.01),
        FaithfulnessChecker.from_items(catalogue.values()),
    )
    return explainer.explain(evidence, use_llm=True, consent=True, budget=budget)


def test_running_out_of_the_budget_is_labelled_budget() -> None:
    box: list[ScriptedServer] = []
    with ScriptedServer(hang(box)) as server:
        box.append(server)
        start = time.monotonic()
        result = explain_with(server, Budget(time_s=0.5))
        assert time.monotonic() - start < 1.5
    assert (result.backend, result.fallback_used, result.reason) == ("template", True, "budget")

    def busy(path: str, body: Any, handler: BaseHTTPRequestHandler) -> None:
        send_json(handler, {"error": {"message": "slow down"}}, 429, {"Retry-After": "5"})

    with ScriptedServer(busy) as server:
        result = explain_with(server, Budget(time_s=1.0))
    assert result.reason == "budget"


def test_a_malformed_answer_is_labelled_error() -> None:
    with ScriptedServer(lambda path, body, handler: send_json(handler, chat_answer(5))) as server:
        result = explain_with(server, Budget(time_s=5.0))
    assert (result.backend, result.fallback_used, result.reason) == ("template", True, "error")


# -- timeouts must be finite -------------------------------------------------------------------


@pytest.mark.parametrize("value", ["inf", "1e400", "nan", "-inf", "1e12"])
def test_an_infinite_llm_timeout_is_a_config_error(value: str) -> None:
    env = {"RECLOOP_LLM_BASE_URL": "http://localhost:1/v1", "RECLOOP_LLM_MODEL": "m"}
    with pytest.raises(ConfigError, match=r"RECLOOP_LLM_TIMEOUT_S \(timeout_s\)"):
        GeneratorConfig.from_env({**env, "RECLOOP_LLM_TIMEOUT_S": value})


@pytest.mark.parametrize("value", [math.inf, math.nan, 1e12, 0.0, -1.0])
def test_openai_chat_refuses_a_timeout_that_is_not_a_finite_positive_number(value: float) -> None:
    with pytest.raises(GenerationError, match="timeout_s must be a positive number"):
        OpenAIChat("http://localhost:1/v1", "m", timeout_s=value)


def test_a_request_with_an_infinite_timeout_is_a_generation_error() -> None:
    with (
        OpenAIChat("http://localhost:1/v1", "m", max_retries=0) as client,
        pytest.raises(GenerationError, match="finite number of seconds"),
    ):
        client.generate(ask(timeout_s=math.inf))


@pytest.mark.parametrize("name", ["TIME_S", "CACHE_TTL_S", "TOKENS"])
@pytest.mark.parametrize("value", ["inf", "1e400", "nan"])
def test_an_infinite_explain_setting_is_a_config_error(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"RECLOOP_EXPLAIN_{name} must be"):
        ExplainSettings.from_env({f"RECLOOP_EXPLAIN_{name}": value})


def test_an_infinite_budget_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="finite"):
        Budget(time_s=math.inf)


# -- a loopback server is never reached through a proxy ---------------------------------------


class RecordingProxy:
    """A listener standing in for a remote HTTP proxy: it records what reaches it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(5)
        self.sock.settimeout(0.2)
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1.0)
                with contextlib.suppress(OSError):
                    self.received.append(conn.recv(65536))
                body = json.dumps(chat_answer("via the proxy")).encode()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


def test_a_loopback_server_is_contacted_directly_despite_proxy_variables(
    answers: tuple[ScriptedServer, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, script = answers
    script.append(chat_answer("direct"))
    proxy = RecordingProxy()
    try:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
            monkeypatch.setenv(name, proxy.url)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        localhost_url = server.url.replace("127.0.0.1", "localhost")
        with OpenAIChat(localhost_url, "m", max_retries=0) as client:
            assert client.hosted is False
            check_consent(client, ask(), consent=False)  # local: no consent needed...
            out = client.generate(ask())
        assert out.text == "direct"  # ...so the history must not travel through the proxy
        assert proxy.received == []
        assert len(server.requests) == 1 and "Toy Story" in json.dumps(server.requests[0][1])
    finally:
        proxy.close()


def test_a_hosted_server_still_honours_the_proxy_variables() -> None:
    with OpenAIChat("https://api.example.com/v1", "m") as client:
        assert client.hosted is True
        assert client._client.trust_env is True
    with OpenAIChat("http://[::1]:8000/v1", "m") as client:
        assert client.hosted is False and client._client.trust_env is False
