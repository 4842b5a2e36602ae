"""Private channels over real HTTP against a real `pushsvc serve` process: the status
matrix (public/private x credential x where the token travels), refused subscribers
never get events, token expiry closes a stream that a fresh token resumes without loss,
and no token reaches the logs."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import jwts
from tests.support.helpers import TOKEN, metric, publish
from tests.support.procs import ROOT, Service
from tests.support.sse_client import SSEClient

pytestmark = pytest.mark.e2e

SECURE_ENV = {
    "PUSHSVC_PUBLISH_TOKENS": TOKEN,
    "PUSHSVC_PRIVATE_CHANNELS": "user:*,team:*",
    "PUSHSVC_JWT_SECRET": jwts.SECRET,
    "PUSHSVC_JWT_AUDIENCE": jwts.AUDIENCE,
}


@pytest.fixture(scope="module")
def secure_service() -> Iterator[Service]:
    """One process for the whole matrix: each case is one request, so it stays fast."""
    service = Service(SECURE_ENV)
    try:
        yield service.start()
    finally:
        service.stop()


CREDENTIALS: dict[str, tuple[Callable[[], str | None], int]] = {
    "no token": (lambda: None, 401),
    "bad signature": (lambda: jwts.hs256(["user:*"], secret=jwts.OTHER_SECRET), 401),
    "expired": (lambda: jwts.hs256(["user:*"], ttl=-120), 401),
    "wrong audience": (lambda: jwts.hs256(["user:*"], aud="another-service"), 401),
    "allowed": (lambda: jwts.hs256(["user:*"]), 200),
    "forbidden pattern": (lambda: jwts.hs256(["team:*", "user:4"]), 403),
}


def carry(token: str | None, where: str) -> tuple[dict[str, str], dict[str, str]]:
    """(headers, query) that carry `token` in the header, the cookie or the query."""
    if token is None:
        return {}, {}
    if where == "header":
        return {"Authorization": f"Bearer {token}"}, {}
    if where == "cookie":
        return {"Cookie": f"theme=dark; pushsvc_token={token}"}, {}
    return {}, {"token": token}


@pytest.mark.parametrize("where", ["header", "cookie", "query"])
@pytest.mark.parametrize("credential", list(CREDENTIALS))
@pytest.mark.parametrize("channel,private", [("user:42", True), ("news", False)])
async def test_stream_status_matrix(secure_service, channel, private, credential, where):
    make, private_status = CREDENTIALS[credential]
    headers, query = carry(make(), where)
    client = await SSEClient.open(secure_service.port, [channel], headers=headers, query=query)
    try:
        expected = private_status if private else 200  # public streams never look at tokens
        assert client.status == expected
        if expected == 200:
            assert client.headers["content-type"].startswith("text/event-stream")
            await client.wait_open()
        else:
            assert client.headers["content-type"] == "application/json"
            body = json.loads(client.body)
            assert body["error"] == ("unauthorized" if expected == 401 else "forbidden")
            assert b"data:" not in client.raw and client.last_event_id == ""  # no stream byte ever
    finally:
        await client.close()


async def test_refused_subscribers_never_receive_an_event_of_the_channel(secure_service, http):
    port = secure_service.port
    allowed = await SSEClient.open(port, ["user:42"], headers={"Authorization": "Bearer " + jwts.hs256(["user:42"])})
    opened_before = await metric(http, secure_service, "pushsvc_streams_opened_total")
    other = jwts.hs256(["user:7"])
    near_misses = jwts.hs256(["user:42:*", "user:420", "user:4"])
    refused = [
        await SSEClient.open(port, ["user:42"], headers={"Authorization": f"Bearer {other}"}),
        await SSEClient.open(port, ["user:7", "user:42"], query={"token": other}),  # one bad: all refused
        await SSEClient.open(port, ["news", "user:42"]),
        await SSEClient.open(port, ["user:42"], headers={"Cookie": "pushsvc_token=" + near_misses}),
    ]
    try:
        assert [c.status for c in refused] == [403, 403, 401, 403]
        assert await metric(http, secure_service, "pushsvc_streams_opened_total") == opened_before
        await allowed.wait_open()
        response = await publish(http, secure_service, {"channel": "user:42", "type": "secret", "data": "for 42"})
        assert response.status_code == 202
        assert (await allowed.next_event()).data == "for 42"
        for client in refused:
            with pytest.raises(asyncio.TimeoutError):  # the connection carries nothing more
                await asyncio.wait_for(client.reader.read(1), 0.2)
            assert b"for 42" not in client.raw + client.body
    finally:
        for client in [allowed, *refused]:
            await client.close()


async def test_expired_token_closes_the_stream_with_the_event_and_a_new_token_resumes_without_loss(
    service_factory, redis_url, http
):
    service = service_factory({**SECURE_ENV, "PUSHSVC_REDIS_URL": redis_url, "PUSHSVC_JWT_LEEWAY_SECONDS": "0"})
    short = jwts.hs256(["user:42"], ttl=2)
    client = await SSEClient.open(service.port, ["user:42"], headers={"Authorization": f"Bearer {short}"})
    started = time.monotonic()
    try:
        await client.wait_open()
        assert (await publish(http, service, {"channel": "user:42", "data": "a"})).status_code == 202
        assert (await client.next_event()).data == "a"
        rest = await client.until_end(timeout=6)  # the server ends the response by itself
        assert time.monotonic() - started < 5
        assert [e.type for e in rest] == ["pushsvc.token_expired"]
        assert json.loads(rest[0].data) == {"reason": "token_expired"}
        last_id = client.last_event_id
        assert last_id  # the expiry event carries no id: the position stays at "a"
    finally:
        await client.close()

    # Published while the page fetches a fresh token: must not be lost.
    assert (await publish(http, service, {"channel": "user:42", "data": "b"})).status_code == 202
    fresh = jwts.hs256(["user:42"])
    again = await SSEClient.open(service.port, ["user:42"], last_event_id=last_id, query={"token": fresh})
    try:
        assert again.status == 200
        assert (await again.next_event()).data == "b"
        assert (await publish(http, service, {"channel": "user:42", "data": "c"})).status_code == 202
        assert (await again.next_event()).data == "c"
    finally:
        await again.close()

    # The same expired token is refused outright on reconnect.
    stale = await SSEClient.open(service.port, ["user:42"], headers={"Authorization": f"Bearer {short}"})
    await stale.close()
    assert stale.status == 401


class QueryLoggingService(Service):
    """`pushsvc serve` with an access log format that prints the query string (%(R)s)."""

    def __init__(self, env: dict[str, str], config: Path) -> None:
        super().__init__(env)
        self.config = config

    def command(self) -> list[str]:
        return [*super().command()[:-1], str(self.config)]


async def test_tokens_and_payloads_never_reach_the_logs(tmp_path):
    toml = (ROOT / "hypercorn.toml").read_text()
    # Hypercorn's own access log (off in hypercorn.toml), with the query string in it.
    toml += """\naccesslog = "-"\naccess_log_format = '%(h)s "%(R)s" %(s)s'\n"""
    (tmp_path / "hypercorn.toml").write_text(toml)
    service = QueryLoggingService(SECURE_ENV, tmp_path / "hypercorn.toml").start()
    try:
        token = jwts.hs256(["user:*"], publish=["user:*"])
        client = await SSEClient.open(service.port, ["user:1"], query={"token": token})
        await client.close()
        bad = await SSEClient.open(service.port, ["user:1"], query={"token": token[:-4] + "AAAA"})
        await bad.close()
        async with httpx.AsyncClient(timeout=5) as http:
            response = await http.post(service.base + "/publish?token=" + token,
                                       json={"channel": "user:1", "data": "payload-marker-xyz"},
                                       headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 202
    finally:
        service.stop()
    log = service.log()
    assert "/stream?channel=user%3A1&token=[redacted]" in log  # the access log shows the query...
    assert "/publish?token=[redacted]" in log
    signature = token.rsplit(".", 1)[1]
    for secret in (signature, jwts.SECRET, "payload-marker-xyz", TOKEN):
        assert secret not in log
