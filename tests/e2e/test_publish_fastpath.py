"""`POST /publish` through the pure-ASGI path (`pushsvc.fastpath`) answers exactly as the
Quart route: the same request to a real `pushsvc serve` and to the Quart test client of an
app with the same settings and its fast door closed gets the same status, body and headers -- a success, 400, 401,
403 (a scoped JWT), 413, 415 and 503.  In-process, a counter in front of Quart proves that
plain requests never reach it and that the others (Origin, chunked, oversized) do."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from werkzeug.exceptions import RequestTimeout

from pushsvc.app import create_app
from pushsvc.config import Settings
from pushsvc.errors import from_http_exception
from pushsvc.fastpath import FastPath
from pushsvc.server import asgi_app
from tests.support import jwts
from tests.support.helpers import TOKEN
from tests.support.procs import RedisServer, Service, free_port

pytestmark = pytest.mark.e2e

LIMITS = {"max_body_bytes": 4096, "max_event_bytes": 1024, "max_batch": 5}
ENV = {
    "PUSHSVC_PUBLISH_TOKENS": TOKEN,
    "PUSHSVC_JWT_SECRET": jwts.SECRET,
    "PUSHSVC_JWT_AUDIENCE": jwts.AUDIENCE,
    **{f"PUSHSVC_{key.upper()}": str(value) for key, value in LIMITS.items()},
}
KEY_HEADERS = ("content-type", "content-length", "www-authenticate", "retry-after", "allow")
ID = re.compile(r'"[a-z0-9]{8}-\d+"')


def settings(redis_url: str) -> Settings:
    return Settings(redis_url=redis_url, publish_tokens=(TOKEN,), jwt_secret=jwts.SECRET,
                    jwt_audience=jwts.AUDIENCE, **LIMITS)


def scoped() -> str:
    return jwts.hs256(publish=["orders:*"])


def cases() -> dict[str, tuple[bytes, dict[str, str]]]:
    """name -> (body, headers); {channel} in a body is a channel new to each target."""
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    return {
        "202 single": (b'{"channel": "{channel}", "type": "t", "data": {"a": 1}}', auth),
        "202 batch": (b'[{"channel": ["{channel}", "{channel}x"], "data": 1}, {"channel": "{channel}", "data": 2}]',
                      auth),
        "202 scoped JWT": (b'{"channel": "orders:{channel}", "data": "\xc3\xa9"}',
                           {"Authorization": f"Bearer {scoped()}", "Content-Type": "application/json"}),
        "202 media type with parameters": (b'{"channel": "{channel}", "data": 1}',
                                           {**auth, "Content-Type": "Application/JSON; charset=utf-8"}),
        "400 malformed JSON": (b'{"data": ', auth),
        "400 empty body": (b"", auth),
        "400 invalid UTF-8": (b'{"data": "\xff"}', auth),
        "400 bad channel": (b'{"channel": "a b", "data": 1}', auth),
        "400 unknown field": (b'[{"data": 1}, {"data": 1, "colour": "red"}]', auth),
        "400 reserved type": (b'{"data": 1, "type": "pushsvc.reset"}', auth),
        "400 UTF-16 body": ('{"data": 1}'.encode("utf-16"), auth),
        "400 idempotency header and field": (b'{"data": 1, "idempotency_key": "a"}', {**auth, "Idempotency-Key": "b"}),
        "401 no credential": (b'{"data": 1}', {"Content-Type": "application/json"}),
        "401 wrong token": (b'{"data": 1}', {**auth, "Authorization": "Bearer nope"}),
        "401 expired JWT": (b'{"data": 1}', {**auth, "Authorization": f"Bearer {jwts.hs256(publish=['*'], ttl=-120)}"}),
        "403 scoped JWT": (b'{"channel": "news", "data": 1}', {**auth, "Authorization": f"Bearer {scoped()}"}),
        "403 scoped JWT, batch": (b'[{"channel": "orders:1", "data": 1}, {"channel": ["orders:2", "x"], "data": 2}]',
                                  {**auth, "Authorization": f"Bearer {scoped()}"}),
        "413 batch too large": (b"[" + b",".join([b'{"data": 1}'] * 6) + b"]", auth),
        "413 event too large": (b'{"data": "' + b"x" * 2000 + b'"}', auth),
        "413 body too large (Quart)": (b'{"data": "' + b"x" * 5000 + b'"}', auth),
        "415 text/plain": (b'{"data": 1}', {**auth, "Content-Type": "text/plain"}),
        "415 no content type": (b'{"data": 1}', {"Authorization": f"Bearer {TOKEN}"}),
    }


def materialise(body: bytes, channel: str | None = None) -> bytes:
    return body.replace(b"{channel}", (channel or f"fp-{uuid.uuid4().hex[:12]}").encode())


def answer(status: int, headers: Any, body: bytes) -> dict[str, Any]:
    """What a client can see, with the event ids (random epochs) replaced."""
    text = ID.sub('"ID"', body.decode())
    return {"status": status, "body": text, "json": json.loads(text),
            **{name: headers.get(name) for name in KEY_HEADERS}}


@pytest.fixture(scope="module")
def served(redis_server: RedisServer) -> Iterator[Service]:
    service = Service({**ENV, "PUSHSVC_REDIS_URL": redis_server.url}).start()
    yield service
    assert service.stop() == 0
    assert "Traceback" not in service.log()


@pytest.fixture
async def quart_client(redis_server: RedisServer) -> AsyncIterator[Any]:
    app = create_app(settings(redis_server.url))
    app.extensions["pushsvc.fastpath"].enabled = False  # create_app mounts the fast door: close it
    async with app.test_app() as test_app:
        yield test_app.test_client()


@pytest.mark.parametrize("name", list(cases()))
async def test_served_answers_exactly_as_the_quart_route(name, served, quart_client):
    body, headers = cases()[name]
    channel = f"fp-{uuid.uuid4().hex[:12]}"  # ids: <epoch>-1, then <epoch>-2: the same length
    async with httpx.AsyncClient(timeout=10) as http:
        fast = await http.post(served.base + "/publish", content=materialise(body, channel), headers=headers)
    fast_answer = answer(fast.status_code, fast.headers, fast.content)
    routed = await quart_client.post("/publish", data=materialise(body, channel), headers=headers)
    routed_answer = answer(routed.status_code, routed.headers, await routed.get_data())
    assert fast_answer == routed_answer
    assert fast_answer["status"] == int(name.split()[0])
    assert fast.headers["x-request-id"]


async def test_an_idempotent_replay_and_a_reused_key_answer_as_the_quart_route(served, quart_client):
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    answers = {}
    channel = f"fp-{uuid.uuid4().hex[:12]}"  # one channel, a key per door: ids differ only in value
    for door in ("fast", "routed"):
        key = uuid.uuid4().hex
        body = materialise(b'[{"channel": "{channel}", "data": 1}, {"channel": "{channel}", "data": 2}]', channel)
        headers = {**auth, "Idempotency-Key": key}
        for attempt in ("first", "replay", "reused"):
            sent = body if attempt != "reused" else body.replace(b'"data": 2', b'"data": 3')
            if door == "fast":
                async with httpx.AsyncClient(timeout=10) as http:
                    got = await http.post(served.base + "/publish", content=sent, headers=headers)
                answers[door, attempt] = answer(got.status_code, got.headers, got.content) | {
                    "replayed": got.headers.get("idempotent-replayed")}
            else:
                routed = await quart_client.post("/publish", data=sent, headers=headers)
                answers[door, attempt] = answer(routed.status_code, routed.headers, await routed.get_data()) | {
                    "replayed": routed.headers.get("Idempotent-Replayed")}
    for attempt in ("first", "replay", "reused"):
        assert answers["fast", attempt] == answers["routed", attempt]
    assert answers["fast", "replay"]["replayed"] == "true" and answers["fast", "first"]["replayed"] is None
    assert answers["fast", "reused"]["status"] == 422


async def test_broker_down_is_the_same_503(service_factory):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    service = service_factory({**ENV, "PUSHSVC_REDIS_URL": dead})
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(timeout=10) as http:
        fast = await http.post(service.base + "/publish", content=b'{"data": 1}', headers=headers)
        # The same process, through Quart (an Origin header keeps the fast path out).
        routed = await http.post(service.base + "/publish", content=b'{"data": 1}',
                                 headers={**headers, "Origin": "https://example.test"})
    assert fast.status_code == 503
    assert answer(503, fast.headers, fast.content) == answer(503, routed.headers, routed.content)
    assert fast.headers["retry-after"] == "1"
    assert fast.json()["error"] == "broker_unavailable"
    # and the Quart test client (another event loop: the connect error's wording may differ)
    app = create_app(settings(dead))
    app.extensions["pushsvc.fastpath"].enabled = False
    async with app.test_app() as test_app:
        quart = await test_app.test_client().post("/publish", data=b'{"data": 1}', headers=headers)
        quart_answer = answer(quart.status_code, quart.headers, await quart.get_data())
    fast_answer = answer(503, fast.headers, fast.content)
    for key in ("body", "json", "content-length"):
        fast_answer.pop(key), quart_answer.pop(key)
    assert fast_answer == quart_answer


# -- which path answered ------------------------------------------------------------------


class CountingInner:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.paths: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.paths.append(scope["path"])
        await self.inner(scope, receive, send)


@pytest.fixture
async def counted(redis_server: RedisServer) -> AsyncIterator[tuple[httpx.AsyncClient, CountingInner, FastPath]]:
    """The app exactly as `pushsvc serve` serves it, with a counter between the fast path and Quart."""
    app = create_app(settings(redis_server.url))
    served_app = asgi_app(app)
    fast = app.asgi_app.app
    assert isinstance(fast, FastPath)
    counter = fast.inner = CountingInner(fast.inner)
    async with app.test_app():
        transport = httpx.ASGITransport(app=served_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=10) as http:
            yield http, counter, fast


async def test_plain_publishes_never_reach_quart(counted):
    http, counter, _ = counted
    for name, (body, headers) in cases().items():
        if "Quart" in name:
            continue
        response = await http.post("/publish", content=materialise(body), headers=headers)
        assert response.status_code == int(name.split()[0]), name
    assert counter.paths == []


async def test_everything_else_goes_to_quart(counted):
    http, counter, _ = counted
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"data": '
        yield b"1}"

    assert (await http.post("/publish", content=b'{"data": 1}', headers={**auth, "Origin": "https://a.test"})
            ).status_code == 202
    assert (await http.post("/publish", content=chunks(), headers=auth)).status_code == 202
    assert (await http.post("/publish", content=b'{"data": "' + b"x" * 5000 + b'"}', headers=auth)
            ).status_code == 413
    assert (await http.get("/publish")).status_code == 405
    assert (await http.post("/publish/", content=b"{}", headers=auth)).status_code == 404
    assert counter.paths == ["/publish"] * 4 + ["/publish/"]


# -- failures inside the fast path ----------------------------------------------------------


async def test_an_unexpected_exception_is_the_logged_json_500_of_the_quart_route(counted, caplog):
    http, counter, fast_path = counted
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

    async def broken(events: Any, idempotency: Any = None) -> Any:
        raise RuntimeError("boom")

    fast_path.rt.broker.publish = broken
    fast = await http.post("/publish", content=b'{"data": 1}', headers=auth)
    routed = await http.post("/publish", content=b'{"data": 1}', headers={**auth, "Origin": "https://a.test"})
    assert counter.paths == ["/publish"]  # only the second reached Quart
    assert fast.status_code == 500
    assert answer(500, fast.headers, fast.content) == answer(500, routed.headers, routed.content)
    assert fast.json() == {"error": "internal_error", "detail": "an unexpected error occurred"}
    logged = [r for r in caplog.records if r.getMessage() == "unexpected error" and r.exc_info]
    assert len(logged) == 2 and all("boom" in str(r.exc_info[1]) for r in logged)


def _scope(body_length: int) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": "/publish", "query_string": b"", "http_version": "1.1",
            "headers": [(b"authorization", f"Bearer {TOKEN}".encode()), (b"content-type", b"application/json"),
                        (b"content-length", str(body_length).encode())]}


async def test_a_client_gone_mid_body_gets_nothing_and_a_slow_body_gets_quarts_408(redis_server):
    app = create_app(settings(redis_server.url))
    asgi_app(app)
    fast = app.asgi_app.app
    assert isinstance(fast, FastPath)
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async with app.test_app():
        messages = iter([{"type": "http.request", "body": b'{"data"', "more_body": True}, {"type": "http.disconnect"}])

        async def receive() -> Any:
            return next(messages)

        await fast(_scope(11), receive, send)
        assert sent == []

        fast.body_timeout = 0.05

        async def never() -> Any:
            await asyncio.Event().wait()

        await fast(_scope(11), never, send)
    start, body = sent
    quart = from_http_exception(RequestTimeout())  # what app.py answers when Quart's body read times out
    assert start["status"] == quart.status == 408
    assert json.loads(body["body"]) == quart.body() and quart.code == "request_timeout"
    assert body["more_body"] is False


async def test_a_body_already_queued_is_taken_without_waiting_and_a_partial_one_keeps_its_deadline(redis_server):
    """Hypercorn's ``receive`` is its queue's ``get``: a body that came with the headers is
    taken at once (no deadline registered), in one message or as a part and its end; the
    rest of a body whose first part is queued is still read under the body deadline (408)
    and joined to that part."""
    app = create_app(settings(redis_server.url))
    asgi_app(app)
    fast = app.asgi_app.app
    assert isinstance(fast, FastPath)
    body = b'{"channel": "queued", "data": 1}'
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async with app.test_app():
        fast.body_timeout = 0.05
        whole: asyncio.Queue[Any] = asyncio.Queue()
        whole.put_nowait({"type": "http.request", "body": body, "more_body": False})
        await asyncio.wait_for(fast(_scope(len(body)), whole.get, send), 10)
        assert sent[0]["status"] == 202 and fast._deadlines is None  # no read waited
        assert whole.empty()

        # As Hypercorn queues a body that came with its headers: the part, then its end.
        parts: asyncio.Queue[Any] = asyncio.Queue()
        parts.put_nowait({"type": "http.request", "body": body, "more_body": True})
        parts.put_nowait({"type": "http.request", "body": b"", "more_body": False})
        await asyncio.wait_for(fast(_scope(len(body)), parts.get, send), 10)
        assert sent[2]["status"] == 202 and b'"id"' in sent[3]["body"]
        assert fast._deadlines is None and parts.empty()

        split: asyncio.Queue[Any] = asyncio.Queue()
        split.put_nowait({"type": "http.request", "body": body[:10], "more_body": True})
        asyncio.get_running_loop().call_soon(
            split.put_nowait, {"type": "http.request", "body": body[10:], "more_body": False})
        await asyncio.wait_for(fast(_scope(len(body)), split.get, send), 10)
        assert sent[4]["status"] == 202 and b'"id"' in sent[5]["body"]  # both parts, joined

        stalled: asyncio.Queue[Any] = asyncio.Queue()
        stalled.put_nowait({"type": "http.request", "body": body[:10], "more_body": True})
        await asyncio.wait_for(fast(_scope(len(body)), stalled.get, send), 10)
        assert sent[6]["status"] == 408
