"""Subscribers authorised by a call to the app (PUSHSVC_AUTH_URL) against a real
`pushsvc serve` and a real small app server: what is sent to the app, allow / 401 / 403 /
a channel left out, fail closed when the app is slow, broken or down, the grant's ttl
ending the stream like a token's exp (resumed without loss), the cache, a presented JWT
deciding alone, and /history authorised the same way."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from tests.support import jwts
from tests.support.authapp import AuthApp
from tests.support.helpers import metric, publish
from tests.support.procs import free_port
from tests.support.sse_client import SSEClient

pytestmark = pytest.mark.e2e


@pytest.fixture
def auth_app() -> Iterator[AuthApp]:
    app = AuthApp().start()
    yield app
    app.stop()


def app_env(url: str, **extra: str) -> dict[str, str]:
    # No JWT key at all: private channels authorised by the app alone is a valid set-up.
    return {"PUSHSVC_PRIVATE_CHANNELS": "user:*", "PUSHSVC_AUTH_URL": url,
            "PUSHSVC_AUTH_TIMEOUT_SECONDS": "2", "PUSHSVC_RETRY_MS": "1000", **extra}


def session(user: str) -> dict[str, str]:
    return {"Cookie": f"theme=dark; session={user}", "X-Request-ID": f"req-{user}"}


async def test_allowed_stream_opens_and_the_app_gets_channels_id_cookie_request_id_and_address(
    service_factory, auth_app, http
):
    service = service_factory(app_env(auth_app.url))
    client = await SSEClient.open(service.port, ["user:42", "sse"], headers=session("42"), last_event_id="0.0")
    try:
        assert client.status == 200
        await client.wait_open()
        await publish(http, service, {"channel": "user:42", "data": "hi"})
        assert (await client.next_event()).data == "hi"
    finally:
        await client.close()
    [call] = auth_app.calls
    assert call["path"] == "/pushsvc/authorize"
    assert call["body"] == {"channels": ["user:42"], "last_event_id": "0.0"}  # private ones only
    assert call["headers"]["Cookie"] == "theme=dark; session=42"
    assert call["headers"]["X-Request-ID"] == "req-42"
    assert call["headers"]["X-Forwarded-For"] == "127.0.0.1"
    assert await metric(http, service, "pushsvc_auth_calls_total") == 1


@pytest.mark.parametrize("headers,channels,status,error", [
    ({}, ["user:42"], 401, "unauthorized"),                        # the app answers 401
    (session("banned"), ["user:42"], 403, "forbidden"),           # the app answers 403
    (session("42"), ["user:42", "user:7"], 403, "forbidden"),     # user:7 left out by the app
])
async def test_the_apps_refusal_is_the_streams_json_401_or_403(
    service_factory, auth_app, http, headers, channels, status, error
):
    service = service_factory(app_env(auth_app.url))
    client = await SSEClient.open(service.port, channels, headers=headers)
    try:
        assert client.status == status
        assert json.loads(client.body)["error"] == error
    finally:
        await client.close()
    assert await metric(http, service, "pushsvc_auth_denials_total") == 1


@pytest.mark.parametrize("mode", ["slow", "error", "garbage", "down"])
async def test_an_app_that_cannot_decide_fails_closed_with_a_retry_and_the_end(
    service_factory, auth_app, http, mode
):
    url = f"http://127.0.0.1:{free_port()}/nobody-listens" if mode == "down" else auth_app.url
    auth_app.mode = mode
    service = service_factory(app_env(url))
    client = await SSEClient.open(service.port, ["user:42"], headers=session("42"))
    try:
        assert client.status == 200
        await client.until_end(timeout=8)  # ends by itself, after the callback's timeout at most
        assert b"retry: " in client.raw
        assert client.last_event_id == ""  # never opened: no position, no event
    finally:
        await client.close()
    assert await metric(http, service, "pushsvc_auth_errors_total") == 1
    assert await metric(http, service, "pushsvc_streams_opened_total") == 0
    history = await http.get(service.base + "/history", params={"channel": "user:42"}, headers=session("42"))
    assert history.status_code == 503 and history.json()["error"] == "unavailable"
    assert "Retry-After" in history.headers


async def test_ttl_ends_the_stream_like_a_token_expiry_and_a_reconnect_resumes_without_loss(
    service_factory, auth_app, http, redis_url
):
    auth_app.ttl = 1.0
    service = service_factory(app_env(auth_app.url, PUSHSVC_REDIS_URL=redis_url))
    client = await SSEClient.open(service.port, ["user:42"], headers=session("42"))
    try:
        await client.wait_open()
        await publish(http, service, {"channel": "user:42", "data": "a"})
        assert (await client.next_event()).data == "a"
        rest = await client.until_end(timeout=6)
        assert [event.type for event in rest] == ["pushsvc.token_expired"]
        last_id = client.last_event_id
    finally:
        await client.close()
    await publish(http, service, {"channel": "user:42", "data": "b"})  # while disconnected
    again = await SSEClient.open(service.port, ["user:42"], headers=session("42"), last_event_id=last_id)
    try:
        assert (await again.next_event()).data == "b"
    finally:
        await again.close()
    assert [call["body"]["last_event_id"] for call in auth_app.calls] == [None, last_id]


@pytest.mark.parametrize("cache_seconds,expected_calls", [("0", 6), ("60", 2)])
async def test_the_cache_turns_a_reconnect_storm_into_one_call_per_user(
    service_factory, auth_app, http, cache_seconds, expected_calls
):
    service = service_factory(app_env(auth_app.url, PUSHSVC_AUTH_CACHE_SECONDS=cache_seconds))
    for _ in range(3):
        for user in ("1", "2"):
            client = await SSEClient.open(service.port, [f"user:{user}"], headers=session(user))
            try:
                await client.wait_open()
            finally:
                await client.close()
    assert auth_app.call_count() == expected_calls
    hits = await metric(http, service, "pushsvc_auth_cache_hits_total")
    assert hits == 6 - expected_calls
    # A cached "allowed" is per credentials: another user is still asked, and refused.
    other = await SSEClient.open(service.port, ["user:1"], headers=session("2"))
    try:
        assert other.status == 403
    finally:
        await other.close()


async def test_a_presented_jwt_decides_alone(service_factory, auth_app, http):
    service = service_factory(app_env(auth_app.url, PUSHSVC_JWT_SECRET=jwts.SECRET,
                                      PUSHSVC_JWT_AUDIENCE=jwts.AUDIENCE))
    allowed = await SSEClient.open(service.port, ["user:42"],
                                   headers={"Authorization": "Bearer " + jwts.hs256(["user:42"])})
    refused = await SSEClient.open(service.port, ["user:42"],
                                   headers={**session("42"), "Authorization": "Bearer " + jwts.hs256(["user:7"])})
    by_app = await SSEClient.open(service.port, ["user:42"], headers=session("42"))
    try:
        assert (allowed.status, refused.status, by_app.status) == (200, 403, 200)
    finally:
        for client in (allowed, refused, by_app):
            await client.close()
    assert auth_app.call_count() == 1  # only the stream without a JWT asked the app


async def test_history_of_a_private_channel_is_authorised_by_the_app(service_factory, auth_app, http):
    service = service_factory(app_env(auth_app.url))
    await publish(http, service, {"channel": "user:42", "type": "note", "data": {"n": 1}})
    url = service.base + "/history"
    allowed = await http.get(url, params={"channel": "user:42"}, headers=session("42"))
    assert allowed.status_code == 200, allowed.text
    assert [(e["type"], e["data"]) for e in allowed.json()["events"]] == [("note", {"n": 1})]
    assert (await http.get(url, params={"channel": "user:42"}, headers=session("7"))).status_code == 403
    assert (await http.get(url, params={"channel": "user:42"})).status_code == 401
    assert (await http.get(url, params={"channel": "sse"})).status_code == 200  # public: no call
    assert [call["body"]["channels"] for call in auth_app.calls] == [["user:42"]] * 3


async def test_concurrent_streams_each_get_a_decision(service_factory, auth_app, http):
    service = service_factory(app_env(auth_app.url))
    clients = await asyncio.gather(*[
        SSEClient.open(service.port, [f"user:{n}"], headers=session(str(n))) for n in range(20)])
    try:
        assert [c.status for c in clients] == [200] * 20
        for client in clients:
            await client.wait_open()  # opened, not refused for now
    finally:
        for client in clients:
            await client.close()
    assert sorted(call["body"]["channels"][0] for call in auth_app.calls) == sorted(f"user:{n}" for n in range(20))
