"""Observable: /metrics (prometheus-client format, summed over the workers of
`pushsvc serve --workers 2`), GET /channels/<name> across processes, JSON logs with
request ids and one access line per stream when it ends."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.helpers import TOKEN, publish
from tests.support.procs import Service, wait_until
from tests.support.sse_client import SSEClient

pytestmark = pytest.mark.e2e

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def scrape(service: Service) -> dict[str, float]:
    """Every sample of one scrape, on a new connection (so any worker may answer)."""
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.get(service.base + "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return samples


async def until_scrape(service: Service, predicate: Any, timeout: float = 10) -> dict[str, float]:
    async def loop() -> dict[str, float]:
        while True:
            samples = await scrape(service)
            if predicate(samples):
                return samples
            await asyncio.sleep(0.1)  # the other worker writes its snapshot every second

    try:
        return await asyncio.wait_for(loop(), timeout)
    except TimeoutError:
        raise AssertionError(f"metrics never matched; last: {await scrape(service)}") from None


def json_lines(service: Service) -> list[dict[str, Any]]:
    lines = []
    for line in service.log().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


async def test_metrics_of_two_workers_are_summed_whichever_worker_answers(service_factory, redis_url):
    service = service_factory({"PUSHSVC_REDIS_URL": redis_url, "PUSHSVC_LOG_FORMAT": "json"}, workers=2)
    await until_scrape(service, lambda s: s["pushsvc_workers"] == 2)
    streams = [await SSEClient.open(service.port, ["metrics"]) for _ in range(6)]
    try:
        for stream in streams:
            await stream.wait_open()
        # Publish on new connections until both workers have handled some of the requests.
        published = 0
        while True:
            async with httpx.AsyncClient(timeout=5) as http:
                response = await publish(http, service, {"channel": "metrics", "data": published})
            assert response.status_code == 202
            published += 1
            pids = {line["pid"] for line in json_lines(service)
                    if line.get("path") == "/publish" and line.get("msg") == "request"}
            if len(pids) == 2 and published >= 4:
                break
            assert published < 60, "the kernel never gave a /publish to the second worker"
        for stream in streams:
            await stream.events(published, timeout=5)

        def complete(s: dict[str, float]) -> bool:
            return (s["pushsvc_open_streams"] == 6 and s["pushsvc_events_published_total"] == published
                    and s["pushsvc_publish_latency_seconds_count"] == published
                    and s["pushsvc_streams_opened_total"] == 6
                    # each worker got each event once (the other's snapshot is up to 1 s old)
                    and s["pushsvc_events_received_total"] == 2 * published)

        samples = await until_scrape(service, complete)
        for _ in range(8):  # whichever worker answers, the sums hold
            assert complete(await until_scrape(service, complete, timeout=3))
        assert samples["pushsvc_workers"] == 2
        assert samples["pushsvc_subscribed_channels"] >= 1
        assert samples["pushsvc_events_received_total"] == 2 * published  # each worker got each event once
        assert samples['pushsvc_publish_latency_seconds_bucket{le=+Inf}'] == published
        # Memory is summed over both workers; process_* is the answering worker's alone.
        assert samples["pushsvc_resident_memory_bytes"] > samples["process_resident_memory_bytes"] > 10 * 2**20
        for name in ("pushsvc_events_delivered_total", "pushsvc_events_replayed_total",
                     "pushsvc_slow_consumer_disconnects_total", "pushsvc_redis_reconnects_total"):
            assert name in samples
        # No per-channel (unbounded) labels: the only labels are histogram buckets (`le`) and
        # the collector's generation (0, 1, 2).
        labels = {part.split("=")[0] for key in samples if "{" in key for part in key[key.index("{") + 1:-1].split(",")}
        assert labels <= {"le", "generation"}
    finally:
        for stream in streams:
            await stream.close()
    await until_scrape(service, lambda s: s["pushsvc_open_streams"] == 0
                       and s["pushsvc_events_delivered_total"] == 6 * published)


async def test_metrics_show_event_loop_lag_garbage_collection_and_process_usage(service_factory):
    service = service_factory()
    first = await until_scrape(service, lambda s: s["pushsvc_event_loop_lag_seconds_count"] >= 2)
    assert first["pushsvc_event_loop_lag_seconds_bucket{le=+Inf}"] == first["pushsvc_event_loop_lag_seconds_count"]
    for generation in ("0", "1", "2"):
        assert f"pushsvc_gc_collections_total{{generation={generation}}}" in first
        assert f"pushsvc_gc_collected_objects_total{{generation={generation}}}" in first
        assert f"pushsvc_gc_pause_seconds_bucket{{generation={generation},le=+Inf}}" in first
    # `pushsvc serve` collects everything once before freezing the start-up objects: timed.
    assert first["pushsvc_gc_collections_total{generation=2}"] >= 1
    assert first["pushsvc_gc_pause_seconds_sum{generation=2}"] > 0
    assert "pushsvc_gc_scheduled_full_collections_total" in first
    assert first["pushsvc_resident_memory_bytes"] > 10 * 2**20
    assert first["process_resident_memory_bytes"] > 10 * 2**20
    baseline_fds = first["pushsvc_open_fds"]
    assert abs(baseline_fds - first["process_open_fds"]) <= 2  # one process: the same count, a scrape apart
    streams = [await SSEClient.open(service.port, ["fds"]) for _ in range(8)]
    try:
        for stream in streams:
            await stream.wait_open()
        await until_scrape(service, lambda s: s["pushsvc_open_fds"] >= baseline_fds + 8)
    finally:
        for stream in streams:
            await stream.close()
    lagging = await until_scrape(service, lambda s: s["pushsvc_event_loop_lag_seconds_count"]
                                 >= first["pushsvc_event_loop_lag_seconds_count"] + 2)
    assert lagging["pushsvc_event_loop_lag_seconds_sum"] >= first["pushsvc_event_loop_lag_seconds_sum"]


async def test_redis_reconnects_are_counted(service_factory, private_redis):
    service = service_factory({"PUSHSVC_REDIS_URL": private_redis.url})
    await until_scrape(service, lambda s: s["pushsvc_redis_reconnects_total"] == 0)
    private_redis.restart()
    await until_scrape(service, lambda s: s["pushsvc_redis_reconnects_total"] >= 1, timeout=15)


async def test_channel_subscriber_count_spans_every_process(service_factory, redis_url):
    one = service_factory({"PUSHSVC_REDIS_URL": redis_url})
    two = service_factory({"PUSHSVC_REDIS_URL": redis_url})
    streams = ([await SSEClient.open(one.port, ["room"]) for _ in range(2)]
               + [await SSEClient.open(two.port, ["room"]) for _ in range(3)]
               + [await SSEClient.open(two.port, ["other", "room"])])
    try:
        for stream in streams:
            await stream.wait_open()
        async with httpx.AsyncClient(timeout=5, headers=AUTH) as http:
            for service in (one, two):
                response = await http.get(service.base + "/channels/room")
                assert response.status_code == 200, response.text
                assert response.json() == {"channel": "room", "subscribers": 6}
            assert (await http.get(two.base + "/channels/other")).json()["subscribers"] == 1
            assert (await http.get(one.base + "/channels/other")).json()["subscribers"] == 1
            assert (await http.get(one.base + "/channels/nobody:here")).json()["subscribers"] == 0
            assert (await http.get(one.base + "/channels/bad*name")).status_code == 400
            unauthenticated = await http.get(one.base + "/channels/room", headers={"Authorization": ""})
            assert unauthenticated.status_code == 401
            assert unauthenticated.json()["error"] == "unauthorized"
    finally:
        for stream in streams:
            await stream.close()


async def test_json_logs_have_request_ids_and_a_line_per_ended_stream(service_factory, http):
    service = service_factory({"PUSHSVC_LOG_FORMAT": "json"})
    echoed = await http.get(service.base + "/openapi.json", headers={"X-Request-ID": "caller-42"})
    assert echoed.headers["x-request-id"] == "caller-42"
    made = await http.get(service.base + "/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert len(made.headers["x-request-id"]) == 32 and " " not in made.headers["x-request-id"]

    stream = await SSEClient.open(service.port, ["logged"], headers={"X-Request-ID": "stream-7"})
    try:
        assert stream.headers["x-request-id"] == "stream-7"
        await stream.wait_open()
        for n in range(3):
            await publish(http, service, {"channel": "logged", "data": n})
        await stream.events(3)
    finally:
        await stream.close()

    def ended() -> dict[str, Any] | None:
        return next((line for line in json_lines(service)
                     if line["msg"] == "stream ended" and line.get("request_id") == "stream-7"), None)

    line = await asyncio.to_thread(wait_until, ended, 5, 0.05, "the stream's access line")
    assert line["events"] == 3 and line["reason"] == "client" and line["channels"] == "logged"
    assert line["duration_s"] > 0 and line["client"] == "127.0.0.1" and line["logger"] == "pushsvc.access"
    # A plain publish is answered by the fast door, which writes the request-id header itself.
    published = await http.post(service.base + "/publish", json={"channel": "logged", "data": "x"},
                                headers={"Authorization": f"Bearer {TOKEN}", "X-Request-ID": "pub-9"})
    assert published.status_code == 202
    assert published.headers.get_list("x-request-id") == ["pub-9"]
    fresh = await http.post(service.base + "/publish", json={"channel": "logged", "data": "y"},
                            headers={"Authorization": f"Bearer {TOKEN}"})
    assert len(fresh.headers.get_list("x-request-id")) == 1 and len(fresh.headers["x-request-id"]) == 32

    def published_line() -> dict[str, Any] | None:
        return next((line for line in json_lines(service)
                     if line["msg"] == "request" and line.get("request_id") == "pub-9"), None)

    line = await asyncio.to_thread(wait_until, published_line, 5, 0.05, "the publish's access line")
    assert line["status"] == 202 and line["method"] == "POST" and line["path"] == "/publish"
    requests = [entry for entry in json_lines(service) if entry["msg"] == "request"]
    assert any(entry["request_id"] == "caller-42" and entry["status"] == 200 for entry in requests)
    assert all(entry.get("ts") and entry.get("level") for entry in json_lines(service))


async def test_a_stream_ended_by_shutdown_is_logged_with_that_reason(service_factory, http):
    service = service_factory({"PUSHSVC_LOG_FORMAT": "json"})
    stream = await SSEClient.open(service.port, ["bye"], headers={"X-Request-ID": "bye-1"})
    try:
        await stream.wait_open()
        await publish(http, service, {"channel": "bye", "data": "one"})
        await stream.events(1)
        assert await asyncio.to_thread(service.stop) == 0
        await stream.until_end(5)
    finally:
        await stream.close()
    line = next(entry for entry in json_lines(service) if entry.get("request_id") == "bye-1")
    assert (line["msg"], line["events"], line["reason"]) == ("stream ended", 1, "shutdown")
