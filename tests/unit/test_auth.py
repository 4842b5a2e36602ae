"""Tokens, publisher scopes, CORS and settings of issue 5, through the real Quart app
(embedded broker).  Stream statuses over real HTTP are in tests/e2e/test_private_channels.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest

from pushsvc.app import create_app
from pushsvc.config import ConfigError, Settings
from pushsvc.patterns import matches
from tests.support import jwts

STATIC = "static-publish-token"


def app_settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "publish_tokens": (STATIC,), "jwt_secret": jwts.SECRET, "jwt_audience": jwts.AUDIENCE,
        "private_channels": ("user:*", "team:*"),
    }
    return Settings.from_env({}, **{**base, **overrides})


@pytest.fixture
async def client() -> AsyncIterator[Any]:
    app = create_app(app_settings(cors_origins=("http://app.test:8080",)))
    async with app.test_app() as test_app:
        yield test_app.test_client()


async def publish(client: Any, body: Any, token: str | None,
                  headers: dict[str, str] | None = None) -> Any:
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    return await client.post("/publish", json=body, headers={**auth, **(headers or {})})


async def error_of(response: Any) -> str:
    body = await response.get_json()
    assert set(body) == {"error", "detail"} and body["detail"]
    return str(body["error"])


# -- patterns -------------------------------------------------------------------------------

@pytest.mark.parametrize("pattern,channel,expected", [
    ("user:42", "user:42", True), ("user:42", "user:421", False), ("user:*", "user:42", True),
    ("user:*", "users:42", False), ("*", "anything/at@all", True), ("a*b*c", "a-x-b-y-c", True),
    ("a*b*c", "a-x-c", False), ("team.*", "teamX1", False), ("*:admin", "org:7:admin", True),
])
def test_channel_patterns_use_star_as_the_only_wildcard(pattern, channel, expected):
    assert matches(pattern, channel) is expected


# -- publishers -----------------------------------------------------------------------------

async def test_static_token_still_publishes_anywhere(client):
    response = await publish(client, {"channel": ["user:42", "orders:1"], "data": 1}, STATIC)
    assert response.status_code == 202


async def test_publisher_token_scoped_to_orders_publishes_there_and_nowhere_else(client):
    token = jwts.hs256(publish=["orders:*"])
    assert (await publish(client, {"channel": "orders:7", "data": 1}, token)).status_code == 202
    refused = await publish(client, {"channel": "user:42", "data": 1}, token)
    assert refused.status_code == 403 and await error_of(refused) == "forbidden"


async def test_every_channel_of_a_multi_channel_event_and_every_batch_item_is_checked(client):
    token = jwts.hs256(publish=["orders:*"])
    multi = await publish(client, {"channel": ["orders:1", "user:42"], "data": 1}, token)
    assert multi.status_code == 403
    batch = await publish(client, [{"channel": "orders:1", "data": 1}, {"channel": "team:a", "data": 2}], token)
    assert batch.status_code == 403 and "event 1" in (await batch.get_json())["detail"]
    # nothing of the refused requests was published: the next event on orders:1 is its first
    ok = await publish(client, {"channel": "orders:1", "data": 3}, token)
    assert (await ok.get_json())["id"].endswith("-1")


async def test_subscriber_token_cannot_publish(client):
    response = await publish(client, {"channel": "user:42", "data": 1}, jwts.hs256(subscribe=["user:42"]))
    assert response.status_code == 403


@pytest.mark.parametrize("label,token", [
    ("alg none", lambda: jwts.alg_none(jwts.claims(publish=["*"]))),
    ("bad signature", lambda: jwts.hs256(publish=["*"], secret=jwts.OTHER_SECRET)),
    ("expired", lambda: jwts.hs256(publish=["*"], ttl=-60)),
    ("wrong audience", lambda: jwts.hs256(publish=["*"], aud="someone-else")),
    ("no audience", lambda: jwts.hs256(publish=["*"], aud=None)),
    ("not yet valid", lambda: jwts.hs256(publish=["*"], nbf=4102444800)),
    ("no exp", lambda: jwt.encode({"aud": jwts.AUDIENCE, "pushsvc": {"publish": ["*"]}}, jwts.SECRET)),
    ("claim not a list", lambda: jwts.hs256(publish="orders:*")),  # type: ignore[arg-type]
    ("pattern with a space", lambda: jwts.hs256(publish=["orders *"])),
    ("garbage", lambda: "not.a.jwt"),
])
async def test_bad_publisher_tokens_get_401(client, label, token):
    response = await publish(client, {"channel": "orders:1", "data": 1}, token())
    assert response.status_code == 401, label
    assert await error_of(response) == "unauthorized"
    assert "invalid_token" in response.headers["WWW-Authenticate"]


async def test_jwt_alone_enables_publishing_without_static_tokens():
    app = create_app(app_settings(publish_tokens=()))
    async with app.test_app() as test_app:
        c = test_app.test_client()
        assert (await publish(c, {"channel": "x", "data": 1}, jwts.hs256(publish=["x"]))).status_code == 202
        assert (await publish(c, {"channel": "x", "data": 1}, STATIC)).status_code == 401


@pytest.mark.parametrize("key_kind", ["rsa", "ec"])
async def test_public_key_tokens_verify_and_confusion_forgeries_are_refused(key_kind):
    private = jwts.rsa_key() if key_kind == "rsa" else jwts.ec_key()
    alg = "RS256" if key_kind == "rsa" else "ES256"
    pem = jwts.public_pem(private)
    body = jwts.claims(publish=["*"])
    for secret in (None, jwts.SECRET):  # public key alone, and beside an HS256 secret
        app = create_app(app_settings(jwt_public_key=pem, jwt_secret=secret))
        async with app.test_app() as test_app:
            c = test_app.test_client()
            good = jwt.encode(body, private, algorithm=alg)
            assert (await publish(c, {"channel": "a", "data": 1}, good)).status_code == 202
            forged = jwts.hs256_keyed_with(body, pem.encode())
            assert (await publish(c, {"channel": "a", "data": 1}, forged)).status_code == 401
            assert (await publish(c, {"channel": "a", "data": 1}, jwts.alg_none(body))).status_code == 401
            other_alg = "ES256" if key_kind == "rsa" else "RS256"
            other_key = jwts.ec_key() if key_kind == "rsa" else jwts.rsa_key()
            wrong = jwt.encode(body, other_key, algorithm=other_alg)
            assert (await publish(c, {"channel": "a", "data": 1}, wrong)).status_code == 401


async def test_private_stream_refusals_are_json_and_public_streams_ignore_tokens(client):
    no_token = await client.get("/stream?channel=user:42")
    assert no_token.status_code == 401 and await error_of(no_token) == "unauthorized"
    assert no_token.headers["WWW-Authenticate"].startswith("Bearer")
    mixed = await client.get("/stream?channel=user:42&channel=user:7",
                             headers={"Authorization": "Bearer " + jwts.hs256(subscribe=["user:42"])})
    assert mixed.status_code == 403 and await error_of(mixed) == "forbidden"
    assert "user:7" in (await mixed.get_json())["detail"]


# -- CORS -----------------------------------------------------------------------------------

async def test_preflight_for_publish_from_an_allowed_origin(client):
    response = await client.options("/publish", headers={
        "Origin": "http://app.test:8080", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "http://app.test:8080"
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert response.headers["Access-Control-Allow-Methods"] == "POST"
    allowed = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed
    assert "Origin" in response.headers["Vary"]
    stream = await client.options("/stream", headers={
        "Origin": "http://app.test:8080", "Access-Control-Request-Method": "GET"})
    assert stream.status_code == 204 and stream.headers["Access-Control-Allow-Methods"] == "GET"


async def test_preflight_and_responses_for_another_origin_carry_no_cors_grant(client):
    response = await client.options("/publish", headers={
        "Origin": "http://evil.test", "Access-Control-Request-Method": "POST"})
    assert response.status_code == 403
    assert "Access-Control-Allow-Origin" not in response.headers
    post = await publish(client, {"channel": "a", "data": 1}, STATIC, {"Origin": "http://evil.test"})
    assert "Access-Control-Allow-Origin" not in post.headers and "Origin" in post.headers["Vary"]


async def test_responses_and_errors_echo_an_allowed_origin_with_credentials(client):
    origin = {"Origin": "http://app.test:8080"}
    ok = await publish(client, {"channel": "a", "data": 1}, STATIC, origin)
    refused = await client.get("/stream?channel=user:1", headers=origin)
    for response in (ok, refused):
        assert response.headers["Access-Control-Allow-Origin"] == "http://app.test:8080"
        assert response.headers["Access-Control-Allow-Credentials"] == "true"
        assert "Origin" in response.headers["Vary"]


async def test_wildcard_origin_means_no_credentials():
    app = create_app(app_settings(cors_origins=("*",)))
    async with app.test_app() as test_app:
        response = await publish(test_app.test_client(), {"channel": "a", "data": 1}, STATIC,
                                 {"Origin": "http://anyone.test"})
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert "Access-Control-Allow-Credentials" not in response.headers


# -- settings -------------------------------------------------------------------------------

@pytest.mark.parametrize("env,named", [
    ({"PUSHSVC_PRIVATE_CHANNELS": "user:*"}, "PUSHSVC_PRIVATE_CHANNELS"),
    ({"PUSHSVC_PRIVATE_CHANNELS": "user:*", "PUSHSVC_JWT_SECRET": "short"}, "PUSHSVC_JWT_SECRET"),
    ({"PUSHSVC_JWT_PUBLIC_KEY": "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----"},
     "PUSHSVC_JWT_PUBLIC_KEY"),
    ({"PUSHSVC_JWT_PUBLIC_KEY": "not a pem"}, "PUSHSVC_JWT_PUBLIC_KEY"),
    ({"PUSHSVC_PRIVATE_CHANNELS": "user 42", "PUSHSVC_JWT_SECRET": jwts.SECRET}, "PUSHSVC_PRIVATE_CHANNELS"),
    ({"PUSHSVC_CORS_ORIGINS": "*,https://app.example.com"}, "PUSHSVC_CORS_ORIGINS"),
    ({"PUSHSVC_CORS_ORIGINS": "https://app.example.com/"}, "PUSHSVC_CORS_ORIGINS"),
    ({"PUSHSVC_JWT_LEEWAY_SECONDS": "-1"}, "PUSHSVC_JWT_LEEWAY_SECONDS"),
    ({"PUSHSVC_JWT_COOKIE": "bad cookie"}, "PUSHSVC_JWT_COOKIE"),
])
def test_bad_security_settings_stop_start_up_naming_the_variable(env, named):
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(env)


def test_settings_repr_shows_no_secret():
    settings = Settings.from_env({"PUSHSVC_JWT_SECRET": jwts.SECRET, "PUSHSVC_PUBLISH_TOKENS": STATIC})
    assert jwts.SECRET not in repr(settings) and STATIC not in repr(settings)


def test_public_key_on_one_line_with_escaped_newlines_is_accepted():
    pem = jwts.public_pem(jwts.ec_key()).strip().replace("\n", "\\n")
    settings = Settings.from_env({"PUSHSVC_JWT_PUBLIC_KEY": pem, "PUSHSVC_PRIVATE_CHANNELS": "*"})
    assert settings.private_channels == ("*",)


# -- pushsvc token ----------------------------------------------------------------------------

def test_pushsvc_token_mints_a_dev_token_the_service_accepts(monkeypatch, capsys):
    from pushsvc.cli import main

    monkeypatch.setenv("PUSHSVC_JWT_SECRET", jwts.SECRET)
    monkeypatch.setenv("PUSHSVC_JWT_AUDIENCE", jwts.AUDIENCE)
    assert main(["token", "--subscribe", "user:42", "--publish", "orders:*", "--ttl", "3600"]) == 0
    token = capsys.readouterr().out.strip()
    from pushsvc.tokens import TokenVerifier

    grant = TokenVerifier(Settings.from_env()).verify(token)
    assert grant.subscribe == ("user:42",) and grant.publish == ("orders:*",)
    assert json.loads(json.dumps(jwt.decode(token, options={"verify_signature": False})))["aud"] == jwts.AUDIENCE


def test_pushsvc_token_without_a_secret_fails_clearly(monkeypatch, capsys):
    from pushsvc.cli import main

    monkeypatch.delenv("PUSHSVC_JWT_SECRET", raising=False)
    assert main(["token", "--subscribe", "user:42"]) == 2
    assert "PUSHSVC_JWT_SECRET" in capsys.readouterr().err


# -- access log -----------------------------------------------------------------------------

async def test_access_log_redacts_token_query_credentials_headers_and_secret_env(monkeypatch):
    import logging

    from hypercorn.config import Config

    from pushsvc.hypercorn_logger import RedactingLogger

    monkeypatch.setenv("PUSHSVC_JWT_SECRET", jwts.SECRET)
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    target = logging.Logger("test-access")
    target.addHandler(Collect())
    target.setLevel(logging.INFO)
    config = Config()
    config.accesslog = target
    config.access_log_format = (
        '"%(r)s" "%(R)s" %(q)s %(Uq)s %({authorization}i)s %({cookie}i)s %({pushsvc_jwt_secret}e)s %(s)s'
    )
    scope = {
        "type": "http", "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": "/stream", "query_string": b"channel=user:42&token=SECRET-TOKEN&x=1",
        "client": ("127.0.0.1", 5555),
        "headers": [(b"authorization", b"Bearer SECRET-HEADER"), (b"cookie", b"pushsvc_token=SECRET-COOKIE")],
    }
    await RedactingLogger(config).access(scope, {"status": 200, "headers": []}, 0.01)  # type: ignore[arg-type]
    assert len(lines) == 1
    line = lines[0]
    assert "SECRET" not in line and jwts.SECRET not in line
    assert "channel=user:42&token=[redacted]&x=1" in line and line.endswith(" 200")
