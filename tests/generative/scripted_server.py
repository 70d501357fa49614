"""A loopback HTTP server whose every answer a test scripts, for clients facing odd servers.

:class:`OpenAIServer` (``openai_server.py``) speaks the OpenAI wire format correctly; this one
answers whatever ``respond(path, body, handler)`` writes: malformed JSON shapes, answers
trickled a byte at a time, waits, any status. Every request is recorded (path, JSON body,
``time.monotonic()`` on arrival).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Respond = Callable[[str, Any, BaseHTTPRequestHandler], None]


class ScriptedServer:
    """Use as a context manager; ``url`` is the API root (``http://127.0.0.1:PORT/v1``)."""

    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.requests: list[tuple[str, Any, float]] = []
        self.released = threading.Event()  # set on exit: wakes handlers that wait
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def handle(self) -> None:
                with contextlib.suppress(ConnectionError, OSError):
                    super().handle()

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                owner.requests.append((self.path, body, time.monotonic()))
                owner.respond(self.path, body, self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.released.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def send_json(
    handler: BaseHTTPRequestHandler,
    payload: Any,
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> None:
    """Answer ``payload`` as JSON (any JSON: the point is to send odd shapes)."""
    data = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(data)


def trickle(
    handler: BaseHTTPRequestHandler, payload: Any, *, every_s: float, released: threading.Event
) -> None:
    """Answer ``payload`` as JSON one byte every ``every_s`` seconds (each wait is short,
    the whole answer slow), stopping early once ``released`` is set."""
    data = json.dumps(payload).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.flush()
    with contextlib.suppress(ConnectionError, OSError):
        for i in range(len(data)):
            handler.wfile.write(data[i : i + 1])
            handler.wfile.flush()
            if released.wait(every_s):
                return


def chat_answer(content: Any = "Because you watched Toy Story (1995).", **extra: Any) -> Any:
    """A chat.completion whose ``choices[0].message.content`` is ``content`` (any JSON)."""
    return {"choices": [{"index": 0, "message": {"content": content}}], **extra}
