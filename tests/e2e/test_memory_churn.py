"""Flat memory under connection churn: thousands of streams opened and closed against a
real `pushsvc serve` process (Redis broker), through both doors -- the pure-ASGI fast path
(public channels) and the Quart route (a private channel with a JWT) -- leave nothing
behind once the process's scheduled full collection has run, and a closed stream leaves
none of pushsvc's objects in reference cycles (reference counting frees it at once).

The process is observed through ``/debug/gc`` (``PUSHSVC_DEBUG_GC``) and ``/metrics``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support import jwts
from tests.support.helpers import publish
from tests.support.procs import Service

pytestmark = pytest.mark.e2e

PUBLIC = "churn"
PRIVATE = "user:churn"


@pytest.fixture
def churned(service_factory: Any, redis_url: str) -> Iterator[Service]:
    yield service_factory({
        "PUSHSVC_REDIS_URL": redis_url,
        "PUSHSVC_DEBUG_GC": "true",
        "PUSHSVC_PRIVATE_CHANNELS": "user:*",
        "PUSHSVC_JWT_SECRET": jwts.SECRET,
        "PUSHSVC_JWT_AUDIENCE": jwts.AUDIENCE,
    })


async def open_and_close(port: int, target: str) -> None:
    """One stream: the request, its headers and opening chunk (``retry:``), then close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: churn\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        await reader.readuntil(b"retry:")
    finally:
        writer.close()
        await writer.wait_closed()


async def churn(service: Service, fast: int, quart: int, parallel: int = 40) -> None:
    token = jwts.hs256([PRIVATE])
    targets = [f"/stream?channel={PUBLIC}"] * fast + [f"/stream?channel={PRIVATE}&token={token}"] * quart
    queue = iter(targets)

    async def worker() -> None:
        for target in queue:
            await open_and_close(service.port, target)

    await asyncio.wait_for(asyncio.gather(*[worker() for _ in range(parallel)]), 60)


async def debug_gc(http: httpx.AsyncClient, service: Service, method: str = "GET", **params: str) -> dict[str, Any]:
    response = await http.request(method, service.base + "/debug/gc", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def until_no_open_streams(http: httpx.AsyncClient, service: Service) -> None:
    async def loop() -> None:
        while "pushsvc_open_streams 0.0" not in (await http.get(service.base + "/metrics")).text:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(loop(), 10)


#: Packages whose objects a closed stream must not leave behind (live or in cycles).
CONNECTION_PACKAGES = ("pushsvc", "hypercorn", "h11", "asyncio", "uvloop", "_asyncio", "socket")


def connection_objects(state: dict[str, Any]) -> int:
    return sum(state["by_package"].get(package, 0) for package in CONNECTION_PACKAGES)


async def test_churned_streams_leave_no_connection_objects_behind(churned, http):
    """The leak of issue 18: every closed connection left ~35 objects (3 KB) in reference
    cycles that the served process's collector settings never freed.  Now the live
    pushsvc/Hypercorn/h11/asyncio objects return to their baseline once the streams are
    closed, without any collection being forced."""
    await churn(churned, fast=300, quart=100)  # warm caches, pools, interned strings
    await until_no_open_streams(http, churned)
    await debug_gc(http, churned, "POST")  # one full collection: the floor
    baseline = await debug_gc(http, churned)
    streams = 2500
    await churn(churned, fast=2000, quart=500)
    await until_no_open_streams(http, churned)

    async def settle() -> dict[str, Any]:
        while True:
            state = await debug_gc(http, churned)
            # A few connections may still be open (the client's keep-alive ones, ~35 objects
            # each); the leak left ~35 per closed stream: 87,500 for these 2,500.
            if connection_objects(state) <= connection_objects(baseline) + 150:
                return state
            await asyncio.sleep(0.2)

    # The residue (werkzeug's closures of the Quart requests) is left to the full collections
    # that the ticker schedules once enough streams closed: one ran.
    async def scheduled() -> None:
        while "pushsvc_gc_scheduled_full_collections_total 0.0" in (await http.get(churned.base + "/metrics")).text:
            await asyncio.sleep(0.2)

    await asyncio.wait_for(scheduled(), 5)
    try:
        await asyncio.wait_for(settle(), 10)
    except TimeoutError:
        state = await debug_gc(http, churned)
        left = connection_objects(state) - connection_objects(baseline)
        raise AssertionError(
            f"{streams} closed streams left {left} connection objects ({left / streams:.1f} per stream); "
            f"by package before {baseline['by_package']}, after {state['by_package']}"
        ) from None


async def test_a_closed_stream_leaves_nothing_of_its_connection_in_reference_cycles(churned, http):
    """What the collector finds after streams closed is at most werkzeug's recursive
    ``_match`` closure of each Quart request: the connection (Hypercorn's TCPServer and
    HTTPStream, h11, asyncio), the request's scope, and pushsvc's session and subscriber
    were all freed by reference counting when the stream ended."""
    await churn(churned, fast=50, quart=20)
    # The first publish loads the Lua script (a one-off NoScriptError whose traceback is a cycle).
    assert (await publish(http, churned, {"channel": PUBLIC, "data": "warm"})).status_code == 202
    await until_no_open_streams(http, churned)
    await debug_gc(http, churned, "POST", save="1")
    fast, quart = 200, 100
    try:
        await churn(churned, fast=fast, quart=quart)
        for n in range(3):  # streams that received frames
            assert (await publish(http, churned, {"channel": PUBLIC, "data": n})).status_code == 202
        await churn(churned, fast=20, quart=0)
        await until_no_open_streams(http, churned)
    finally:
        found = (await debug_gc(http, churned, "POST", save="0"))["garbage"]
    # The collector kept what it found (so a connection's objects would be here)...
    assert found.get("werkzeug.routing.matcher.StateMachineMatcher.match.<locals>._match", 0) or \
        found.get("builtins.function", 0) >= quart, found
    # ... and none of it is a connection's or pushsvc's.
    leftovers = {name: count for name, count in found.items() if name.startswith(CONNECTION_PACKAGES)}
    assert leftovers == {}, f"left in reference cycles by {fast + quart} closed streams: {found}"
    assert sum(found.values()) <= 12 * quart, found  # werkzeug's closure: ~9 objects a request
