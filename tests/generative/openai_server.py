"""A loopback HTTP server that speaks the OpenAI wire format, for testing real HTTP clients.

Not a mock: it listens on 127.0.0.1 in a thread (stdlib ``http.server``, HTTP/1.1 with
keep-alive) and answers

- ``POST /v1/chat/completions``: JSON, or server-sent events with ``"stream": true`` (a role
  chunk, one chunk per word, a finish chunk, a usage chunk when ``stream_options.include_usage``
  asks for it, then ``data: [DONE]``), honouring ``max_tokens`` and ``stop``;
- ``POST /v1/completions``: with ``echo`` and ``logprobs`` it returns every prompt token's
  log-probability (the first one ``null``) plus one generated token, like vLLM;
- ``GET /v1/models``.

Tokens are whitespace-led words (``" word"``); a token's log-probability is
:func:`token_logprob`. Failures are scripted with :meth:`OpenAIServer.fail` (HTTP 429 with
``Retry-After``, 500, 503, 400, 401, a hang past the client's timeout, a stream that breaks
off), consumed one per request, and every request is recorded (path, headers, JSON body, the
client's port) so tests can assert what the client sent.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

FailureKind = Literal["429", "500", "503", "400", "401", "hang", "break_stream"]
ScoringMode = Literal["echo", "refuse", "generated_only"]

_TOKEN = re.compile(r"\s*\S+")
GENERATED = " ok"  # the one token /completions generates after an echoed prompt
GENERATED_LOGPROB = -0.25


def tokens(text: str) -> list[str]:
    """The server's tokenisation: whitespace-led words (trailing whitespace is dropped)."""
    return _TOKEN.findall(text)


def token_logprob(token: str, favoured: Iterable[str] = ()) -> float:
    """The log-probability the server gives ``token``: favoured words are likely."""
    word = token.strip().strip(".,!?;:").lower()
    if word in {f.lower() for f in favoured}:
        return -0.1
    return -1.0 - 0.1 * len(token.strip())


@dataclass(frozen=True)
class Recorded:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: Any
    client_port: int
    received: float  # time.monotonic()


@dataclass
class _Failure:
    kind: FailureKind
    times: int
    retry_after: str | None
    path: str | None


@dataclass
class OpenAIServer:
    """The server; use as a context manager or call :meth:`start` and :meth:`stop`.

    ``reply`` is the assistant's text (or a function of the request body); ``usage=False``
    leaves ``usage`` out of every answer; ``scoring`` picks how ``/v1/completions`` behaves:
    ``"echo"`` (vLLM-like), ``"refuse"`` (HTTP 400, like a chat-only API) or
    ``"generated_only"`` (log-probabilities for the generated token only, no echo).
    """

    reply: str | Callable[[dict[str, Any]], str] = "I suggest [[i1]] because you liked [[i2]]."
    model: str = "loopback-model"
    usage: bool = True
    scoring: ScoringMode = "echo"
    favoured: tuple[str, ...] = ()
    hang_s: float = 5.0
    requests: list[Recorded] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._failures: list[_Failure] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> OpenAIServer:
        handler = type("Handler", (_Handler,), {"owner": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._released.set()  # wake hanging handlers
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "start the server first"
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- scripting ---------------------------------------------------------------------------

    def fail(
        self,
        kind: FailureKind,
        times: int = 1,
        *,
        retry_after: str | None = None,
        path: str | None = None,
    ) -> None:
        """Answer the next ``times`` requests (to ``path``, when given) with ``kind``."""
        with self._lock:
            self._failures.append(_Failure(kind, times, retry_after, path))

    def reset(self) -> None:
        with self._lock:
            self._failures.clear()
            self.requests.clear()

    def bodies(self, path: str = "/v1/chat/completions") -> list[Any]:
        with self._lock:
            return [r.body for r in self.requests if r.path == path]

    def _record(self, rec: Recorded) -> _Failure | None:
        with self._lock:
            self.requests.append(rec)
            for failure in self._failures:
                if failure.path is None or failure.path == rec.path:
                    failure.times -= 1
                    if failure.times <= 0:
                        self._failures.remove(failure)
                    return failure
        return None

    def reply_for(self, body: dict[str, Any]) -> str:
        return self.reply(body) if callable(self.reply) else self.reply


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # small SSE writes go out at once, as real servers do
    owner: OpenAIServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def handle(self) -> None:
        # the client may go away (a timeout, or a keep-alive connection it closed)
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            super().handle()

    # -- plumbing ----------------------------------------------------------------------------

    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode("utf-8", "replace")

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        kind = "invalid_request_error" if status < 500 else "server_error"
        self._send_json(
            status, {"error": {"message": message, "type": kind, "code": status}}, headers
        )

    def _handle(self, method: str) -> None:
        body = self._read_body() if method == "POST" else None
        rec = Recorded(
            method=method,
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            client_port=int(self.client_address[1]),
            received=time.monotonic(),
        )
        failure = self.owner._record(rec)
        if failure is not None and failure.kind != "break_stream":
            self._fail(failure)
            return
        if method == "GET" and self.path == "/v1/models":
            self._send_json(200, {"object": "list", "data": [{"id": self.owner.model}]})
        elif method == "POST" and self.path == "/v1/chat/completions":
            if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
                self._error(400, "messages: field required")
            elif body.get("stream"):
                self._chat_stream(body, broken=failure is not None)
            else:
                self._chat(body)
        elif method == "POST" and self.path == "/v1/completions":
            self._completions(body)
        else:
            self._error(404, f"no route {method} {self.path}")

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _fail(self, failure: _Failure) -> None:
        if failure.kind == "hang":
            self.owner._released.wait(self.owner.hang_s)
            self._error(504, "hung on purpose")
            self.close_connection = True
            return
        status = int(failure.kind)
        headers = {"Retry-After": failure.retry_after} if failure.retry_after else None
        messages = {
            429: "rate limit reached, slow down",
            500: "internal error on purpose",
            503: "overloaded on purpose",
            400: "max_tokens is too large for this model",
            401: "invalid API key",
        }
        self._error(status, messages[status], headers)

    # -- the OpenAI endpoints ----------------------------------------------------------------

    def _completion_text(self, body: dict[str, Any]) -> tuple[list[str], str]:
        """The reply as tokens, cut by ``stop`` and ``max_tokens``, and its finish reason."""
        text = self.owner.reply_for(body)
        finish = "stop"
        for stop in body.get("stop") or []:
            if stop and stop in text:
                text = text[: text.index(stop)]
        pieces = tokens(text)
        limit = body.get("max_tokens")
        if isinstance(limit, int) and len(pieces) > limit:
            pieces = pieces[:limit]
            finish = "length"
        return pieces, finish

    def _usage(self, body: dict[str, Any], completion: int) -> dict[str, int]:
        prompt = sum(len(tokens(str(m.get("content", "")))) for m in body["messages"])
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def _chat(self, body: dict[str, Any]) -> None:
        pieces, finish = self._completion_text(body)
        payload: dict[str, Any] = {
            "id": f"chatcmpl-{len(self.owner.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.owner.model),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(pieces)},
                    "finish_reason": finish,
                }
            ],
        }
        if self.owner.usage:
            payload["usage"] = self._usage(body, len(pieces))
        self._send_json(200, payload)

    def _chat_stream(self, body: dict[str, Any], *, broken: bool) -> None:
        pieces, finish = self._completion_text(body)
        base = {
            "id": f"chatcmpl-{len(self.owner.requests)}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model", self.owner.model),
        }
        events: list[dict[str, Any]] = [
            {**base, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}
        ]
        events += [
            {**base, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]}
            for p in pieces
        ]
        events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        wants_usage = (body.get("stream_options") or {}).get("include_usage")
        if self.owner.usage and wants_usage:
            events.append({**base, "choices": [], "usage": self._usage(body, len(pieces))})
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i, event in enumerate(events):
                if broken and i == 3:
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)  # drop the connection mid-stream
                    return
                self._chunk(f"data: {json.dumps(event)}\n\n".encode())
            self._chunk(b"data: [DONE]\n\n")
            self._chunk(b"")
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _completions(self, body: Any) -> None:
        if not isinstance(body, dict) or "prompt" not in body:
            self._error(400, "prompt: field required")
            return
        mode = self.owner.scoring
        if mode == "refuse" and body.get("echo"):
            self._error(400, "echo is not supported with logprobs for this model")
            return
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        choices = []
        prompt_total = 0
        for index, prompt in enumerate(prompts):
            toks = tokens(prompt)
            prompt_total += len(toks)
            offsets, pos = [], 0
            for tok in toks:
                offsets.append(pos)
                pos += len(tok)
            logprobs: list[float | None] = [None]
            logprobs += [token_logprob(t, self.owner.favoured) for t in toks[1:]]
            out_logprobs: list[float | None]
            if mode == "generated_only" or not body.get("echo"):
                out_tokens, out_logprobs, out_offsets = [GENERATED], [GENERATED_LOGPROB], [pos]
                text = GENERATED
            else:
                out_tokens = [*toks, GENERATED]
                out_logprobs = [*logprobs, GENERATED_LOGPROB]
                out_offsets = [*offsets, len(prompt)]
                text = prompt + GENERATED
            choice: dict[str, Any] = {"index": index, "text": text, "finish_reason": "length"}
            if body.get("logprobs") is not None:
                choice["logprobs"] = {
                    "tokens": out_tokens,
                    "token_logprobs": out_logprobs,
                    "text_offset": out_offsets,
                    "top_logprobs": [
                        None if v is None else {t: v}
                        for t, v in zip(out_tokens, out_logprobs, strict=True)
                    ],
                }
            choices.append(choice)
        choices.reverse()  # clients must order by index, not by position
        payload: dict[str, Any] = {
            "id": f"cmpl-{len(self.owner.requests)}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": body.get("model", self.owner.model),
            "choices": choices,
        }
        if self.owner.usage:
            payload["usage"] = {
                "prompt_tokens": prompt_total,
                "completion_tokens": len(prompts),
                "total_tokens": prompt_total + len(prompts),
            }
        self._send_json(200, payload)
