"""The Dockerfile, checked without a Docker engine: every file it COPYs exists, the image
runs as a non-root user with a HEALTHCHECK on /healthz, and its CMD starts the service from
a clean virtual environment built with the Dockerfile's own `pip install` line (in a copy
of exactly what the Dockerfile copies), answers /healthz (also through the HEALTHCHECK's
command), and exits 0 on SIGTERM.  Not skipped under CI; about 10-30 s (pip's cache)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.procs import ROOT, free_port, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.container]

DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def copies() -> list[tuple[list[str], str]]:
    found = []
    for keyword, rest in instructions():
        if keyword == "COPY":
            *sources, dest = shlex.split(rest)
            assert not any(s.startswith("--") for s in sources), "COPY flags are not handled here"
            found.append((sources, dest))
    return found


def only(keyword: str) -> str:
    values = [rest for k, rest in instructions() if k == keyword]
    assert len(values) == 1, f"expected one {keyword}, got {values}"
    return values[0]


def test_every_copied_file_exists():
    assert copies()
    for sources, _ in copies():
        for source in sources:
            assert (ROOT / source).exists(), f"the Dockerfile copies {source!r}, which is missing"


def test_runs_as_non_root_with_a_healthcheck_on_healthz():
    assert only("USER") not in ("root", "0")
    assert "/healthz" in only("HEALTHCHECK")
    assert "pip install ." in only("RUN")


def test_cmd_starts_the_service_from_a_clean_venv_built_like_the_image(tmp_path: Path):
    workdir = only("WORKDIR")
    app = tmp_path / "app"
    app.mkdir()
    for sources, dest in copies():  # what the image holds, and nothing else
        target = app / dest.removeprefix(workdir).strip("/") if dest not in (".", "./") else app
        for source in sources:
            path = ROOT / source
            if path.is_dir():
                shutil.copytree(path, target if dest not in (".", "./") else app / source,
                                ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target / path.name)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    bin_dir = venv / "bin"
    env = {"PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"),
           "PYTHONDONTWRITEBYTECODE": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    install = only("RUN").split("&&")[0].split()
    assert install[:2] == ["pip", "install"], install
    subprocess.run([str(bin_dir / "pip"), *install[1:], "-q"], cwd=app, env=env, check=True,
                   timeout=600, capture_output=True)

    command = json.loads(only("CMD"))
    port = free_port()
    command = [c.replace("0.0.0.0:8000", f"127.0.0.1:{port}").replace(workdir, str(app)) for c in command]
    assert command[:2] == ["pushsvc", "serve"], command
    with open(tmp_path / "log.txt", "wb") as log:
        proc = subprocess.Popen(command, cwd=app, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        def healthy() -> bool:
            if proc.poll() is not None:
                raise AssertionError((tmp_path / "log.txt").read_text())
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, 20, what="the image's command to serve /healthz")
        # Package data made it into the non-editable install: the demo page and the API doc.
        assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=5).json()["openapi"].startswith("3.")
        assert httpx.get(f"http://127.0.0.1:{port}/admin", timeout=5).status_code == 200
        packaged = subprocess.run(  # the defaults `pushsvc serve` falls back on outside a checkout
            [str(bin_dir / "python"), "-c", "from importlib.resources import files; import sys; "
             "sys.stdout.write(files('pushsvc').joinpath('hypercorn.toml').read_text())"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30, check=True).stdout
        assert packaged == (ROOT / "hypercorn.toml").read_text()
        healthcheck = json.loads(only("HEALTHCHECK").split("CMD", 1)[1])
        healthcheck = [c.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for c in healthcheck]
        assert subprocess.run(healthcheck, env=env, timeout=10).returncode == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            raise
    assert code == 0, (tmp_path / "log.txt").read_text()
