"""examples/flask_app run for real behind pushsvc: its login session authorises the
`user:<id>` channels through PUSHSVC_AUTH_URL and its answers, published with
`pushsvc.publisher`, reach only their user's stream."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from tests.support.procs import ROOT, free_port, wait_until
from tests.support.sse_client import SSEClient

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


@pytest.fixture
def flask_app(redis_url: str, tmp_path) -> Iterator[str]:
    port = free_port()
    log = open(tmp_path / "flask.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "examples/flask_app/app.py", "run", "--host", "127.0.0.1",
         "--port", str(port)],
        cwd=ROOT, env={"PATH": "/usr/bin:/bin", "PUSHSVC_REDIS_URL": redis_url, "FLASK_SECRET_KEY": "test-secret"},
        stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        def answers() -> bool:
            assert proc.poll() is None, (tmp_path / "flask.log").read_text()
            try:
                return httpx.get(base + "/", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(answers, 20, what="the Flask example")
        yield base
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def login(base: str, user: str) -> httpx.Client:
    client = httpx.Client(base_url=base, timeout=5)
    assert client.post("/login", data={"user": user}).status_code == 302
    return client


async def test_the_flask_apps_login_session_protects_user_channels_behind_pushsvc(
    flask_app, service_factory, redis_url
):
    service = service_factory({
        "PUSHSVC_REDIS_URL": redis_url, "PUSHSVC_PRIVATE_CHANNELS": "user:*",
        "PUSHSVC_AUTH_URL": flask_app + "/pushsvc/authorize"})
    alice, bob = login(flask_app, "42"), login(flask_app, "7")
    try:
        cookie = {"Cookie": "; ".join(f"{k}={v}" for k, v in alice.cookies.items())}
        stream = await SSEClient.open(service.port, ["user:42"], headers=cookie)
        try:
            assert stream.status == 200
            await stream.wait_open()
            assert alice.post("/answer", data={"value": "Python"}).status_code == 202
            assert bob.post("/answer", data={"value": "not for alice"}).status_code == 202  # to user:7
            assert alice.post("/answer", data={"value": "Go"}).status_code == 202
            events = await stream.events(2)
            assert [e.type for e in events] == ["new_answers"] * 2
            assert ['"Python"' in events[0].data, '"Go"' in events[1].data] == [True, True]
        finally:
            await stream.close()
        bobs_cookie = {"Cookie": "; ".join(f"{k}={v}" for k, v in bob.cookies.items())}
        refused = await SSEClient.open(service.port, ["user:42"], headers=bobs_cookie)
        anonymous = await SSEClient.open(service.port, ["user:42"])
        try:
            assert (refused.status, anonymous.status) == (403, 401)
        finally:
            await refused.close()
            await anonymous.close()
        page = alice.get("/").text
        assert "/pushsvc.js" in page and "user:42" in page
    finally:
        alice.close()
        bob.close()
