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
        "PUSHSVC_KEEPALIVE_SECONDS": "2.5", "PUSHSVC_QUEUE_SIZE": "10",
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


def test_configuration_doc_lists_every_setting():
    text = CONFIGURATION_DOC.read_text()
    start = text.index("<!-- settings:start -->") + len("<!-- settings:start -->")
    assert text[start:text.index("<!-- settings:end -->")].strip() == settings_markdown()
