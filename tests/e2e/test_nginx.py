"""Behind a real nginx running deploy/nginx.conf: two pushsvc instances as upstreams, one
Redis; events pass at once, idle streams survive nginx's read timeout thanks to heartbeats,
and pushsvc logs the real client address (X-Forwarded-For believed only from nginx)."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.helpers import TOKEN
from tests.support.nginx import Nginx
from tests.support.procs import RedisServer, Service, wait_until
from tests.support.sse_client import SSEClient

pytestmark = [pytest.mark.e2e, pytest.mark.nginx]

AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Stack:
    def __init__(self, nginx: Nginx, services: list[Service]) -> None:
        self.nginx = nginx
        self.services = services

    def logs(self) -> str:
        return "".join(service.log() for service in self.services)


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer) -> Iterator[Stack]:
    env = {
        "PUSHSVC_REDIS_URL": redis_server.url,
        "PUSHSVC_PUBLISH_TOKENS": TOKEN,
        "PUSHSVC_KEEPALIVE_SECONDS": "1",
        "PUSHSVC_TRUSTED_PROXIES": "127.0.0.1",
    }
    services = [Service(env) for _ in range(2)]
    nginx = None
    try:
        for service in services:
            service.start()
        nginx = Nginx([s.port for s in services], stream_read_timeout="3s").start()
        yield Stack(nginx, services)
    finally:
        if nginx is not None:
            nginx.stop()
        for service in services:
            service.stop()


async def open_stream(port: int, channel: str, source_ip: str = "127.0.0.1",
                      headers: dict[str, str] | None = None) -> SSEClient:
    """An SSE client whose TCP connection comes from `source_ip` (any 127/8 address)."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, local_addr=(source_ip, 0)), 5)
    client = SSEClient(reader, writer)
    lines = [f"GET /stream?channel={channel} HTTP/1.1", f"Host: 127.0.0.1:{port}",
             "Accept: text/event-stream", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()
    await asyncio.wait_for(client._read_head(), 5)
    return client


async def test_events_pass_through_nginx_within_100ms(stack):
    client = await open_stream(stack.nginx.port, "nginx-latency")
    latencies = []
    try:
        assert client.status == 200
        await client.wait_open()
        async with httpx.AsyncClient(base_url=stack.nginx.base, headers=AUTH, timeout=5) as http:
            for n in range(20):
                started = time.perf_counter()
                response = await http.post("/publish", json={"channel": "nginx-latency", "data": {"n": n}})
                assert response.status_code == 202, response.text
                event = await client.next_event(timeout=2)
                latencies.append(time.perf_counter() - started)
                assert event.data == f'{{"n":{n}}}'
                assert event.last_event_id == response.json()["id"]
    finally:
        await client.close()
    print(f"\nthrough nginx, publish -> event: median {statistics.median(latencies) * 1000:.1f} ms, "
          f"max {max(latencies) * 1000:.1f} ms")
    assert max(latencies) < 0.1, latencies


async def test_idle_stream_survives_nginx_read_timeout_thanks_to_heartbeats(stack):
    # nginx cuts an upstream silent for 3 s; pushsvc pings every 1 s. Stay idle 10 s.
    client = await open_stream(stack.nginx.port, "nginx-idle")
    try:
        await client.wait_open()
        await _pump_for(client, 10)
        assert not client.ended
        assert client.parser.comments.count("ping") >= 7
        async with httpx.AsyncClient(base_url=stack.nginx.base, headers=AUTH, timeout=5) as http:
            response = await http.post("/publish", json={"channel": "nginx-idle", "data": "still here"})
            assert response.status_code == 202
        event = await client.next_event(timeout=2)
        assert event.data == "still here"
    finally:
        await client.close()


async def _pump_for(client: SSEClient, seconds: float) -> None:
    """Read whatever arrives for `seconds` (the stream must stay open meanwhile)."""
    try:
        async with asyncio.timeout(max(seconds, 0.01)):
            while not client.ended:
                await client._pump()
    except TimeoutError:
        return
    raise AssertionError(f"the stream ended after {client.raw[-200:]!r}")


async def test_logs_show_the_real_client_address_forwarded_by_nginx_only(stack):
    # Through nginx from 127.0.0.5, with a forged X-Forwarded-For that nginx appends to.
    via_proxy = await open_stream(stack.nginx.port, "nginx-ip", source_ip="127.0.0.5",
                                  headers={"X-Forwarded-For": "6.6.6.6", "X-Request-ID": "via-nginx-1"})
    # Straight to pushsvc from 127.0.0.7 (not a trusted proxy), claiming to be 9.9.9.9.
    direct = await open_stream(stack.services[0].port, "nginx-ip", source_ip="127.0.0.7",
                               headers={"X-Forwarded-For": "9.9.9.9", "X-Request-ID": "direct-1"})
    try:
        await via_proxy.wait_open()
        await direct.wait_open()
        assert via_proxy.headers["x-request-id"] == "via-nginx-1"
    finally:
        await via_proxy.close()
        await direct.close()

    def access_line(request_id: str) -> str | None:
        return next((line for line in stack.logs().splitlines()
                     if "stream ended" in line and f"request_id={request_id}" in line), None)

    line = await asyncio.to_thread(wait_until, lambda: access_line("via-nginx-1"), 5, what="access line")
    assert "client=127.0.0.5 " in line, line
    line = await asyncio.to_thread(wait_until, lambda: access_line("direct-1"), 5, what="access line")
    assert "client=127.0.0.7 " in line, line
    assert "6.6.6.6" not in stack.logs() and "9.9.9.9" not in stack.logs()
