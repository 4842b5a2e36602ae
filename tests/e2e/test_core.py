"""End to end: real pushsvc processes (Hypercorn), real redis-server, raw HTTP streams."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis.asyncio as aioredis

from pushsvc.publisher import AsyncPublisher, Publisher
from tests.support.helpers import flask_sse_message, metric, publish
from tests.support.sse_client import SSEClient

pytestmark = pytest.mark.e2e

QUESTION = {"question": "which programming is the best?", "value": "Absolutely, PHP", "who": "allen"}


async def test_stream_answers_200_with_sse_headers_and_first_bytes_at_once(service_factory):
    service = service_factory()
    client = await SSEClient.open(service.port, ["news"])
    try:
        assert client.status == 200
        assert client.headers["content-type"].startswith("text/event-stream")
        assert client.headers["cache-control"] == "no-cache"
        assert client.headers["x-accel-buffering"] == "no"
        await client.until(lambda c: c.parser.retry is not None, timeout=2)
        assert client.raw.startswith(b":")  # a comment goes out before any event
        assert client.parser.retry == 3000
    finally:
        await client.close()


async def test_idle_stream_gets_heartbeat_comments(service_factory):
    service = service_factory({"PUSHSVC_KEEPALIVE_SECONDS": "0.3"})
    client = await SSEClient.open(service.port, ["idle"])
    try:
        await client.until(lambda c: c.parser.comments.count("ping") >= 2, timeout=5)
    finally:
        await client.close()


async def test_seed_scenario_http_publisher_and_raw_redis_publish_reach_the_stream(
    service_factory, redis_url, http
):
    service = service_factory({"PUSHSVC_REDIS_URL": redis_url})
    client = await SSEClient.open(service.port)  # no channel: flask-sse's default "sse"
    try:
        await client.wait_open()
        response = await publish(http, service, {"channel": "sse", "type": "new_answers", "data": QUESTION})
        assert response.status_code == 202, response.text
        first = await client.next_event()
        assert (first.type, json.loads(first.data)) == ("new_answers", QUESTION)
        assert first.last_event_id == response.json()["id"]

        await asyncio.to_thread(
            lambda: Publisher(redis_url).publish("sse", {**QUESTION, "value": "Python"}, type="new_answers")
        )
        second = await client.next_event()
        assert json.loads(second.data)["value"] == "Python"

        raw = aioredis.Redis.from_url(redis_url)
        receivers = await raw.publish("sse", flask_sse_message({**QUESTION, "value": "Go"}, "new_answers"))
        await raw.aclose()
        assert receivers == 1
        third = await client.next_event()
        assert (third.type, json.loads(third.data)["value"]) == ("new_answers", "Go")
        assert third.last_event_id == second.last_event_id  # foreign events carry no id
    finally:
        await client.close()


async def test_string_data_arrives_as_text_and_json_values_as_compact_json(service_factory, http):
    service = service_factory()
    client = await SSEClient.open(service.port, ["t"])
    try:
        await client.wait_open()
        values = ["plain text", "two\nlines\r\nand\rmore", "", [1, "a", None], 3.5, {"k": "v"}, None, True]
        for value in values:
            assert (await publish(http, service, {"channel": "t", "data": value})).status_code == 202
        received = await client.events(len(values))
        expected = ["plain text", "two\nlines\nand\nmore", ""]
        assert [e.data for e in received[:3]] == expected
        assert [json.loads(e.data) for e in received[3:]] == values[3:]
        assert all(e.type == "message" for e in received)
    finally:
        await client.close()


async def test_invalid_redis_message_is_dropped_and_the_stream_keeps_working(
    service_factory, redis_url, http
):
    service = service_factory({"PUSHSVC_REDIS_URL": redis_url})
    client = await SSEClient.open(service.port, ["x"])
    raw = aioredis.Redis.from_url(redis_url)
    try:
        await client.wait_open()
        for junk in [b"not json", b"[1,2]", b'{"no":"data"}', b'{"data":1,"type":"a\\nb"}',
                     b'{"data":NaN}', b"\xff\xfe", b'{"data":1,"type":"pushsvc.reset"}']:
            await raw.publish("x", junk)
        await raw.publish("x", flask_sse_message("after junk"))
        event = await client.next_event()
        assert event.data == "after junk"
        assert await metric(http, service, "pushsvc_invalid_messages_total") == 7
    finally:
        await raw.aclose()
        await client.close()


async def test_two_processes_on_one_redis_deliver_every_event_exactly_once(
    service_factory, redis_url, http
):
    a = service_factory({"PUSHSVC_REDIS_URL": redis_url})
    b = service_factory({"PUSHSVC_REDIS_URL": redis_url})
    clients = [await SSEClient.open(s.port, ["room"]) for s in (a, b, a, b)]
    try:
        for client in clients:
            await client.wait_open()
        for i in range(20):
            await publish(http, a if i % 2 else b, {"channel": "room", "data": i})
        for client in clients:
            assert [int(e.data) for e in await client.events(20)] == list(range(20))
        with pytest.raises(asyncio.TimeoutError):
            await clients[0].next_event(timeout=0.3)  # nothing twice
    finally:
        for client in clients:
            await client.close()


async def test_plain_hypercorn_command_with_hypercorn_toml_serves_streams(
    service_factory, redis_url, http
):
    service = service_factory({"PUSHSVC_REDIS_URL": redis_url}, mode="hypercorn")
    client = await SSEClient.open(service.port, ["h"])
    try:
        await client.wait_open()
        publisher = AsyncPublisher(redis_url)
        ids = await publisher.publish("h", {"via": "publisher"})
        await publisher.aclose()
        event = await client.next_event()
        assert json.loads(event.data) == {"via": "publisher"}
        assert event.last_event_id == ids[0]
    finally:
        await client.close()


async def test_invalid_channel_is_refused_before_any_stream_starts(service_factory):
    service = service_factory()
    for bad in ["", "a b", "x" * 201, "orders:*", "a?b", "a[b]", "back\\slash", "tab\there"]:
        client = await SSEClient.open(service.port, [bad])
        try:
            assert client.status == 400, bad
            body = json.loads(client.body)
            assert body["error"] == "invalid_channel" and body["detail"]
        finally:
            await client.close()
