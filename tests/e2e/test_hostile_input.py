"""Every hostile input of docs/hostile-inputs.md against a running service; afterwards a
healthy subscriber still receives a valid event, and fuzzed input never breaks anything."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pushsvc.events import EventError, parse_message
from tests.e2e.hostile_cases import CASES, DOC, Case, render
from tests.support.helpers import TOKEN
from tests.support.procs import RedisServer, Service
from tests.support.sse_client import SSEClient
from tests.support.whatwg import Parser

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def service(redis_server: RedisServer) -> Iterator[Service]:
    svc = Service({"PUSHSVC_REDIS_URL": redis_server.url, "PUSHSVC_PUBLISH_TOKENS": TOKEN}).start()
    yield svc
    assert svc.stop() == 0
    assert "Traceback" not in svc.log()


def send_raw(service: Service, case: Case) -> httpx.Response:
    """For requests httpx refuses to build (a 100 KB URL)."""
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(f"{case.method} {case.path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return httpx.Response(int(head.split()[1]), content=body)


def send(service: Service, case: Case) -> httpx.Response:
    if len(case.path) > 8000:
        return send_raw(service, case)
    headers = dict(case.headers)
    if case.auth:
        headers.setdefault("Authorization", f"Bearer {TOKEN}")
    if case.json_body and case.method != "GET":
        headers.setdefault("Content-Type", "application/json")
    with httpx.Client(timeout=10) as http:
        if case.error == "reset":
            with http.stream(case.method, service.base + case.path, headers=headers) as response:
                parser, events = Parser(), []
                for chunk in response.iter_raw():
                    events += parser.feed(chunk)
                    if events:
                        break
                response.extensions["first_event"] = events[0]  # type: ignore[index]
                return response
        return http.request(case.method, service.base + case.path, content=case.body, headers=headers)


async def assert_canary_still_works(service: Service, marker: str) -> None:
    canary = await SSEClient.open(service.port, ["canary"])
    try:
        await canary.wait_open()
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.post(service.base + "/publish", json={"channel": "canary", "data": marker},
                                       headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 202
        event = await canary.next_event()
        assert (event.type, event.data) == ("message", marker)
    finally:
        await canary.close()


def test_docs_table_is_current():
    assert DOC.read_text() == render()
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_hostile_input_gets_its_documented_answer_and_nothing_breaks(service, case):
    response = await asyncio.to_thread(send, service, case)
    assert response.status_code == case.status
    if case.error == "reset":
        first = response.extensions["first_event"]
        assert first.type == "pushsvc.reset" and json.loads(first.data)["reason"] == "unreadable_id"
    elif case.error:
        body = response.json()
        assert body["error"] == case.error and isinstance(body["detail"], str) and body["detail"]
    await assert_canary_still_works(service, f"after {case.name}")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
event_like = st.fixed_dictionaries(
    {}, optional={"channel": st.text(max_size=12) | st.lists(st.text(max_size=6), max_size=3),
                  "data": json_values, "type": st.text(max_size=12) | st.integers(), "retry": st.integers(),
                  "id": st.text(max_size=5)},
)
bodies = (
    st.binary(max_size=200)
    | json_values.map(lambda v: json.dumps(v).encode())
    | event_like.map(lambda v: json.dumps(v).encode())
    | st.lists(event_like, max_size=4).map(lambda v: json.dumps(v).encode())
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies)
def test_fuzzed_publish_bodies_never_get_a_server_error(service, body):
    with httpx.Client(timeout=10) as http:
        response = http.post(service.base + "/publish", content=body,
                             headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    assert response.status_code in {202, 400, 413}, response.text
    if response.status_code != 202:
        assert set(response.json()) == {"error", "detail"}


async def test_service_is_healthy_after_fuzzing(service):
    await assert_canary_still_works(service, "after fuzzing")


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=300) | event_like.map(lambda v: json.dumps(v).encode()))
def test_fuzzed_redis_messages_parse_into_one_clean_event_or_are_refused(payload):
    try:
        frame = parse_message("ch", payload)
    except EventError:
        return
    parser = Parser()
    events = parser.feed(frame.single)
    assert len(events) == 1  # never an injected second event
    assert parser.feed(b"data: next\n\n")[0].data == "next"  # the stream is still in sync


async def test_fuzzed_raw_redis_publishes_do_not_break_streams(service, redis_server):
    import random

    rng = random.Random(11)
    with redis_server.client() as raw:
        for _ in range(200):
            raw.publish("canary", bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80))))
    await assert_canary_still_works(service, "after raw fuzz")
