"""A pure-ASGI wrapper in front of the app: real client address, request ids, access log.

It never touches bodies (streams pass through untouched, chunk by chunk):

* ``scope["client"]`` is replaced by the address from ``X-Forwarded-For`` when, and only
  when, the TCP peer is one of ``PUSHSVC_TRUSTED_PROXIES``.  The header is read from the
  right: the first address that is not itself a trusted proxy is the client, so a value
  the client made up (the leftmost part) is never believed.  The scope is changed in
  place, so Hypercorn's own access log shows the same address.
* every request gets an id: an incoming ``X-Request-ID`` (if it is short and printable),
  else a new one; it is echoed in the response and set in a context variable that the
  log formatters add to every line logged while the request runs.
* one access-log line per request when its response ends (DEBUG for health probes and
  metrics scrapes); for a stream (``GET /stream`` puts its session in the scope) the line
  also has the events sent and why it ended.  Nothing is added per chunk but the header
  check in ``send``.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .logs import direct_handler, request_id_var
from .randomness import token_hex32

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

access_log = logging.getLogger("pushsvc.access")

REQUEST_ID_KEY = "pushsvc.request_id"
STREAM_KEY = "pushsvc.stream"  # set by GET /stream to its StreamSession
#: The server's own `send`, for what follows ``http.response.start`` (only the start
#: message needs the request-id wrapper; a stream's body chunks skip a coroutine each).
RAW_SEND_KEY = "pushsvc.raw_send"
#: The status of an answer the app started with RAW_SEND_KEY's `send` itself, giving it the
#: ``x-request-id`` header (REQUEST_ID_KEY) as the wrapper would (the fast door's publish
#: answers: one coroutine and one header list less per request).
STATUS_KEY = "pushsvc.status"
#: Probes and scrapes hit these every few seconds: their access lines are DEBUG.
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(items: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(item, strict=False) for item in items)


def _is_trusted(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def forwarded_client(peer: str, header: str | None, networks: tuple[Network, ...]) -> str:
    """The client address: `peer`, or the rightmost untrusted `X-Forwarded-For` hop."""
    if not header or not networks or not _is_trusted(peer, networks):
        return peer
    hops = [hop.strip() for hop in header.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, networks):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # garbage where an address should be: keep what we know
    return hops[0] if hops else peer


def _header(scope: Scope, name: bytes) -> str | None:
    values = [value for key, value in scope.get("headers", ()) if key == name]
    if not values:
        return None
    return b",".join(values).decode("latin-1")


class RequestContext:
    """Wraps an ASGI app; see the module docstring."""

    def __init__(self, app: ASGIApp, trusted_proxies: tuple[str, ...] = ()) -> None:
        self.app = app
        self.networks = parse_networks(trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        if client and self.networks:
            real = forwarded_client(client[0], _header(scope, b"x-forwarded-for"), self.networks)
            if real != client[0]:
                scope["client"] = (real, 0)
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if incoming and _REQUEST_ID.fullmatch(incoming) else token_hex32()
        scope[REQUEST_ID_KEY] = request_id
        scope[RAW_SEND_KEY] = send
        token = request_id_var.set(request_id)
        started = time.monotonic()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)
            self._log(scope, request_id, status or scope.get(STATUS_KEY, 0), time.monotonic() - started)
            # Hypercorn's stream holds the scope, and its `send` holds the stream: a cycle that
            # would keep the stream, the scope and the session alive until a full collection.
            scope.pop(RAW_SEND_KEY, None)
            scope.pop(STREAM_KEY, None)

    @staticmethod
    def _log(scope: Scope, request_id: str, status: int, seconds: float) -> None:
        client = (scope.get("client") or ("-",))[0]
        session = scope.get(STREAM_KEY)
        if session is not None:
            access_log.info(
                "stream ended",
                extra={
                    "request_id": request_id, "client": client, "channels": ",".join(session.channels),
                    "duration_s": round(seconds, 3), "events": session.delivered, "reason": session.end_reason,
                },
            )
            return
        level = logging.DEBUG if scope.get("path") in QUIET_PATHS else logging.INFO
        if not access_log.isEnabledFor(level):
            return
        method, path = scope.get("method"), scope.get("path")
        handler = direct_handler(access_log, level)
        if handler is not None and handler.text:  # the same line, without logging's generic machinery
            handler.write_access(access_log, level, request_id, client, method, path, status, seconds)
            return
        duration_ms = round(seconds * 1000, 1)
        fields = {
            "request_id": request_id, "client": client, "method": method,
            "path": path, "status": status, "duration_ms": duration_ms,
        }
        if handler is not None:
            handler.write_fields(access_log, level, "request", fields)
            return
        access_log.log(level, "request", extra=fields)
