"""The checks every door shares: `pushsvc.publisher` refuses what POST /publish refuses
(before anything is sent), JWT time claims must be numbers, and the text log format keeps
every logged value on one line."""

from __future__ import annotations

import logging
import time

import jwt
import pytest
import redis

from pushsvc.config import Settings
from pushsvc.events import EventError
from pushsvc.logs import TextFormatter
from pushsvc.publisher import Publisher
from pushsvc.tokens import TokenError, TokenVerifier
from tests.support import jwts
from tests.support.procs import free_port


@pytest.fixture
def publisher():
    # Nothing listens on this port: any check that let an event through would fail to connect.
    client = redis.Redis(port=free_port(), socket_connect_timeout=0.2)
    yield Publisher(client=client, history_size=10, history_ttl_seconds=60)
    client.close()


@pytest.mark.parametrize("kwargs,code", [
    ({"channel": "n", "data": "x" * (256 * 1024 + 1)}, "event_too_large"),  # PUSHSVC_MAX_EVENT_BYTES default
    ({"channel": "n", "data": [[[]]] * 2, "type": "pushsvc.reset"}, "invalid_type"),
    ({"channel": "n", "data": 1, "retry": 86_400_000}, "invalid_retry"),
    ({"channel": [f"c{i}" for i in range(101)], "data": 1}, "invalid_channel"),
    ({"channel": "orders:*", "data": 1}, "invalid_channel"),
    ({"channel": "n", "data": {"set": {1, 2}}}, "invalid_data"),
    ({"channel": "n", "data": float("nan")}, "invalid_data"),
    ({"channel": "n", "data": "\ud800"}, "invalid_data"),
    ({"channel": "n", "data": 1, "idempotency_key": "a b"}, "invalid_idempotency_key"),
])
def test_the_python_publisher_applies_the_checks_of_post_publish(publisher, kwargs, code):
    with pytest.raises(EventError) as caught:
        publisher.publish(**kwargs)
    assert caught.value.code == code


def test_the_python_publisher_refuses_data_nested_too_deep(publisher):
    data: list = []
    for _ in range(100):
        data = [data]
    with pytest.raises(EventError) as caught:
        publisher.publish("n", data)
    assert caught.value.code == "invalid_data"


def verifier() -> TokenVerifier:
    return TokenVerifier(Settings(jwt_secret=jwts.SECRET, jwt_audience=jwts.AUDIENCE))


@pytest.mark.parametrize("claim,value", [
    ("exp", str(int(time.time()) - 3600)), ("exp", str(int(time.time()) + 3600)), ("exp", True),
    ("nbf", "0"), ("iat", "yesterday"),
])
def test_a_jwt_whose_time_claims_are_not_numbers_is_refused(claim, value):
    claims = jwts.claims(["user:*"])
    claims[claim] = value
    token = jwt.encode(claims, jwts.SECRET, algorithm="HS256")
    with pytest.raises(TokenError):
        verifier().verify(token)


def test_a_well_formed_jwt_still_verifies_with_its_subject():
    grant = verifier().verify(jwts.hs256(["user:*"], sub="backend-7"))
    assert grant.subject == "backend-7" and grant.expires is not None


@pytest.mark.parametrize("hostile", ["/x\nFAKE 200 GET /admin", "/x\r\nFAKE", "a\x1b[31mred", "a\u2028b"])
def test_the_text_log_format_escapes_control_characters_in_every_value(hostile):
    record = logging.LogRecord("pushsvc.access", logging.INFO, "", 0, "request %s", (hostile,), None)
    record.path = hostile
    record.__dict__[f"k{hostile}"] = 1
    line = TextFormatter().format(record)
    assert "\n" not in line and "\r" not in line and "\x1b" not in line and "\u2028" not in line
    assert "\\n" in line or "\\x1b" in line or "\\r" in line or "\\u2028" in line


async def test_hypercorns_access_log_escapes_control_characters_in_every_atom():
    from hypercorn.config import Config

    from pushsvc.hypercorn_logger import RedactingLogger

    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    target = logging.Logger("test-access-escape")
    target.addHandler(Collect())
    target.setLevel(logging.INFO)
    config = Config()
    config.accesslog = target
    config.access_log_format = '"%(r)s" %(U)s %({user-agent}i)s %(s)s'
    scope = {
        "type": "http", "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": "/x\nFORGED 200", "query_string": b"", "client": ("127.0.0.1", 5555),
        "headers": [(b"user-agent", b"a\rFORGED2")],
    }
    await RedactingLogger(config).access(scope, {"status": 404, "headers": []}, 0.01)  # type: ignore[arg-type]
    assert len(lines) == 1 and "\n" not in lines[0] and "\r" not in lines[0]
    assert "/x\\nFORGED 200" in lines[0] and "a\\rFORGED2" in lines[0]
