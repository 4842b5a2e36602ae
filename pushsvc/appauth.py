"""Subscribers authorised by a call to the app that owns the users (``PUSHSVC_AUTH_URL``).

For a request asking for private channels that presents no JWT (or when no JWT key is
configured at all), pushsvc ``POST``s ``{"channels": [...], "last_event_id": ...}`` to the
app, forwarding the request's ``Cookie``, ``Authorization`` and ``X-Request-ID`` and the
client address in ``X-Forwarded-For``.  The app answers 200 with ``{"channels": [...],
"ttl": seconds}`` (both optional: every asked channel allowed, no expiry; ``channels`` may
hold names or ``*`` patterns), or 401/403, passed on as pushsvc's JSON 401/403.  Anything
else -- another status, a body that is not that JSON, no answer within
``PUSHSVC_AUTH_TIMEOUT_SECONDS`` -- fails closed: `AuthUnavailable`, which a stream answers
as it answers "over capacity" (200, jittered ``retry:``, end) and `/history` as 503.

A JWT, when presented and a key is configured, decides alone (`Authority.authorize_stream`).

Owns: the one pooled `httpx.AsyncClient` of the process (made on first use, closed when
the app stops), the concurrency bound, the cache of "allowed" per (credentials, channel)
(``PUSHSVC_AUTH_CACHE_SECONDS``; refusals are never cached), and the counters.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from quart import Quart, Response, current_app, jsonify, request

from .asgi import REQUEST_ID_KEY
from .auth import Authority, _unauthorized, authority
from .config import Settings
from .errors import ApiError
from .metrics import Metrics
from .patterns import matches_any

log = logging.getLogger("pushsvc.appauth")

#: Calls in flight to the app at once, per process (the pool holds as many connections).
MAX_CONCURRENT_CALLS = 64
#: Cache entries kept at most (oldest dropped first).
MAX_CACHE_ENTRIES = 100_000
FORWARDED_HEADERS = ("Cookie", "Authorization", "X-Request-ID")


class ServeLater(Exception):
    """The request cannot be served now (nothing is wrong with it): a stream gets what an
    over-capacity stream gets (200, jittered ``retry:``, end), anything else a 503."""


class AuthUnavailable(ServeLater):
    """The app could not decide (unreachable, slow, or an answer that is not one of the
    agreed ones): refuse for now, never open."""


@dataclass(frozen=True, slots=True)
class Decision:
    channels: tuple[str, ...]  # the private channels allowed
    expires_at: float | None  # `time.monotonic()` deadline of the grant, None: none


class AppAuthorizer:
    """One per app: calls the app, caches its "allowed", counts."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        assert settings.auth_url is not None
        self.url = settings.auth_url
        self.timeout = settings.auth_timeout_seconds
        self.cache_seconds = settings.auth_cache_seconds
        self.metrics = metrics
        self._client: httpx.AsyncClient | None = None
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_CALLS)
        # (credentials digest, channel) -> monotonic time until which "allowed" holds, and
        # the grant's own deadline (the app's ttl) if any.
        self._cache: dict[tuple[bytes, str], tuple[float, float | None]] = {}

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            limits = httpx.Limits(max_connections=MAX_CONCURRENT_CALLS, max_keepalive_connections=16)
            self._client = httpx.AsyncClient(timeout=self.timeout, limits=limits, follow_redirects=False,
                                             trust_env=False)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def authorize(
        self, channels: Sequence[str], last_event_id: str | None, headers: Mapping[str, str],
        client_addr: str | None,
    ) -> Decision:
        """Every channel of `channels` (the private ones asked for) allowed, or ApiError
        401/403, or AuthUnavailable."""
        key = _credentials_key(headers)
        cached = self._cached(key, channels)
        if cached is not None:
            self.metrics.auth_cache_hits += 1
            return cached
        answer = await self._call(channels, last_event_id, headers, client_addr)
        decision = self._decide(channels, answer)
        self._remember(key, decision)
        return decision

    async def _call(
        self, channels: Sequence[str], last_event_id: str | None, headers: Mapping[str, str],
        client_addr: str | None,
    ) -> httpx.Response:
        forwarded = {name: value for name in FORWARDED_HEADERS if (value := headers.get(name))}
        if client_addr:
            forwarded["X-Forwarded-For"] = client_addr
        self.metrics.auth_calls += 1
        try:
            async with asyncio.timeout(self.timeout), self._slots:  # waiting for a slot counts too
                return await self._http().post(
                    self.url, json={"channels": list(channels), "last_event_id": last_event_id},
                    headers=forwarded,
                )
        except (httpx.HTTPError, TimeoutError) as exc:
            self.metrics.auth_errors += 1
            log.warning("authorisation callback failed", extra={"error": type(exc).__name__})
            raise AuthUnavailable("the app's authorisation callback did not answer") from None

    def _decide(self, channels: Sequence[str], answer: httpx.Response) -> Decision:
        if answer.status_code in (401, 403):
            self.metrics.auth_denials += 1
            if answer.status_code == 401:
                raise _unauthorized("the app did not authenticate this request", invalid=False)
            raise ApiError("forbidden", "the app does not allow subscribing to these channels", 403)
        try:
            if answer.status_code != 200:
                raise AuthUnavailable(f"the app's authorisation callback answered {answer.status_code}")
            allowed, ttl = _parse_allow(answer)
        except AuthUnavailable:
            self.metrics.auth_errors += 1
            log.warning("authorisation callback gave an unexpected answer", extra={"status": answer.status_code})
            raise
        patterns = tuple(channels) if allowed is None else allowed
        forbidden = [c for c in channels if not matches_any(patterns, c)]
        if forbidden:
            self.metrics.auth_denials += 1
            shown = ", ".join(repr(c) for c in forbidden[:5]) + (", ..." if len(forbidden) > 5 else "")
            raise ApiError("forbidden", f"the app does not allow subscribing to {shown}", 403)
        expires_at = None if ttl is None else time.monotonic() + ttl
        return Decision(tuple(channels), expires_at)

    def _cached(self, key: bytes, channels: Sequence[str]) -> Decision | None:
        if self.cache_seconds <= 0:
            return None
        now = time.monotonic()
        deadlines: list[float] = []
        for channel in channels:
            entry = self._cache.get((key, channel))
            if entry is None or entry[0] <= now:
                return None
            if entry[1] is not None:
                deadlines.append(entry[1])
        return Decision(tuple(channels), min(deadlines) if deadlines else None)

    def _remember(self, key: bytes, decision: Decision) -> None:
        if self.cache_seconds <= 0:
            return
        until = time.monotonic() + self.cache_seconds
        if decision.expires_at is not None:
            until = min(until, decision.expires_at)
        for channel in decision.channels:
            if len(self._cache) >= MAX_CACHE_ENTRIES:
                self._cache.pop(next(iter(self._cache)))
            self._cache.pop((key, channel), None)  # re-inserted last: the oldest go first
            self._cache[(key, channel)] = (until, decision.expires_at)


def _parse_allow(answer: httpx.Response) -> tuple[tuple[str, ...] | None, float | None]:
    """(channels, ttl) of a 200 answer; AuthUnavailable when the body is not the agreed JSON."""
    if not answer.content.strip():
        return None, None
    try:
        body: Any = answer.json()
    except ValueError:
        raise AuthUnavailable from None
    if not isinstance(body, dict):
        raise AuthUnavailable
    channels = body.get("channels")
    ttl = body.get("ttl")
    if channels is not None and (
        not isinstance(channels, list) or not all(isinstance(c, str) for c in channels)
    ):
        raise AuthUnavailable
    if ttl is not None and (
        isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl) or ttl <= 0
    ):
        raise AuthUnavailable
    return (None if channels is None else tuple(channels)), (None if ttl is None else float(ttl))


def _credentials_key(headers: Mapping[str, str]) -> bytes:
    """What identifies the caller to the app: a digest, so the cache holds no credential."""
    digest = hashlib.sha256()
    for name in ("Cookie", "Authorization"):
        digest.update((headers.get(name) or "").encode("utf-8", "surrogateescape") + b"\0")
    return digest.digest()


# -- the hook the routes call ------------------------------------------------------------


async def authorize_subscriber(channels: Sequence[str], last_event_id: str | None) -> float | None:
    """For the current request: the `time.monotonic()` deadline of its grant (None: none),
    or ApiError 401/403, or AuthUnavailable.  Every private channel must be allowed."""
    auth: Authority = authority()
    token = auth.subscriber_token(request.headers, request.cookies, request.args)
    app_auth: AppAuthorizer | None = current_app.extensions.get("pushsvc.appauth")
    if app_auth is None or (token is not None and auth.verifier is not None):
        return auth.authorize_stream(channels, token)  # a presented JWT decides alone
    private = auth.private_of(channels)
    if not private:
        return None
    client = request.scope.get("client")
    headers = {name: value for name in FORWARDED_HEADERS if (value := request.headers.get(name))}
    request_id = request.scope.get(REQUEST_ID_KEY)
    if request_id:
        headers["X-Request-ID"] = str(request_id)
    decision = await app_auth.authorize(private, last_event_id, headers, client[0] if client else None)
    return decision.expires_at


def install(
    app: Quart, settings: Settings, metrics: Metrics,
    stream_body: Callable[[int], bytes], stream_headers: Mapping[str, str],
) -> None:
    """Answer ServeLater: `stream_body(retry_ms)` as a 200 stream on /stream (a browser's
    EventSource gives up for good on anything else), 503 JSON elsewhere; and make the
    app's authorizer when ``PUSHSVC_AUTH_URL`` is set."""

    @app.errorhandler(ServeLater)
    async def unavailable(error: ServeLater) -> Response:
        retry_seconds = max(1, settings.retry_ms // 1000)
        if request.path == "/stream":
            return Response(stream_body(settings.retry_ms), 200, dict(stream_headers))
        response = jsonify({"error": "unavailable", "detail": str(error) or "retry later"})
        response.status_code = 503
        response.headers["Retry-After"] = str(retry_seconds)
        return response

    if settings.auth_url is None:
        return
    app_auth = app.extensions["pushsvc.appauth"] = AppAuthorizer(settings, metrics)

    @app.after_serving
    async def close_client() -> None:
        await app_auth.close()
