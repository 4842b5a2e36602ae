"""The `pushsvc` command as a new user meets it: every mistake is one line on stderr that
names the address, URL or file and says what to do, a non-zero exit status, and no
traceback (unless --debug); `serve` says which Hypercorn configuration it took, and
every log line (Hypercorn's too) follows PUSHSVC_LOG_FORMAT."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import fields
from importlib.resources import files
from pathlib import Path

import httpx
import pytest

from pushsvc.config import Settings, env_name
from tests.support.helpers import TOKEN
from tests.support.procs import ROOT, free_port, wait_until

pytestmark = pytest.mark.e2e


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")}
    return {**env, **extra}


def run(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT,
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pushsvc.cli", *args], capture_output=True, text=True,
                          env=env or clean_env(), cwd=cwd, timeout=timeout)


def one_line_error(result: subprocess.CompletedProcess[str], *must_contain: str) -> str:
    """The single stderr line of a failed command, checked for what it must name."""
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("pushsvc: "), line
    for text in must_contain:
        assert text in line, line
    return line


def test_busy_port_is_one_line_naming_the_address():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = run("serve", "--bind", f"127.0.0.1:{port}")
    one_line_error(result, f"127.0.0.1:{port}", "in use", "--bind")


@pytest.mark.parametrize("bind,expected", [
    ("nonsense", "HOST:PORT"),
    ("127.0.0.1:99999", "HOST:PORT"),
    ("999.1.1.1:8000", "999.1.1.1:8000"),
    ("no-such-host.invalid:8000", "no-such-host.invalid:8000"),
])
def test_bad_bind_is_one_line(bind, expected):
    one_line_error(run("serve", "--bind", bind), expected)


def test_missing_config_file_is_one_line_naming_it(tmp_path):
    missing = tmp_path / "nope.toml"
    one_line_error(run("serve", "--config", str(missing)), str(missing), "no such file")


def test_invalid_toml_is_one_line_naming_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("backlog = \n")
    one_line_error(run("serve", "--config", str(bad)), str(bad), "not valid TOML")


def test_unknown_hypercorn_setting_is_refused_not_ignored(tmp_path):
    typo = tmp_path / "typo.toml"
    typo.write_text("backlg = 2048\n")
    one_line_error(run("serve", "--config", str(typo)), str(typo), "'backlg'")


#: An invalid value for every setting that can be invalid; the rest take any string.
INVALID = {
    "redis_url": "http://127.0.0.1:6379", "redis_cluster_nodes": "http://127.0.0.1:7000",
    "redis_cluster_refresh_seconds": "0",
    "keepalive_seconds": "soon", "retry_ms": "-1",
    "queue_size": "0", "queue_bytes": "lots", "history_size": "-5", "history_ttl_seconds": "1.5",
    "redis_timeout_seconds": "0", "max_streams": "0", "max_channels_per_stream": "1001",
    "max_event_bytes": "1", "max_batch": "0", "max_body_bytes": "12", "tcp_user_timeout_ms": "-1",
    "send_buffer_bytes": "x", "drain_seconds": "-1", "private_channels": "bad channel!",
    "jwt_secret": "too-short", "jwt_public_key": "not a PEM key", "jwt_leeway_seconds": "301",
    "jwt_cookie": "a cookie", "cors_origins": "ftp://example.com", "trusted_proxies": "not-an-ip",
    "log_format": "xml", "log_level": "LOUD", "allow_anonymous_publish": "maybe",
    "max_retry_ms": "-1", "auth_cache_seconds": "-1", "auth_url": "ftp://app.internal/authorize",
    "idempotency_seconds": "-1", "write_timeout_seconds": "-1", "auth_timeout_seconds": "0", "debug_gc": "maybe",
    "write_delay_ms": "1001",
}
ANY_STRING = {"publish_tokens", "jwt_audience", "jwt_issuer", "metrics_dir"}
SETTING_NAMES = [f.name for f in fields(Settings)]


def test_every_setting_has_an_invalid_value_below_or_takes_any_string():
    assert set(SETTING_NAMES) <= set(INVALID) | ANY_STRING, set(SETTING_NAMES) - set(INVALID) - ANY_STRING


@pytest.mark.parametrize("name", [n for n in SETTING_NAMES if n in INVALID])
def test_every_invalid_setting_is_one_line_naming_the_variable(name):
    variable = env_name(name)
    result = run("serve", "--bind", f"127.0.0.1:{free_port()}", env=clean_env(**{variable: INVALID[name]}))
    one_line_error(result, variable)
    assert result.returncode == 2


def test_publish_without_any_redis_url_says_what_to_do():
    line = one_line_error(run("publish", "sse", '{"x": 1}'), "--redis-url", "--http", "PUSHSVC_REDIS_URL")
    assert "url=..." not in line  # not the Python API's wording


def test_publish_to_unreachable_redis_is_one_line_naming_it_without_the_password():
    port = free_port()
    line = one_line_error(run("publish", "sse", "1", "--redis-url", f"redis://:s3cret@127.0.0.1:{port}/0"),
                          f"127.0.0.1:{port}", "--redis-url")
    assert "s3cret" not in line


def test_publish_http_to_a_service_that_is_not_running_is_one_line_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    one_line_error(run("publish", "sse", "1", "--http", url), url, "pushsvc serve")


def test_publish_http_with_a_wrong_token_is_one_line_naming_the_url(service_factory):
    service = service_factory()
    line = one_line_error(run("publish", "sse", "1", "--http", service.base, "--token", "wrong"),
                          service.base + "/publish", "401", "--token")
    assert "wrong" not in line
    ok = run("publish", "sse", "1", "--http", service.base, "--token", TOKEN)
    assert ok.returncode == 0, ok.stderr


def test_debug_shows_the_traceback():
    result = run("--debug", "publish", "sse", "1", "--http", f"http://127.0.0.1:{free_port()}")
    assert result.returncode != 0 and "Traceback" in result.stderr
    result = run("publish", "sse", "1", "--http", f"http://127.0.0.1:{free_port()}", "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr


# -- which configuration `serve` takes, and says it took ---------------------------------

def serve_until_listening(cwd: Path, *args: str, **env: str) -> list[str]:
    """Start `pushsvc serve` in `cwd`, wait for it to answer, stop it; its log lines."""
    port = free_port()
    log = cwd / f"serve-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pushsvc.cli", "serve", "--bind", f"127.0.0.1:{port}", *args],
                                cwd=cwd, env=clean_env(**env), stdout=out, stderr=subprocess.STDOUT)
    try:
        def answers() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False
        wait_until(answers, 20, what="pushsvc serve to answer")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    return log.read_text().splitlines()


def config_line(lines: list[str]) -> dict[str, object]:
    found = [json.loads(line) for line in lines if '"hypercorn configuration"' in line]
    assert len(found) == 1, lines
    return found[0]


def listening_line(lines: list[str]) -> dict[str, object]:
    return next(json.loads(line) for line in lines if '"msg": "listening"' in line)


def test_outside_the_repository_serve_uses_and_names_the_packaged_defaults(tmp_path):
    lines = serve_until_listening(tmp_path, PUSHSVC_LOG_FORMAT="json")
    assert config_line(lines)["from"] == "packaged defaults"
    assert listening_line(lines)["backlog"] == 2048  # hypercorn.toml's, not Hypercorn's 100


def test_serve_prefers_a_local_hypercorn_toml_and_says_so(tmp_path):
    (tmp_path / "hypercorn.toml").write_text("backlog = 321\n")
    lines = serve_until_listening(tmp_path, PUSHSVC_LOG_FORMAT="json")
    assert config_line(lines)["from"] == "./hypercorn.toml"
    assert config_line(lines)["config"] == str(tmp_path / "hypercorn.toml")
    assert listening_line(lines)["backlog"] == 321


def test_serve_prefers_config_over_a_local_file_and_says_so(tmp_path):
    (tmp_path / "hypercorn.toml").write_text("backlog = 321\n")
    given = tmp_path / "given.toml"
    given.write_text("backlog = 123\n")
    lines = serve_until_listening(tmp_path, "--config", str(given), PUSHSVC_LOG_FORMAT="json")
    assert (config_line(lines)["from"], config_line(lines)["config"]) == ("--config", str(given))
    assert listening_line(lines)["backlog"] == 123


def test_the_packaged_defaults_are_the_repository_hypercorn_toml():
    packaged = files("pushsvc").joinpath("hypercorn.toml").read_bytes()
    assert packaged == (ROOT / "hypercorn.toml").read_bytes()


def test_with_json_logs_every_line_is_one_json_object_hypercorns_included(tmp_path):
    lines = serve_until_listening(tmp_path, "--config", str(ROOT / "hypercorn.toml"), PUSHSVC_LOG_FORMAT="json")
    entries = [json.loads(line) for line in lines]  # raises on any line that is not JSON
    assert any(e["logger"] == "hypercorn.error" and "Running on" in e["msg"] for e in entries), lines
    assert any(e["logger"] == "pushsvc.server" for e in entries), lines
