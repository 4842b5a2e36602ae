"""A real nginx (Debian's package) in the foreground, running deploy/nginx.conf with test
ports and paths substituted, everything under a private temporary prefix."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from .procs import ROOT, free_port, require_binary, wait_until

DEPLOY_CONF = ROOT / "deploy" / "nginx.conf"


def render_site(upstream_ports: list[int], port: int, stream_read_timeout: str) -> str:
    """deploy/nginx.conf with its upstreams, listen address and stream read timeout replaced."""
    conf = DEPLOY_CONF.read_text()
    servers = "".join(f"    server 127.0.0.1:{p} max_fails=3 fail_timeout=5s;\n" for p in upstream_ports)
    conf, upstreams = re.subn(r"(upstream pushsvc \{\n(?:\s*#[^\n]*\n)*)(?:\s*server [^\n]*\n)+",
                              lambda m: m.group(1) + servers, conf)
    conf, listens = re.subn(r"listen 80;", f"listen 127.0.0.1:{port};", conf)
    conf, timeouts = re.subn(r"(location = /stream \{[^}]*proxy_read_timeout )60s;",
                             lambda m: m.group(1) + stream_read_timeout + ";", conf)
    assert (upstreams, listens, timeouts) == (1, 1, 1), "deploy/nginx.conf changed shape"
    return conf


class Nginx:
    def __init__(self, upstream_ports: list[int], stream_read_timeout: str = "60s") -> None:
        self.binary = require_binary("nginx")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="pushsvc-nginx-"))
        os.chmod(self.dir, 0o755)  # nginx workers (user nobody) use the temp paths below
        site = render_site(upstream_ports, self.port, stream_read_timeout)
        d = self.dir
        self.conf = d / "nginx.conf"
        self.conf.write_text(f"""
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 512; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
{site}
}}
""")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Nginx:
        with open(self.dir / "stderr.log", "wb") as stderr:
            self.proc = subprocess.Popen(
                [self.binary, "-p", str(self.dir), "-c", str(self.conf), "-e", str(self.dir / "error.log")],
                stdout=subprocess.DEVNULL, stderr=stderr,
            )
        wait_until(self._accepts, 10, what="nginx to listen")
        return self

    def _accepts(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"nginx exited: {(self.dir / 'stderr.log').read_text()}"
                               f"{(self.dir / 'error.log').read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)
