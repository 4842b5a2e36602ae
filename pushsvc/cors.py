"""CORS for browsers on other origins (``PUSHSVC_CORS_ORIGINS``).

Exact origins get ``Access-Control-Allow-Origin: <their origin>`` with
``Access-Control-Allow-Credentials: true`` (cookies, ``EventSource(url, {withCredentials:
true})``); ``*`` alone means any origin *without* credentials, so a wildcard never goes
with credentials.  Only headers are added (an ``after_request`` hook): stream bodies are
never buffered.  Preflights for ``/publish`` and ``/stream`` are answered here.
"""

from __future__ import annotations

from quart import Quart, Response, jsonify, request

PREFLIGHT = {"/publish": "POST", "/stream": "GET", "/history": "GET"}
ALLOW_HEADERS = "Authorization, Content-Type, Last-Event-ID"
MAX_AGE_SECONDS = "600"


class CorsPolicy:
    def __init__(self, origins: tuple[str, ...]) -> None:
        self.any = origins == ("*",)
        self.origins = frozenset(origins)

    def allow_origin(self, origin: str | None) -> str | None:
        """The Access-Control-Allow-Origin value for this request, or None."""
        if not origin:
            return None
        if self.any:
            return "*"
        return origin if origin in self.origins else None

    def decorate(self, response: Response, origin: str | None) -> None:
        response.vary.add("Origin")
        allowed = self.allow_origin(origin)
        if allowed is None:
            return
        response.headers["Access-Control-Allow-Origin"] = allowed
        if not self.any:
            response.headers["Access-Control-Allow-Credentials"] = "true"


def install(app: Quart, origins: tuple[str, ...]) -> None:
    if not origins:
        return
    policy = CorsPolicy(origins)

    @app.before_request
    async def preflight() -> Response | None:
        if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
            return None
        method = PREFLIGHT.get(request.path)
        if method is None:
            return None
        origin = request.headers.get("Origin")
        if policy.allow_origin(origin) is None:
            response = jsonify({"error": "cors_origin_not_allowed",
                                "detail": "this origin is not in PUSHSVC_CORS_ORIGINS"})
            response.status_code = 403
            return response
        response = Response(b"", 204)
        response.headers["Access-Control-Allow-Methods"] = method
        response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
        response.headers["Access-Control-Max-Age"] = MAX_AGE_SECONDS
        return response

    @app.after_request
    async def add_headers(response: Response) -> Response:
        policy.decorate(response, request.headers.get("Origin"))
        return response
