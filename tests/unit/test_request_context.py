"""The ASGI wrapper: X-Forwarded-For believed only from trusted proxies, request ids."""

from __future__ import annotations

from typing import Any

import pytest

from pushsvc.asgi import RequestContext, forwarded_client, parse_networks
from pushsvc.config import ConfigError, Settings

PROXIES = parse_networks(("10.0.0.0/8", "127.0.0.1"))


@pytest.mark.parametrize("peer,header,expected", [
    ("127.0.0.1", "203.0.113.9", "203.0.113.9"),                  # nginx in front
    ("127.0.0.1", "6.6.6.6, 203.0.113.9", "203.0.113.9"),         # forged left part ignored
    ("127.0.0.1", "203.0.113.9, 10.1.2.3", "203.0.113.9"),        # two trusted hops
    ("198.51.100.4", "203.0.113.9", "198.51.100.4"),              # untrusted peer: header ignored
    ("127.0.0.1", None, "127.0.0.1"),
    ("127.0.0.1", "not-an-ip", "127.0.0.1"),
    ("127.0.0.1", "2001:db8::1", "2001:db8::1"),
])
def test_forwarded_client(peer, header, expected):
    assert forwarded_client(peer, header, PROXIES) == expected


def test_no_trusted_proxies_means_the_header_is_never_believed():
    assert forwarded_client("127.0.0.1", "203.0.113.9", ()) == "127.0.0.1"


def test_trusted_proxies_setting_is_validated():
    assert Settings.from_env({"PUSHSVC_TRUSTED_PROXIES": "10.0.0.0/8, ::1"}).trusted_proxies == ("10.0.0.0/8", "::1")
    with pytest.raises(ConfigError, match="PUSHSVC_TRUSTED_PROXIES"):
        Settings.from_env({"PUSHSVC_TRUSTED_PROXIES": "10.0.0.300"})


async def test_wrapper_rewrites_client_and_echoes_request_id_without_touching_the_body():
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen["client"] = scope["client"]
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-request-id", b"app")]})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    wrapped = RequestContext(app, ("127.0.0.1",))
    scope = {"type": "http", "method": "GET", "path": "/", "client": ("127.0.0.1", 5000),
             "headers": [(b"x-forwarded-for", b"203.0.113.9"), (b"x-request-id", b"abc-1")]}
    await wrapped(scope, None, send)
    assert seen["client"] == ("203.0.113.9", 0) and scope["client"] == ("203.0.113.9", 0)
    assert sent[0]["headers"] == [(b"x-request-id", b"abc-1")]
    assert [m.get("body") for m in sent[1:]] == [b"part", b""]  # passed through chunk by chunk


async def test_memory_broker_counts_local_subscribers():
    from pushsvc.broker.memory import MemoryBroker

    assert await MemoryBroker().count_subscribers("news", 3) == 3
