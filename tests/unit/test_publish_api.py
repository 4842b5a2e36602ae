"""POST /publish through the real Quart app (embedded broker): every bad input gets the
right status and a JSON error body; nothing bad reaches a stream."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pushsvc.app import create_app
from pushsvc.config import Settings
from tests.support.procs import free_port

TOKEN = "unit-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def make_settings(**overrides: Any) -> Settings:
    return Settings(**{"publish_tokens": (TOKEN,), **overrides})


@pytest.fixture
async def client() -> AsyncIterator[Any]:
    app = create_app(make_settings(max_body_bytes=8192, max_event_bytes=1024, max_batch=5))
    async with app.test_app() as test_app:
        yield test_app.test_client()


async def post(client: Any, body: bytes | str, headers: dict[str, str] | None = None,
               content_type: str = "application/json") -> Any:
    data = body.encode() if isinstance(body, str) else body
    return await client.post(
        "/publish", data=data, headers={"Content-Type": content_type, **AUTH, **(headers or {})}
    )


async def test_single_event_is_accepted_with_its_id(client):
    response = await post(client, '{"channel": "news", "type": "new_answer", "data": {"a": 1}}')
    assert response.status_code == 202
    body = await response.get_json()
    assert body["id"] == body["events"][0]["id"] and body["events"][0]["channel"] == "news"


async def test_batch_and_multi_channel_events_get_one_id_per_channel_in_order(client):
    response = await post(client, '[{"channel": ["a", "b"], "data": 1}, {"channel": "a", "data": 2}]')
    assert response.status_code == 202
    events = (await response.get_json())["events"]
    assert [e["channel"] for e in events] == ["a", "b", "a"]
    assert events[0]["id"].endswith("-1") and events[2]["id"].endswith("-2")


BAD = [
    ("malformed JSON", '{"channel": "a", "data": ', 400, "invalid_json"),
    ("empty body", "", 400, "invalid_json"),
    ("invalid UTF-8", b'{"data": "\xff"}', 400, "invalid_json"),
    ("NaN", '{"data": NaN}', 400, "invalid_json"),
    ("not an object", '"just a string"', 400, "invalid_event"),
    ("missing data", '{"channel": "a"}', 400, "invalid_event"),
    ("unknown field", '{"data": 1, "colour": "red"}', 400, "invalid_event"),
    ("id is assigned by pushsvc", '{"data": 1, "id": "x\\ny"}', 400, "invalid_event"),
    ("channel not a string", '{"channel": 5, "data": 1}', 400, "invalid_channel"),
    ("empty channel", '{"channel": "", "data": 1}', 400, "invalid_channel"),
    ("glob channel", '{"channel": "orders:*", "data": 1}', 400, "invalid_channel"),
    ("channel with CRLF", '{"channel": "a\\r\\nb", "data": 1}', 400, "invalid_channel"),
    ("empty channel list", '{"channel": [], "data": 1}', 400, "invalid_channel"),
    ("type with LF", '{"data": 1, "type": "a\\ndata: injected"}', 400, "invalid_type"),
    ("type with CR", '{"data": 1, "type": "a\\rb"}', 400, "invalid_type"),
    ("type not a string", '{"data": 1, "type": 7}', 400, "invalid_type"),
    ("negative retry", '{"data": 1, "retry": -1}', 400, "invalid_retry"),
    ("retry not an int", '{"data": 1, "retry": "soon"}', 400, "invalid_retry"),
    ("deeply nested", '{"data": ' + "[" * 100 + "]" * 100 + "}", 400, "invalid_data"),
    ("lone surrogate", '{"data": "\\ud800"}', 400, "invalid_data"),
    ("empty batch", "[]", 400, "invalid_event"),
    ("batch too long", "[" + ",".join(['{"data": 1}'] * 6) + "]", 413, "batch_too_large"),
    ("event too large", '{"data": "' + "x" * 2000 + '"}', 413, "event_too_large"),
    ("body too large", '{"data": "' + "x" * 9000 + '"}', 413, "request_entity_too_large"),
    ("huge integer", '{"data": ' + "9" * 5000 + "}", 400, "invalid_json"),
    ("huge float", '{"data": 1e999}', 400, "invalid_json"),
    ("UTF-16 body", '{"data": 1}'.encode("utf-16"), 400, "invalid_json"),
    ("UTF-16-LE body without BOM", '{"data": 1}'.encode("utf-16-le"), 400, "invalid_json"),
    ("UTF-32 body", '{"data": 1}'.encode("utf-32"), 400, "invalid_json"),
    ("reserved type pushsvc.reset", '{"data": 1, "type": "pushsvc.reset"}', 400, "invalid_type"),
    ("reserved type pushsvc.token_expired", '{"data": 1, "type": "pushsvc.token_expired"}', 400,
     "invalid_type"),
    ("retry above PUSHSVC_MAX_RETRY_MS", '{"data": 1, "retry": 86400000}', 400, "invalid_retry"),
    ("retry just above the cap", '{"data": 1, "retry": 60001}', 400, "invalid_retry"),
    ("malformed idempotency_key", '{"data": 1, "idempotency_key": "a b"}', 400, "invalid_idempotency_key"),
    ("idempotency_key twice in a batch",
     '[{"data": 1, "idempotency_key": "k"}, {"data": 2, "idempotency_key": "k"}]', 400,
     "invalid_idempotency_key"),
]


@pytest.mark.parametrize("body,status,code", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
async def test_bad_publish_bodies_get_a_json_error(client, body, status, code):
    response = await post(client, body)
    assert response.status_code == status
    payload = await response.get_json()
    assert payload["error"] == code
    assert isinstance(payload["detail"], str) and payload["detail"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
async def test_non_json_content_type_gets_415(client, content_type):
    response = await post(client, '{"data": 1}', content_type=content_type)
    assert response.status_code == 415
    assert (await response.get_json())["error"] == "unsupported_media_type"


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Basic dXNlcjpwYXNz", "Bearer wrong"])
async def test_missing_or_wrong_token_gets_401(client, authorization):
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    response = await client.post("/publish", data=b'{"data": 1}', headers=headers)
    assert response.status_code == 401
    assert (await response.get_json())["error"] == "unauthorized"
    assert "WWW-Authenticate" in response.headers


async def test_publishing_is_refused_when_no_token_is_configured():
    app = create_app(Settings())
    async with app.test_app() as test_app:
        response = await test_app.test_client().post("/publish", json={"data": 1})
    assert response.status_code == 403
    body = await response.get_json()
    assert body["error"] == "publishing_disabled" and "PUSHSVC_PUBLISH_TOKENS" in body["detail"]


async def test_anonymous_publishing_only_when_explicitly_allowed():
    app = create_app(Settings(allow_anonymous_publish=True))
    async with app.test_app() as test_app:
        response = await test_app.test_client().post("/publish", json={"data": 1})
    assert response.status_code == 202


async def test_wrong_method_gets_405_json(client):
    response = await client.get("/publish")
    assert response.status_code == 405
    assert (await response.get_json())["error"] == "method_not_allowed"


async def test_unknown_path_gets_404_json(client):
    response = await client.get("/nope")
    assert response.status_code == 404
    assert (await response.get_json())["error"] == "not_found"


async def test_unreachable_redis_gets_503_within_the_timeout():
    settings = make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_timeout_seconds=0.5)
    app = create_app(settings)
    async with app.test_app() as test_app:
        started = time.monotonic()
        response = await test_app.test_client().post("/publish", json={"data": 1}, headers=AUTH)
        elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert (await response.get_json())["error"] == "broker_unavailable"
    assert elapsed < 5


async def test_retry_at_the_cap_is_accepted(client):
    assert (await post(client, '{"data": 1, "retry": 60000}')).status_code == 202


async def history_of(app: Any, channel: str) -> list[bytes]:
    return [payload for _, payload in (await app.extensions["pushsvc"].broker.history(channel, 0)).entries]


@pytest.fixture
async def app_and_client() -> AsyncIterator[Any]:
    app = create_app(make_settings(max_batch=1000, max_body_bytes=4 * 1024 * 1024))
    async with app.test_app() as test_app:
        yield app, test_app.test_client()


async def test_a_repeated_idempotency_key_stores_nothing_and_answers_the_original_ids(app_and_client):
    app, client = app_and_client
    body = '[{"channel": "news", "data": 1}, {"channel": ["news", "sport"], "data": 2}]'
    first = await post(client, body, {"Idempotency-Key": "order-17"})
    again = await post(client, body, {"Idempotency-Key": '"order-17"'})  # the draft's quoted form
    assert first.status_code == again.status_code == 202
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await again.get_json() == await first.get_json()
    assert len(await history_of(app, "news")) == 2 and len(await history_of(app, "sport")) == 1


async def test_the_same_key_with_another_body_is_422_and_stores_nothing(app_and_client):
    app, client = app_and_client
    assert (await post(client, '{"channel": "news", "data": 1}', {"Idempotency-Key": "k"})).status_code == 202
    reused = await post(client, '{"channel": "news", "data": 2}', {"Idempotency-Key": "k"})
    assert reused.status_code == 422
    assert (await reused.get_json())["error"] == "idempotency_key_reused"
    assert len(await history_of(app, "news")) == 1


async def test_keys_are_scoped_to_the_publishing_credential():
    app = create_app(Settings(publish_tokens=(TOKEN, "other-token")))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        headers = {"Content-Type": "application/json", "Idempotency-Key": "same"}
        one = await client.post("/publish", data=b'{"channel": "n", "data": 1}',
                                headers={**headers, "Authorization": f"Bearer {TOKEN}"})
        other = await client.post("/publish", data=b'{"channel": "n", "data": 1}',
                                  headers={**headers, "Authorization": "Bearer other-token"})
    assert one.status_code == other.status_code == 202
    assert "Idempotent-Replayed" not in other.headers
    assert (await one.get_json())["id"] != (await other.get_json())["id"]


async def test_per_event_keys_replay_only_their_event(app_and_client):
    app, client = app_and_client
    assert (await post(client, '{"channel": "n", "data": 1, "idempotency_key": "e1"}')).status_code == 202
    batch = await post(client, '[{"channel": "n", "data": 1, "idempotency_key": "e1"}, '
                               '{"channel": "n", "data": 2, "idempotency_key": "e2"}]')
    assert batch.status_code == 202 and batch.headers["Idempotent-Replayed"] == "true"
    ids = [e["id"] for e in (await batch.get_json())["events"]]
    assert ids[0].endswith("-1") and ids[1].endswith("-2")
    assert len(await history_of(app, "n")) == 2


async def test_header_and_per_event_keys_together_are_400(app_and_client):
    _, client = app_and_client
    response = await post(client, '{"data": 1, "idempotency_key": "e1"}', {"Idempotency-Key": "r1"})
    assert response.status_code == 400
    assert (await response.get_json())["error"] == "invalid_idempotency_key"


async def test_a_batch_too_large_for_the_redis_timeout_is_refused_before_anything_is_stored(app_and_client):
    app, client = app_and_client
    channels = [f"c{i}" for i in range(100)]
    body = json.dumps([{"channel": channels, "data": i} for i in range(51)])  # 5,100 copies > 5,000 (2 s)
    response = await post(client, body)
    assert response.status_code == 413
    assert (await response.get_json())["error"] == "batch_too_large"
    assert await history_of(app, "c0") == []
