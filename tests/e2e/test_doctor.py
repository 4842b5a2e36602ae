"""`pushsvc doctor URL` against real set-ups: pushsvc directly, behind deploy/nginx.conf
(all well, exit 0), behind an nginx that compresses the stream (`gzip on; gzip_types
text/event-stream;`; nginx 1.22 here flushes its compressor per upstream chunk, so events
still came through, but a compressing proxy may hold them) and behind one whose proxy_read_timeout
is shorter than the heartbeat interval (both diagnosed: exit 1 and a line naming the cause
and the fix).  Each report is saved to artifacts/doctor-*.txt."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from tests.support.helpers import TOKEN
from tests.support.nginx import Nginx
from tests.support.procs import ROOT, Service

pytestmark = [pytest.mark.e2e]

ARTIFACTS = ROOT / "artifacts"


def doctor(url: str, *args: str, name: str | None = None) -> tuple[int, str]:
    result = subprocess.run([sys.executable, "-m", "pushsvc.cli", "doctor", url, *args],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert "Traceback" not in result.stderr, result.stderr
    if name is not None:
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / f"doctor-{name}.txt").write_text(f"$ pushsvc doctor {url} {' '.join(args)}\n"
                                                      f"{result.stdout}(exit {result.returncode})\n")
    return result.returncode, result.stdout


def failures(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip().startswith("FAIL")]


def finding(output: str, topic: str) -> str:
    lines = [line for line in output.splitlines() if line[8:].startswith(topic + ":")]
    assert len(lines) == 1, output
    return lines[0]


@pytest.fixture
def nginx_factory() -> Iterator[Callable[..., Nginx]]:
    started: list[Nginx] = []

    def make(upstream: Service, stream_read_timeout: str = "60s", edit: Callable[[str], str] | None = None) -> Nginx:
        nginx = Nginx([upstream.port], stream_read_timeout=stream_read_timeout)
        started.append(nginx)
        if edit is not None:
            nginx.conf.write_text(edit(nginx.conf.read_text()))
        return nginx.start()

    yield make
    for nginx in started:
        nginx.stop()


def fast_heartbeats(service_factory: Callable[..., Service], seconds: str = "0.5") -> Service:
    return service_factory({"PUSHSVC_KEEPALIVE_SECONDS": seconds, "PUSHSVC_CORS_ORIGINS": "https://app.example.com"})


def assert_all_well(code: int, output: str) -> None:
    assert code == 0, output
    assert not failures(output), output
    assert output.rstrip().endswith("all well"), output
    for topic in ("HTTP version", "retry", "buffering", "resume", "heartbeats", "CORS"):
        finding(output, topic)


def test_all_well_against_pushsvc_directly(service_factory):
    service = fast_heartbeats(service_factory)
    code, output = doctor(service.base, "--token", TOKEN, "--idle", "2", "--origin", "https://app.example.com",
                          name="direct")
    assert_all_well(code, output)
    assert "HTTP/1.1" in finding(output, "HTTP version")
    assert "3000 ms" in finding(output, "retry")


def test_all_well_behind_the_shipped_nginx_conf(service_factory, nginx_factory):
    nginx = nginx_factory(fast_heartbeats(service_factory))
    code, output = doctor(nginx.base, "--token", TOKEN, "--idle", "2", "--origin", "https://app.example.com",
                          name="nginx-deploy-conf")
    assert_all_well(code, output)


def test_an_nginx_that_holds_the_stream_back_is_diagnosed(service_factory, nginx_factory):
    # Compression with buffering (X-Accel-Buffering ignored, as an intermediate may strip it):
    # measured here, nothing at all -- not even the response head -- arrives for seconds.
    def hold_back(conf: str) -> str:
        assert conf.count("gzip off;") == 1 and conf.count("proxy_buffering off;") == 1
        return conf.replace("gzip off;", "gzip on; gzip_types text/event-stream;").replace(
            "proxy_buffering off;", "proxy_buffering on; proxy_ignore_headers X-Accel-Buffering;")

    nginx = nginx_factory(fast_heartbeats(service_factory), edit=hold_back)
    code, output = doctor(nginx.base, "--token", TOKEN, "--idle", "2", name="nginx-gzip-held-back")
    assert code == 1, output
    line = finding(output, "buffering")
    assert "FAIL" in line and "nothing arrived" in line and "compress" in line and "gzip off;" in line, output


def test_an_nginx_that_compresses_the_stream_is_diagnosed(service_factory, nginx_factory):
    def gzip_streams(conf: str) -> str:
        assert conf.count("gzip off;") == 1
        return conf.replace("gzip off;", "gzip on; gzip_types text/event-stream;")

    nginx = nginx_factory(fast_heartbeats(service_factory), edit=gzip_streams)
    code, output = doctor(nginx.base, "--token", TOKEN, "--idle", "2", name="nginx-gzip")
    assert code == 1, output
    line = finding(output, "compression")
    assert "FAIL" in line and "gzip" in line and "gzip off;" in line, output


def test_an_nginx_read_timeout_shorter_than_the_heartbeat_is_diagnosed(service_factory, nginx_factory):
    service = fast_heartbeats(service_factory, seconds="3")
    nginx = nginx_factory(service, stream_read_timeout="1s")
    code, output = doctor(nginx.base, "--token", TOKEN, "--idle", "4", name="nginx-short-read-timeout")
    assert code == 1, output
    line = finding(output, "idle")
    assert "FAIL" in line and "cut after" in line, output
    assert "proxy_read_timeout" in line and "PUSHSVC_KEEPALIVE_SECONDS" in line, output


def test_a_cors_origin_the_service_does_not_allow_is_diagnosed(service_factory):
    service = fast_heartbeats(service_factory)
    code, output = doctor(service.base, "--token", TOKEN, "--idle", "1", "--origin", "https://other.example")
    assert code == 1, output
    line = finding(output, "CORS")
    assert "FAIL" in line and "PUSHSVC_CORS_ORIGINS" in line, output


def test_without_a_publish_token_doctor_says_so_and_fails(service_factory):
    service = fast_heartbeats(service_factory)
    code, output = doctor(service.base, "--idle", "1")
    assert code == 1, output
    assert "--token" in finding(output, "publish"), output


def test_heartbeats_longer_than_idle_are_not_called_well(service_factory):
    service = fast_heartbeats(service_factory, seconds="30")
    code, output = doctor(service.base, "--token", TOKEN, "--idle", "1")
    assert code == 1, output
    assert "--idle" in finding(output, "heartbeats"), output


def test_a_url_where_nothing_listens_is_one_failure_line():
    from tests.support.procs import free_port

    url = f"http://127.0.0.1:{free_port()}"
    code, output = doctor(url, "--idle", "1")
    assert code == 1, output
    assert url in finding(output, "stream"), output


def test_a_private_probe_channel_is_named_as_the_one_problem(service_factory):
    from tests.support.jwts import SECRET

    service = service_factory({"PUSHSVC_PRIVATE_CHANNELS": "*", "PUSHSVC_JWT_SECRET": SECRET})
    code, output = doctor(service.base, "--token", TOKEN, "--idle", "1")
    assert code == 1, output
    assert len(failures(output)) == 1, output  # not also blamed on buffering
    assert "PUSHSVC_PRIVATE_CHANNELS" in finding(output, "stream"), output
