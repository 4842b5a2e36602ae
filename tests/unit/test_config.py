"""Settings: read from PUSHSVC_*, validated with messages that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from pushsvc.config import ConfigError, Settings, settings_markdown

CONFIGURATION_DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_defaults_without_environment():
    settings = Settings.from_env({})
    assert settings.redis_url is None
    assert settings.keepalive_seconds == 15
    assert settings.history_size == 1000 and settings.history_ttl_seconds == 3600
    assert settings.publish_tokens == ()


def test_values_are_parsed():
    settings = Settings.from_env({
        "PUSHSVC_REDIS_URL": "redis://r:6379/1", "PUSHSVC_PUBLISH_TOKENS": "a, b,,c",
        "PUSHSVC_KEEPALIVE_SECONDS": "2.5", "PUSHSVC_QUEUE_SIZE": "10", "PUSHSVC_MAX_BATCH": "10",
        "PUSHSVC_ALLOW_ANONYMOUS_PUBLISH": "yes",
    })
    assert settings.publish_tokens == ("a", "b", "c")
    assert settings.keepalive_seconds == 2.5 and settings.queue_size == 10
    assert settings.allow_anonymous_publish is True


@pytest.mark.parametrize("name,value", [
    ("PUSHSVC_KEEPALIVE_SECONDS", "soon"),
    ("PUSHSVC_KEEPALIVE_SECONDS", "0"),
    ("PUSHSVC_QUEUE_SIZE", "-1"),
    ("PUSHSVC_RETRY_MS", "1.5"),
    ("PUSHSVC_REDIS_URL", "http://localhost"),
    ("PUSHSVC_ALLOW_ANONYMOUS_PUBLISH", "maybe"),
    ("PUSHSVC_LOG_FORMAT", "xml"),
])
def test_bad_values_stop_start_up_naming_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


@pytest.mark.parametrize("env,first,second", [
    # One accepted event (up to 4x its JSON size as SSE lines) would overflow every queue.
    ({"PUSHSVC_QUEUE_BYTES": "100000", "PUSHSVC_MAX_EVENT_BYTES": "65536"},
     "PUSHSVC_QUEUE_BYTES", "PUSHSVC_MAX_EVENT_BYTES"),
    # An event that no body can carry.
    ({"PUSHSVC_MAX_BODY_BYTES": "2048", "PUSHSVC_MAX_EVENT_BYTES": "4096"},
     "PUSHSVC_MAX_EVENT_BYTES", "PUSHSVC_MAX_BODY_BYTES"),
    # One accepted batch to a channel would overflow every subscriber's queue.
    ({"PUSHSVC_QUEUE_SIZE": "100", "PUSHSVC_MAX_BATCH": "101"}, "PUSHSVC_MAX_BATCH", "PUSHSVC_QUEUE_SIZE"),
])
def test_settings_that_contradict_each_other_stop_start_up_naming_both(env, first, second):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    message = str(caught.value)
    assert first in message and second in message
    assert message.index(first) < message.index(second)


@pytest.mark.parametrize("env", [
    {"PUSHSVC_QUEUE_BYTES": str(4 * 65536), "PUSHSVC_MAX_EVENT_BYTES": "65536"},
    {"PUSHSVC_MAX_BODY_BYTES": "4096", "PUSHSVC_MAX_EVENT_BYTES": "4096"},
    {"PUSHSVC_QUEUE_SIZE": "100", "PUSHSVC_MAX_BATCH": "100"},
])
def test_settings_at_the_edge_of_a_contradiction_are_accepted(env):
    Settings.from_env(env)


def test_write_delay_defaults_to_0_and_takes_whole_milliseconds_up_to_a_second():
    assert Settings.from_env({}).write_delay_ms == 0
    assert Settings.from_env({"PUSHSVC_WRITE_DELAY_MS": "10"}).write_delay_ms == 10
    assert Settings.from_env({"PUSHSVC_WRITE_DELAY_MS": "1000"}).write_delay_ms == 1000
    for bad in ("-1", "1001", "2.5", "10ms", ""):
        with pytest.raises(ConfigError, match="PUSHSVC_WRITE_DELAY_MS"):
            Settings.from_env({"PUSHSVC_WRITE_DELAY_MS": bad})


def test_write_timeout_defaults_to_30_seconds_and_0_turns_it_off():
    assert Settings.from_env({}).write_timeout_seconds == 30
    assert Settings.from_env({"PUSHSVC_WRITE_TIMEOUT_SECONDS": "0"}).write_timeout_seconds == 0
    with pytest.raises(ConfigError, match="PUSHSVC_WRITE_TIMEOUT_SECONDS"):
        Settings.from_env({"PUSHSVC_WRITE_TIMEOUT_SECONDS": "-1"})


def test_configuration_doc_lists_every_setting():
    text = CONFIGURATION_DOC.read_text()
    start = text.index("<!-- settings:start -->") + len("<!-- settings:start -->")
    assert text[start:text.index("<!-- settings:end -->")].strip() == settings_markdown()


@pytest.mark.parametrize("pem,reason", [
    ("not a key", "is not a PEM public key"),
    ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----", "is not a PEM public key"),
])
def test_a_bad_jwt_public_key_stops_start_up_naming_the_variable(pem, reason):
    with pytest.raises(ConfigError, match=f"PUSHSVC_JWT_PUBLIC_KEY: {reason}"):
        Settings.from_env({"PUSHSVC_JWT_PUBLIC_KEY": pem})


def test_configuration_does_not_import_the_token_verifier():
    """No import cycle: config validates keys with pushsvc.keys, and only tokens imports config."""
    import subprocess
    import sys

    code = "import sys, pushsvc.config; print('pushsvc.tokens' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "False"
