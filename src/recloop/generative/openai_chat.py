"""A client for any OpenAI-compatible chat-completions server (Ollama, vLLM, llama.cpp, hosted).

:class:`OpenAIChat` sends ``POST {base_url}/chat/completions`` with one reused ``httpx``
client. It retries, with exponential back-off and jitter, on connection errors, timeouts, HTTP
429 and 5xx (a ``Retry-After`` header sets the wait), and fails at once on any other 4xx with
a :class:`~recloop.generative.llm.GenerationError` naming the status and the server's message.
``stream`` yields the text as it arrives (server-sent events). A request's ``timeout_s`` is
the deadline of the whole call, retries and waits included; running out of it raises
:class:`DeadlineExceeded`. Token counts come from the server's ``usage`` block; a server that
omits it gets an estimate, and ``Generation.metadata`` says which (``usage_source``:
``"server"`` or ``"estimated"``). An answer that is JSON but not of the documented shape (a
``content`` that is not text, a ``usage`` count that is not a number, ...) is a
:class:`GenerationError`, never another exception. The instance keeps running totals
(``requests``, ``retries``, ``errors``, ``prompt_tokens``, ``completion_tokens``).

The API key is read from a named environment variable, sent only in the ``Authorization``
header, and never logged or shown in ``repr``. ``hosted`` is False only when the base URL is a
loopback address or ``localhost``: every other server counts as text leaving this machine
(see :func:`~recloop.generative.llm.check_consent`). A loopback server is contacted directly:
proxy variables (``HTTP_PROXY``, ``ALL_PROXY``, ...) are ignored for it, so a prompt that counts
as staying on this machine does.

``score`` needs the legacy ``/completions`` endpoint with ``echo`` and prompt log-probabilities
(vLLM has it; hosted chat APIs and, at the time of writing, llama.cpp's server do not); other
servers get a :class:`GenerationError` saying so.
"""

from __future__ import annotations

import email.utils
import ipaddress
import json
import logging
import math
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx

from recloop.generative.llm import Generation, GenerationError, GenerationRequest, Message

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})  # plus any other 5xx
MAX_TIMEOUT_S = 86_400.0  # one day; far longer waits overflow the platform's socket timeouts
_TOKEN_ESTIMATE = re.compile(r"\w+|[^\w\s]")


class BackendUnavailable(GenerationError):
    """The server could not be reached, did not answer in time, or stayed overloaded (HTTP
    429 or 5xx) until no retry was left: a failure on the backend's side, not the caller's."""


class DeadlineExceeded(BackendUnavailable):
    """The request's ``timeout_s``, the deadline of the whole call, ran out (or would have
    before the next attempt could start). Callers spending a budget label this ``budget``."""


def estimate_tokens(text: str) -> int:
    """A rough token count (words and punctuation marks) for servers that report no usage."""
    return len(_TOKEN_ESTIMATE.findall(text))


def is_loopback_url(url: str) -> bool:
    """Whether ``url``'s host is ``localhost`` (or ``*.localhost``) or a loopback IP address.

    No name is resolved: any other host, private LAN addresses included, counts as remote.
    """
    host = (urlsplit(url).hostname or "").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plain_prompt(messages: Sequence[Message]) -> str:
    """Chat messages as one plain-text prompt ending where the assistant's answer starts.

    Used where no chat template is available: the legacy ``/completions`` endpoint and local
    tokenizers without one.
    """
    parts = [f"{m.role.capitalize()}: {m.content.strip()}" for m in messages]
    parts.append("Assistant:")
    return "\n\n".join(parts)


class OpenAIChat:
    """An OpenAI-compatible chat-completions server as a text generator.

    ``base_url`` is the API root including its version path, e.g.
    ``http://localhost:11434/v1`` (Ollama), ``http://localhost:8000/v1`` (vLLM),
    ``http://localhost:8080/v1`` (llama.cpp) or ``https://api.openai.com/v1``.
    ``api_key_env`` names the environment variable holding the key (read once, here); a named
    variable that is unset or empty is an error. ``timeout_s`` bounds each attempt, from
    connecting to the answer's last byte (for streams: each wait for more bytes); a request's
    own ``timeout_s`` is the deadline of the whole call, retries and back-off included, and
    cuts the attempts to the time left. ``max_retries`` is the number of extra attempts after
    the first; the back-off before retry *n* is
    ``backoff_s * 2**(n-1)``, capped at ``max_backoff_s``, times a random factor in [0.5, 1).
    A ``Retry-After`` longer than ``max_retry_after_s`` ends the call instead of waiting.
    ``max_tokens`` caps every request's ``max_tokens``; ``stream_usage`` asks streaming servers
    for a final usage chunk (``stream_options.include_usage``); ``score_prompt`` renders the
    messages as the plain-text prompt :meth:`score` sends.
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = None,
        timeout_s: float = 30.0,
        max_retries: int = 2,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        max_retry_after_s: float = 60.0,
        max_tokens: int | None = None,
        stream_usage: bool = True,
        score_prompt: Callable[[Sequence[Message]], str] = plain_prompt,
        headers: Mapping[str, str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        parsed = urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise GenerationError(f"base_url must be an http(s) URL, not {base_url!r}")
        if not model:
            raise GenerationError("model must name the server's model (e.g. 'llama3.2:1b')")
        if not 0 < timeout_s <= MAX_TIMEOUT_S:  # also refuses inf and nan
            raise GenerationError(
                f"timeout_s must be a positive number of seconds up to {MAX_TIMEOUT_S:g}, "
                f"not {timeout_s}"
            )
        if max_retries < 0:
            raise GenerationError(f"max_retries must be 0 or more, not {max_retries}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.hosted = not is_loopback_url(self.base_url)
        self.api_key_env = api_key_env
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.max_retry_after_s = float(max_retry_after_s)
        self.max_tokens = max_tokens
        self.stream_usage = stream_usage
        self.score_prompt = score_prompt
        self._sleep = sleep
        self._rng = random.Random()
        self._lock = threading.Lock()
        # cumulative counters; requests counts HTTP requests sent, retries included
        self.requests = 0
        self.retries = 0
        self.errors = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0

        sent_headers = {"Accept": "application/json", **dict(headers or {})}
        if api_key_env:
            key = os.environ.get(api_key_env, "")
            if not key:
                raise GenerationError(
                    f"the API key variable {api_key_env} is unset or empty (api_key_env names "
                    "the environment variable that holds the key, not the key itself)"
                )
            sent_headers["Authorization"] = f"Bearer {key}"
        # trust_env=False for a loopback server: HTTP_PROXY and friends would otherwise send
        # a prompt that counts as local (hosted=False, no consent needed) through a proxy
        self._client = httpx.Client(
            base_url=self.base_url + "/",
            headers=sent_headers,
            timeout=self.timeout_s,
            trust_env=self.hosted,
        )

    def __repr__(self) -> str:
        key = f", api_key_env={self.api_key_env!r}" if self.api_key_env else ""
        return f"OpenAIChat(base_url={self.base_url!r}, model={self.model!r}{key})"

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close the pooled HTTP connections."""
        self._client.close()

    def __enter__(self) -> OpenAIChat:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def counters(self) -> dict[str, int]:
        """The running totals since this client was made."""
        with self._lock:
            return {
                "requests": self.requests,
                "retries": self.retries,
                "errors": self.errors,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
            }

    # -- the TextGenerator interface ---------------------------------------------------------

    def generate(self, request: GenerationRequest) -> Generation:
        """One chat completion for ``request.messages``."""
        body = self._chat_body(request, stream=False)
        start = time.perf_counter()
        response, attempts = self._post("chat/completions", body, request.timeout_s)
        payload = self._json(response, "chat/completions")
        where = f"{self.base_url}/chat/completions"
        choices = payload.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else None
        message = choice.get("message") if isinstance(choice, Mapping) else None
        if not isinstance(choice, Mapping) or not isinstance(message, Mapping):
            raise self._malformed(
                f"{where} answered without choices[0].message: {_short(json.dumps(payload))}"
            )
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            raise self._malformed(
                f"{where} answered with a choices[0].message.content that is "
                f"{_kind(content)}, not text: {_short(json.dumps(content))}"
            )
        text = content or ""
        finish = choice.get("finish_reason") or "stop"
        prompt_tokens, completion_tokens, source = self._usage(
            payload.get("usage"), request.messages, estimate_tokens(text), where
        )
        return Generation(
            text=text,
            backend=self.name,
            model=self.model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_s=time.perf_counter() - start,
            finish_reason=str(finish),
            metadata={
                "usage_source": source,
                "attempts": attempts,
                "server_model": payload.get("model"),
            },
        )

    def stream(
        self,
        request: GenerationRequest,
        on_complete: Callable[[Generation], None] | None = None,
    ) -> Iterator[str]:
        """The completion's text piece by piece, as the server sends it.

        Failures before the first piece are retried like :meth:`generate`; a failure after it
        raises :class:`GenerationError` (the caller already holds part of the text). The
        request's ``timeout_s`` is the deadline of the whole stream: past it,
        :class:`DeadlineExceeded`. ``on_complete`` receives the whole :class:`Generation`
        (text, tokens, latency) once the server sends ``[DONE]``; the counters are updated then.
        """
        body = self._chat_body(request, stream=True)
        deadline = self._deadline(request.timeout_s)
        where = f"{self.base_url}/chat/completions"
        start = time.perf_counter()
        pieces: list[str] = []
        usage: object = None
        finish = "stop"
        server_model = None
        attempt = 0
        while True:
            attempt += 1
            timeout = httpx.Timeout(self._attempt_s(deadline, where, attempt))
            self._count_request(retry=attempt > 1)
            try:
                with self._client.stream(
                    "POST", "chat/completions", json=body, timeout=timeout
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        delay = self._failure(response, attempt, "chat/completions", deadline)
                    else:
                        for data in _sse_data(response):
                            if data == "[DONE]":
                                continue  # _sse_data reads the body to its end, then stops
                            chunk = self._event(data, where)
                            server_model = chunk.get("model", server_model)
                            usage = chunk.get("usage") or usage
                            for piece, reason in self._deltas(chunk, where):
                                if piece:
                                    pieces.append(piece)
                                    yield piece
                                if reason:
                                    finish = reason
                            if deadline is not None and time.monotonic() > deadline:
                                raise self._out_of_time(where, f"after {len(pieces)} piece(s)")
                        break
            except httpx.TransportError as exc:  # timeouts, refused and dropped connections
                if deadline is not None and time.monotonic() >= deadline:
                    raise self._out_of_time(where, f"after {len(pieces)} piece(s)") from None
                if pieces:
                    self._count_error()
                    raise GenerationError(
                        f"{where}: the stream broke off after {len(pieces)} piece(s) "
                        f"({type(exc).__name__}: {exc or 'no detail'})"
                    ) from None
                delay = self._transport_failure(exc, attempt, "chat/completions", deadline)
            self._sleep(delay)
        text = "".join(pieces)
        prompt_tokens, completion_tokens, source = self._usage(
            usage, request.messages, len(pieces), where
        )
        if on_complete is not None:
            on_complete(
                Generation(
                    text=text,
                    backend=self.name,
                    model=self.model,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    latency_s=time.perf_counter() - start,
                    finish_reason=finish,
                    metadata={
                        "usage_source": source,
                        "attempts": attempt,
                        "server_model": server_model,
                        "streamed": True,
                    },
                )
            )

    def score(self, messages: Sequence[Message], continuations: Sequence[str]) -> list[float]:
        """Summed log-probability of each continuation after ``messages``, in one request.

        Uses ``POST {base_url}/completions`` with ``echo=True, logprobs=1`` on the plain-text
        prompt ``score_prompt(messages)`` followed by each continuation (a space between them
        unless the continuation starts with whitespace), and sums the echoed log-probabilities
        of the tokens that start inside the continuation. ``max_tokens`` is 1, not 0: vLLM
        refuses 0, and the one generated token lies past the continuation, so it is never
        counted.
        """
        if not continuations:
            return []
        prompt = self.score_prompt(messages)
        texts: list[str] = []
        spans: list[tuple[int, int]] = []
        for cont in continuations:
            sep = "" if not cont or cont[0].isspace() else " "
            texts.append(prompt + sep + cont)
            spans.append((len(prompt), len(prompt) + len(sep) + len(cont)))
        body = {
            "model": self.model,
            "prompt": texts,
            "echo": True,
            "logprobs": 1,
            "max_tokens": 1,
            "temperature": 0.0,
        }
        refusal = (
            "scoring needs a server whose legacy /completions endpoint returns the prompt's "
            "log-probabilities with echo=true and logprobs (vLLM does; hosted chat APIs, Ollama "
            "and llama.cpp's server do not)"
        )
        try:
            response, _ = self._post("completions", body, None)
        except GenerationError as exc:
            status = getattr(exc, "status", None)
            if status is not None and 400 <= status < 500 and status not in (401, 403, 429):
                raise GenerationError(f"{refusal}; {exc}") from None
            raise
        payload = self._json(response, "completions")
        choices = payload.get("choices")
        if (
            not isinstance(choices, list)
            or len(choices) != len(texts)
            or not all(isinstance(c, Mapping) for c in choices)
        ):
            raise self._malformed(f"{refusal}; {self.base_url} sent {_short(json.dumps(payload))}")
        by_index = {_whole(c.get("index", n)): c for n, c in enumerate(choices)}
        if set(by_index) != set(range(len(texts))):
            raise self._malformed(
                f"{refusal}; {self.base_url} sent choices whose index values are not "
                f"0 to {len(texts) - 1}: {_short(json.dumps([c.get('index') for c in choices]))}"
            )
        ordered = [by_index[n] for n in range(len(texts))]
        scores: list[float] = []
        for choice, text, (lo, hi) in zip(ordered, texts, spans, strict=True):
            logprobs = choice.get("logprobs") or {}
            offsets = logprobs.get("text_offset") if isinstance(logprobs, Mapping) else None
            values = logprobs.get("token_logprobs") if isinstance(logprobs, Mapping) else None
            echoed = isinstance(choice.get("text"), str) and choice["text"].startswith(text)
            if (
                not echoed
                or not isinstance(offsets, list)
                or not isinstance(values, list)
                or not offsets
                or len(offsets) != len(values)
            ):
                raise self._malformed(
                    f"{refusal}; {self.base_url} did not echo the prompt's log-probabilities"
                )
            total = 0.0
            counted = 0
            for offset, value in zip(offsets, values, strict=True):
                start_at = _whole(offset)
                if start_at is None or not (value is None or _number(value)):
                    raise self._malformed(
                        f"{refusal}; {self.base_url} sent a text_offset or token_logprob that "
                        f"is not a number: {_short(json.dumps([offset, value]))}"
                    )
                if lo <= start_at < hi and value is not None:
                    total += float(value)
                    counted += 1
            if hi > lo and counted == 0:
                raise self._malformed(
                    f"{refusal}; {self.base_url} returned no log-probabilities for the "
                    "continuation's tokens"
                )
            scores.append(total)
        usage = payload.get("usage")
        where = f"{self.base_url}/completions"
        prompt_tokens = completion_tokens = 0
        if isinstance(usage, Mapping):
            prompt_tokens = self._token_count(usage, "prompt_tokens", where)
            completion_tokens = self._token_count(usage, "completion_tokens", where)
        with self._lock:
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
        return scores

    # -- internals ---------------------------------------------------------------------------

    def _chat_body(self, request: GenerationRequest, *, stream: bool) -> dict[str, Any]:
        if not request.messages:
            raise GenerationError(
                f"the {self.name} backend needs a prompt: request.messages is empty "
                f"(task {request.task!r})"
            )
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": min(request.max_tokens, self.max_tokens or request.max_tokens),
            "temperature": request.temperature,
            "stream": stream,
        }
        if request.stop:
            body["stop"] = list(request.stop)
        if stream and self.stream_usage:
            body["stream_options"] = {"include_usage": True}
        return body

    def _deadline(self, timeout_s: float | None) -> float | None:
        """The ``time.monotonic()`` by which a call with the request's ``timeout_s`` ends."""
        if timeout_s is None:
            return None
        if not math.isfinite(timeout_s):
            raise GenerationError(
                f"the request's timeout_s must be a finite number of seconds, not {timeout_s}"
            )
        return time.monotonic() + timeout_s

    def _attempt_s(self, deadline: float | None, where: str, attempt: int) -> float:
        """The seconds the next attempt may take: ``timeout_s``, cut to the time left."""
        if deadline is None:
            return self.timeout_s
        left = deadline - time.monotonic()
        if left <= 0:
            raise self._out_of_time(where, f"before attempt {attempt}")
        return min(self.timeout_s, left)

    def _out_of_time(self, where: str, when: str) -> DeadlineExceeded:
        self._count_error()
        return DeadlineExceeded(f"{where}: the request's timeout_s ran out {when}")

    def _post(
        self, path: str, body: Mapping[str, Any], timeout_s: float | None
    ) -> tuple[httpx.Response, int]:
        """POST with retries; the successful response and how many attempts it took.

        ``timeout_s`` (the request's) is the deadline of the whole call: no attempt, wait or
        read goes past it."""
        deadline = self._deadline(timeout_s)
        where = f"{self.base_url}/{path}"
        attempt = 0
        while True:
            attempt += 1
            seconds = self._attempt_s(deadline, where, attempt)
            self._count_request(retry=attempt > 1)
            try:
                response = self._send(path, body, seconds)
            except httpx.TransportError as exc:
                self._sleep(self._transport_failure(exc, attempt, path, deadline))
                continue
            if response.status_code < 400:
                return response, attempt
            self._sleep(self._failure(response, attempt, path, deadline))

    def _send(self, path: str, body: Mapping[str, Any], seconds: float) -> httpx.Response:
        """One POST that takes at most ``seconds`` from connecting to the answer's last byte.

        httpx's timeouts bound each wait, not the total, so a server trickling its answer
        a byte at a time would never time out: the body is read in pieces and the clock
        checked after each (it can overrun by at most one read wait)."""
        ends = time.monotonic() + seconds
        timeout = httpx.Timeout(seconds)
        with self._client.stream("POST", path, json=body, timeout=timeout) as response:
            raw = bytearray()
            for piece in response.iter_raw():
                raw += piece
                if time.monotonic() > ends:
                    raise httpx.ReadTimeout(
                        f"the answer was still arriving after {seconds:.3g} s",
                        request=response.request,
                    )
            return httpx.Response(
                response.status_code,
                headers=response.headers,
                content=bytes(raw),
                request=response.request,
            )

    def _transport_failure(
        self, exc: httpx.TransportError, attempt: int, path: str, deadline: float | None
    ) -> float:
        """The wait before the next attempt after ``exc``, or raise when none is left."""
        kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "could not be reached"
        what = f"{self.base_url}/{path} {kind} ({type(exc).__name__}: {exc or 'no detail'})"
        if deadline is not None and time.monotonic() >= deadline:
            where = f"{self.base_url}/{path}"
            raise self._out_of_time(where, f"after {attempt} attempt(s)") from None
        if attempt > self.max_retries:
            self._count_error()
            raise BackendUnavailable(f"{what}; gave up after {attempt} attempt(s)") from None
        delay = self._backoff(attempt)
        self._check_wait(what, delay, deadline)
        log.warning("%s; retry %d/%d in %.2f s", what, attempt, self.max_retries, delay)
        return delay

    def _failure(
        self, response: httpx.Response, attempt: int, path: str, deadline: float | None
    ) -> float:
        """The wait before retrying an HTTP error, or raise when it is final."""
        status = response.status_code
        message = _error_message_of(response)
        what = f"{self.base_url}/{path} answered HTTP {status}: {message}"
        retryable = status in RETRY_STATUSES or status >= 500
        if not retryable:
            self._count_error()
            hint = ""
            if status in (401, 403):
                hint = (
                    f" (check the key in {self.api_key_env})"
                    if self.api_key_env
                    else " (the server wants an API key: set api_key_env)"
                )
            elif status == 404:
                hint = f" (check base_url {self.base_url!r} and model {self.model!r})"
            raise _status_error(what + hint, status)
        if attempt > self.max_retries:
            self._count_error()
            raise _status_error(f"{what}; gave up after {attempt} attempt(s)", status)
        delay = self._backoff(attempt)
        retry_after = _retry_after_s(response.headers.get("Retry-After"))
        if retry_after is not None:
            if retry_after > self.max_retry_after_s:
                self._count_error()
                raise _status_error(
                    f"{what}; the server asks to wait {retry_after:.0f} s, longer than "
                    f"max_retry_after_s={self.max_retry_after_s:g}",
                    status,
                )
            delay = retry_after
        self._check_wait(what, delay, deadline)
        log.warning("%s; retry %d/%d in %.2f s", what, attempt, self.max_retries, delay)
        return delay

    def _check_wait(self, what: str, delay: float, deadline: float | None) -> None:
        """Raise :class:`DeadlineExceeded` when waiting ``delay`` s would pass the deadline."""
        if deadline is None:
            return
        left = deadline - time.monotonic()
        if delay >= left:
            self._count_error()
            raise DeadlineExceeded(
                f"{what}; the request's timeout_s leaves {max(left, 0.0):.2f} s, too little to "
                f"wait {delay:.2f} s and try again"
            )

    def _backoff(self, attempt: int) -> float:
        base = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        return base * (0.5 + 0.5 * self._rng.random())

    def _json(self, response: httpx.Response, path: str) -> dict[str, Any]:
        try:
            payload = response.json()
        except ValueError:
            self._count_error()
            raise GenerationError(
                f"{self.base_url}/{path} answered HTTP {response.status_code} with non-JSON "
                f"text: {_short(response.text)}"
            ) from None
        if not isinstance(payload, dict):
            self._count_error()
            raise GenerationError(f"{self.base_url}/{path} answered {_short(response.text)}")
        return payload

    def _event(self, data: str, where: str) -> dict[str, Any]:
        """One stream event as JSON; an error event or malformed data raises."""
        try:
            chunk = json.loads(data)
        except ValueError:
            chunk = None
        if not isinstance(chunk, dict):
            self._count_error()
            raise GenerationError(f"{where}: a stream event is not a JSON object: {_short(data)}")
        if "error" in chunk:
            self._count_error()
            raise GenerationError(f"{where} failed mid-stream: {_error_message(chunk)}")
        return chunk

    def _deltas(self, chunk: Mapping[str, Any], where: str) -> Iterator[tuple[str, str]]:
        """``(text piece, finish reason)`` of each choice in one stream event ('' for none)."""
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise self._malformed(f"{where}: a stream event's choices is {_kind(choices)}")
        for choice in choices:
            delta = (choice.get("delta") or {}) if isinstance(choice, Mapping) else None
            piece = delta.get("content") if isinstance(delta, Mapping) else None
            if not isinstance(delta, Mapping) or not (piece is None or isinstance(piece, str)):
                raise self._malformed(
                    f"{where}: a stream event is not a chat.completion.chunk with text "
                    f"deltas: {_short(json.dumps(chunk))}"
                )
            reason = choice.get("finish_reason")
            yield piece or "", str(reason) if reason else ""

    def _usage(
        self, usage: object, messages: Sequence[Message], completion_estimate: int, where: str
    ) -> tuple[int, int, str]:
        if isinstance(usage, Mapping) and usage.get("completion_tokens") is not None:
            prompt_tokens = self._token_count(usage, "prompt_tokens", where)
            completion_tokens = self._token_count(usage, "completion_tokens", where)
            source = "server"
        else:
            prompt_tokens = sum(estimate_tokens(m.content) for m in messages)
            completion_tokens = completion_estimate
            source = "estimated"
        with self._lock:
            self.prompt_tokens += prompt_tokens
            self.completion_tokens += completion_tokens
        return prompt_tokens, completion_tokens, source

    def _token_count(self, usage: Mapping[str, Any], name: str, where: str) -> int:
        """``usage[name]`` as a token count: missing is 0, negative is clamped to 0, and
        anything but a number is a :class:`GenerationError`."""
        value = usage.get(name)
        if value is None:
            return 0
        if not _number(value) or not math.isfinite(value):
            raise self._malformed(
                f"{where} answered with usage.{name} {_short(json.dumps(value))}, not a number "
                "of tokens"
            )
        return max(0, int(value))

    def _malformed(self, message: str) -> GenerationError:
        """A :class:`GenerationError` for an answer that is JSON but not of the right shape."""
        self._count_error()
        return GenerationError(message)

    def _count_request(self, *, retry: bool) -> None:
        with self._lock:
            self.requests += 1
            self.retries += int(retry)

    def _count_error(self) -> None:
        with self._lock:
            self.errors += 1


class _StatusError(GenerationError):
    """A GenerationError that remembers the HTTP status it came from."""

    status: int


class _UnavailableStatusError(_StatusError, BackendUnavailable):
    """HTTP 429 or 5xx with no retry left: the server is overloaded or broken."""


def _status_error(message: str, status: int) -> GenerationError:
    retryable = status in RETRY_STATUSES or status >= 500
    err = _UnavailableStatusError(message) if retryable else _StatusError(message)
    err.status = status
    return err


def _number(value: object) -> bool:
    """Whether ``value`` is a JSON number (``bool`` is not, although Python says so)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _whole(value: object) -> int | None:
    """``value`` as an ``int`` when it is a whole JSON number, else None."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _kind(value: object) -> str:
    """How a JSON value is described in an error message ("a list", "a number", ...)."""
    if isinstance(value, bool):
        return "a boolean"
    if _number(value):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "a string" if isinstance(value, str) else "null"


def _sse_data(response: httpx.Response) -> Iterator[str]:
    """The ``data:`` payloads of a server-sent-event stream (multi-line data joined by \\n)."""
    buffer: list[str] = []
    lines = response.iter_lines()
    for line in lines:
        if not line:
            if buffer:
                yield "\n".join(buffer)
                buffer = []
            continue
        if line.startswith(":"):
            continue  # comment / keep-alive
        field, _, value = line.partition(":")
        if field == "data":
            buffer.append(value[1:] if value.startswith(" ") else value)
            if buffer == ["[DONE]"]:
                yield "[DONE]"
                # Read what is left of the body (normally just the end of the chunked
                # encoding) so the connection can go back to the pool for the next call.
                try:
                    for _ in lines:
                        pass
                except httpx.TransportError:
                    pass
                return
    if buffer:
        yield "\n".join(buffer)


def _error_message(payload: Mapping[str, Any]) -> str:
    error = payload.get("error")
    if isinstance(error, Mapping):
        return _short(str(error.get("message") or json.dumps(error)))
    if error is not None:
        return _short(str(error))
    detail = payload.get("detail") or payload.get("message")
    return _short(str(detail) if detail is not None else json.dumps(payload))


def _error_message_of(response: httpx.Response) -> str:
    try:
        payload = response.json()
    except ValueError:
        return _short(response.text) or response.reason_phrase or "no message"
    if isinstance(payload, Mapping):
        return _error_message(payload)
    return _short(response.text)


def _retry_after_s(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), if valid."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
