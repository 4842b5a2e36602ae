"""A tiny app that answers pushsvc's authorisation callback, on a free loopback port.

Its login is the cookie ``session=<user id>``: user N may listen to ``user:N``.  `mode`
switches how it answers (``allow``, ``slow``, ``error`` = 500, ``garbage`` = 200 that is not
JSON, ``all`` = 200 with an empty body) and `ttl` adds a grant lifetime.  Every call is
recorded (path, headers, JSON body) for the tests to inspect.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .procs import free_port


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # a storm of calls must not wait on the listen backlog
    daemon_threads = True


class AuthApp:
    def __init__(self) -> None:
        self.port = free_port()
        self.mode = "allow"
        self.ttl: float | None = None
        self.slow_seconds = 4.0
        self.calls: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", self.port), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/pushsvc/authorize"

    def start(self) -> AuthApp:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def call_count(self) -> int:
        with self._lock:
            return len(self.calls)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        app = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                with app._lock:
                    app.calls.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if app.mode == "slow":
                    time.sleep(app.slow_seconds)
                if app.mode == "error":
                    return self._answer(500, b"oops")
                if app.mode == "garbage":
                    return self._answer(200, b"<html>login</html>")
                if app.mode == "all":
                    return self._answer(200, b"")
                cookie = self.headers.get("Cookie") or ""
                user = next((part.split("=", 1)[1] for part in cookie.split("; ")
                             if part.startswith("session=")), None)
                if user is None:
                    return self._answer(401, b'{"error": "login first"}')
                if user == "banned":
                    return self._answer(403, b'{"error": "banned"}')
                answer: dict[str, Any] = {"channels": [f"user:{user}", "news:*"]}
                if app.ttl is not None:
                    answer["ttl"] = app.ttl
                self._answer(200, json.dumps(answer).encode())

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler
