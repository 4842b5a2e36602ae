"""History on demand against a real `pushsvc serve` and a real Redis: GET /history pages,
its `after` forms and resets, render-then-subscribe with no gap and no duplicate, CORS,
bad input; and /stream?rewind=N on fresh one- and multi-channel streams."""

from __future__ import annotations

import pytest

from tests.support.helpers import publish
from tests.support.sse_client import SSEClient

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


@pytest.fixture
def service(service_factory, redis_url):
    return service_factory({"PUSHSVC_REDIS_URL": redis_url, "PUSHSVC_HISTORY_SIZE": "5",
                            "PUSHSVC_CORS_ORIGINS": "https://app.example"})


async def put(http, service, channel, *values, type_="n"):
    ids = []
    for value in values:
        answer = await publish(http, service, {"channel": channel, "type": type_, "data": {"v": value}})
        assert answer.status_code == 202, answer.text
        ids.append(answer.json()["id"])
    return ids


async def history(http, service, **params):
    answer = await http.get(service.base + "/history", params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


async def test_history_pages_from_the_oldest_retained_event_and_after_an_id(service, http):
    ids = await put(http, service, "a/b", *range(1, 8))  # 7 published, 5 retained (3..7)
    page = await history(http, service, channel="a/b", limit="2")
    assert [e["data"]["v"] for e in page["events"]] == [3, 4]
    assert page["events"][0] == {"id": ids[2], "type": "n", "data": {"v": 3}}
    assert (page["last_id"], page["reset"]) == (ids[3], None)
    page = await history(http, service, channel="a/b", after=page["last_id"])
    assert [e["data"]["v"] for e in page["events"]] == [5, 6, 7]
    assert page["last_id"] == ids[6]
    page = await history(http, service, channel="a/b", after=ids[6])
    assert (page["events"], page["last_id"], page["reset"]) == ([], ids[6], None)


async def test_after_takes_a_stream_id_containing_the_channel(service, http):
    await put(http, service, "x", 1)
    ids = await put(http, service, "y", 1, 2)
    stream = await SSEClient.open(service.port, ["x", "y", "z"])
    try:
        await stream.wait_open()
        await put(http, service, "y", 3)
        event = await stream.next_event()
        stream_id = event.last_event_id
    finally:
        await stream.close()
    assert stream_id.count(".") == 2
    assert (await history(http, service, channel="y", after=stream_id))["events"] == []
    page = await history(http, service, channel="y", after=stream_id.replace(event.last_event_id.split(".")[1], ids[0]))
    assert [e["data"]["v"] for e in page["events"]] == [2, 3]


@pytest.mark.parametrize("after,reset", [("garbage!", "unreadable_id"), ("abcdefgh-1", "history_lost")])
async def test_an_unusable_after_is_a_reset_and_the_page_starts_at_the_oldest(service, http, after, reset):
    await put(http, service, "c", 1, 2)
    page = await history(http, service, channel="c", after=after)
    assert page["reset"] == reset
    assert [e["data"]["v"] for e in page["events"]] == [1, 2]


async def test_an_id_older_than_history_is_too_old(service, http):
    ids = await put(http, service, "c", *range(1, 10))  # 5..9 retained
    page = await history(http, service, channel="c", after=ids[1])  # wants 3, 4: gone
    assert page["reset"] == "too_old"
    assert [e["data"]["v"] for e in page["events"]] == [5, 6, 7, 8, 9]
    page = await history(http, service, channel="c", after=ids[3])  # wants 5..: all retained
    assert (page["reset"], [e["data"]["v"] for e in page["events"]]) == (None, [5, 6, 7, 8, 9])


async def test_render_from_history_then_subscribe_from_last_id_has_no_gap_and_no_duplicate(service, http):
    await put(http, service, "feed", 1, 2)
    page = await history(http, service, channel="feed")
    await put(http, service, "feed", 3, 4)  # between the page and the stream
    stream = await SSEClient.open(service.port, ["feed"], last_event_id=page["last_id"])
    try:
        await put(http, service, "feed", 5)
        events = await stream.events(3)
    finally:
        await stream.close()
    seen = [e["data"]["v"] for e in page["events"]] + [int(e.data[5:-1]) for e in events]
    assert seen == [1, 2, 3, 4, 5]


async def test_empty_and_unknown_channels_answer_an_empty_page(service, http):
    assert await history(http, service, channel="never") == {"events": [], "last_id": "0", "reset": None}
    assert (await history(http, service, channel="never", after="0"))["reset"] is None


@pytest.mark.parametrize("params,error", [
    ({}, "invalid_channel"), ({"channel": "bad name"}, "invalid_channel"),
    ({"channel": "c", "limit": "1001"}, "invalid_limit"), ({"channel": "c", "limit": "-1"}, "invalid_limit"),
])
async def test_bad_history_requests_are_json_400(service, http, params, error):
    answer = await http.get(service.base + "/history", params=params)
    assert (answer.status_code, answer.json()["error"]) == (400, error)


async def test_history_has_the_cors_rules_of_stream(service, http):
    answer = await http.get(service.base + "/history", params={"channel": "c"},
                            headers={"Origin": "https://app.example"})
    assert answer.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert answer.headers["Access-Control-Allow-Credentials"] == "true"
    preflight = await http.options(service.base + "/history", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "GET"})
    assert preflight.status_code == 204
    other = await http.get(service.base + "/history", params={"channel": "c"}, headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


async def test_rewind_replays_the_last_n_events_of_each_channel_then_live(service_factory, redis_url, http):
    service = service_factory({"PUSHSVC_REDIS_URL": redis_url, "PUSHSVC_HISTORY_SIZE": "5"})
    await put(http, service, "a", *range(1, 8))   # 3..7 retained
    await put(http, service, "b", 1)
    stream = await SSEClient.open(service.port, ["b", "a"], query={"rewind": "3"})
    try:
        replayed = await stream.events(4)
        await put(http, service, "a", 8)
        live = await stream.next_event()
    finally:
        await stream.close()
    assert sorted(e.data for e in replayed) == ['{"v":1}', '{"v":5}', '{"v":6}', '{"v":7}']
    assert live.data == '{"v":8}'
    assert all(e.type == "n" for e in [*replayed, live])  # no reset: the rewind stays inside history

    more = await SSEClient.open(service.port, ["a"], query={"rewind": "100"})  # at most what is held
    try:
        assert [e.data for e in await more.events(5)] == [f'{{"v":{v}}}' for v in range(4, 9)]  # 4..8 retained
    finally:
        await more.close()


async def test_rewind_is_ignored_with_a_last_event_id_and_bad_rewind_is_400(service, http):
    ids = await put(http, service, "r", 1, 2, 3)
    stream = await SSEClient.open(service.port, ["r"], last_event_id=ids[1], query={"rewind": "3"})
    try:
        assert (await stream.next_event()).data == '{"v":3}'
    finally:
        await stream.close()
    bad = await SSEClient.open(service.port, ["r"], query={"rewind": "x"})
    try:
        assert bad.status == 400
    finally:
        await bad.close()
