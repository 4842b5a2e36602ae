"""A real Redis Cluster on loopback: six `redis-server --cluster-enabled yes` (three masters,
one replica each), joined with `redis-cli --cluster create`; helpers to fail over, kill a
master, find a slot's owner, reshard with `redis-cli`.  Optionally password-protected
(`requirepass` + `masterauth`) or TLS-only (`tls-cluster`, `tls-replication`, certificates
made with openssl at start)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import redis
from redis.cluster import key_slot

from tests.support.procs import require_binary, wait_until


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    for _ in range(1000):
        port = random.randint(20000, 50000)
        if _free(port) and _free(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


@dataclass(frozen=True)
class TLSFiles:
    """A test CA and one server certificate (for 127.0.0.1) signed by it."""

    ca: str
    cert: str
    key: str

    @classmethod
    def make(cls, root: str) -> TLSFiles:
        openssl = require_binary("openssl")
        ca, ca_key = os.path.join(root, "ca.crt"), os.path.join(root, "ca.key")
        cert, key, csr = (os.path.join(root, name) for name in ("node.crt", "node.key", "node.csr"))
        ext = os.path.join(root, "san.ext")
        with open(ext, "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        for args in (
            ["req", "-x509", "-new", "-nodes", "-newkey", "rsa:2048", "-keyout", ca_key, "-out", ca,
             "-days", "2", "-subj", "/CN=pushsvc test CA"],
            ["req", "-new", "-nodes", "-newkey", "rsa:2048", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
            ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
             "-days", "2", "-extfile", ext],
        ):
            subprocess.run([openssl, *args], check=True, capture_output=True, timeout=60)
        return cls(ca, cert, key)


class ClusterNode:
    def __init__(self, binary: str, root: str, password: str | None = None, tls: TLSFiles | None = None) -> None:
        self.binary = binary
        self.port = cluster_port()
        self.dir = os.path.join(root, str(self.port))
        os.makedirs(self.dir)
        self.password = password
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The node as a pushsvc seed URL (password and CA included)."""
        auth = f":{self.password}@" if self.password else ""
        if self.tls is not None:
            return f"rediss://{auth}127.0.0.1:{self.port}?ssl_ca_certs={self.tls.ca}"
        return f"redis://{auth}127.0.0.1:{self.port}"

    def server_args(self) -> list[str]:
        args = ["--bind", "127.0.0.1", "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "1000", "--save", "",
                "--appendonly", "no", "--dir", self.dir, "--protected-mode", "no"]
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        if self.tls is None:
            return ["--port", str(self.port), *args]
        return ["--port", "0", "--tls-port", str(self.port), "--tls-cluster", "yes", "--tls-replication", "yes",
                "--tls-cert-file", self.tls.cert, "--tls-key-file", self.tls.key,
                "--tls-ca-cert-file", self.tls.ca, "--tls-auth-clients", "no", *args]

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, *self.server_args()], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until(self._pings, 10, what=f"cluster node {self.port} to answer")

    def _pings(self) -> bool:
        try:
            with self.client(0.5) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def client(self, timeout: float = 5) -> redis.Redis:
        options: dict[str, Any] = {"password": self.password}
        if self.tls is not None:
            options.update(ssl=True, ssl_ca_certs=self.tls.ca)
        return redis.Redis(port=self.port, socket_timeout=timeout, **options)

    def cli_args(self) -> list[str]:
        """redis-cli's options to reach this node (password, TLS)."""
        args = ["-a", self.password, "--no-auth-warning"] if self.password else []
        return args + (["--tls", "--cacert", self.tls.ca] if self.tls is not None else [])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cluster_state(self) -> str:
        with self.client(1) as client:
            info = client.execute_command("CLUSTER INFO")
        if isinstance(info, dict):
            return str(info.get("cluster_state", ""))
        text = info.decode() if isinstance(info, bytes) else str(info)
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line).get("cluster_state", "")

    def role(self) -> str:
        with self.client(1) as client:
            return str(client.info("replication").get("role"))

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None


class RedisCluster:
    """`size` nodes: three masters, and replicas when `size` is 6 (with 3, none)."""

    def __init__(self, size: int = 6, password: str | None = None, tls: bool = False) -> None:
        self.binary = require_binary("redis-server")
        self.cli = require_binary("redis-cli")
        self.root = tempfile.mkdtemp(prefix="pushsvc-cluster-")
        self.replicas = size // 3 - 1
        self.tls = TLSFiles.make(self.root) if tls else None
        self.nodes = [ClusterNode(self.binary, self.root, password, self.tls) for _ in range(size)]

    @property
    def seeds(self) -> str:
        """PUSHSVC_REDIS_CLUSTER_NODES: two seeds."""
        return ",".join(node.url for node in self.nodes[:2])

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [self.cli, *self.nodes[0].cli_args(), "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
        )
        self.wait_ok(replicated=self.replicas > 0)

    def wait_ok(self, timeout: float = 30, replicated: bool = True) -> None:
        """Every live node says cluster_state:ok, three masters (each with a replica unless
        `replicated` is False: after a kill, until the dead node is back)."""
        def ok() -> bool:
            try:
                view = self._view()
                return all(n.cluster_state() == "ok" for n in self.nodes if n.alive()) \
                    and len({master for _, _, master, _ in view}) == 3 \
                    and all(replicas for *_, replicas in view) == replicated
            except redis.RedisError:
                return False
        wait_until(ok, timeout, interval=0.1, what="cluster_state:ok on every node")

    def _view(self) -> list[tuple[int, int, int, list[int]]]:
        """(first slot, last slot, master port, replica ports) from a live node."""
        for node in self.nodes:
            if not node.alive():
                continue
            try:
                with node.client() as client:
                    slots = client.execute_command("CLUSTER SLOTS")
            except redis.RedisError:
                continue
            return [(int(s[0]), int(s[1]), int(s[2][1]), [int(r[1]) for r in s[3:]]) for s in slots]
        raise RuntimeError("no live cluster node answers")

    def masters(self) -> list[ClusterNode]:
        ports = {master for _, _, master, _ in self._view()}
        return [n for n in self.nodes if n.port in ports and n.alive()]

    def node(self, port: int) -> ClusterNode:
        return next(n for n in self.nodes if n.port == port)

    def owner(self, channel_or_key: str) -> ClusterNode:
        return self.owner_of_slot(key_slot(channel_or_key.encode()))

    def owner_of_slot(self, slot: int) -> ClusterNode:
        for lo, hi, master, _ in self._view():
            if lo <= slot <= hi:
                return self.node(master)
        raise LookupError(f"slot {slot} not covered")

    def replica_of(self, master: ClusterNode) -> ClusterNode:
        for _, _, port, replicas in self._view():
            if port == master.port and replicas:
                return self.node(replicas[0])
        raise LookupError(f"{master.port} has no replica")

    def failover(self, master: ClusterNode, force: bool = False, timeout: float = 30) -> ClusterNode:
        """CLUSTER FAILOVER on the master's replica; returns the new master once it serves."""
        replica = self.replica_of(master)
        with replica.client() as client:
            client.execute_command("CLUSTER FAILOVER", *(["FORCE"] if force else []))
        wait_until(lambda: replica.role() == "master", timeout, interval=0.05,
                   what="the replica to take over")
        self.wait_ok(timeout)
        return replica

    def kill_master(self, master: ClusterNode, timeout: float = 30) -> ClusterNode:
        """kill -9 a master; returns its replica once the cluster has promoted it."""
        replica = self.replica_of(master)
        master.kill()
        wait_until(lambda: replica.role() == "master", timeout, interval=0.05,
                   what="the replica to be promoted")
        self.wait_ok(timeout, replicated=False)
        return replica

    def restart(self, node: ClusterNode, timeout: float = 30) -> None:
        """Start a killed node again (it rejoins, as a replica) and wait until all is ok."""
        node.start()
        deadline = time.monotonic() + timeout
        self.wait_ok(max(1.0, deadline - time.monotonic()))

    def node_id(self, node: ClusterNode) -> str:
        with node.client() as client:
            raw = client.execute_command("CLUSTER MYID")
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def move_slot(self, slot: int, target: ClusterNode, batch: int = 100) -> ClusterNode:
        """Migrate one slot (keys included) to `target`, as `redis-cli --cluster reshard`
        does; returns the former owner."""
        source = next(self.node(m) for lo, hi, m, _ in self._view() if lo <= slot <= hi)
        source_id, target_id = self.node_id(source), self.node_id(target)
        with source.client() as src, target.client() as dst:
            dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
            src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
            while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, batch):
                src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
            for master in self.masters():
                with master.client() as client:
                    client.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
        self.wait_ok()
        return source

    def reshard(self, source: ClusterNode, target: ClusterNode, slots: int = 1, timeout: float = 120) -> str:
        """`redis-cli --cluster reshard`: move `slots` slots (the source's lowest) with their
        keys from `source` to `target`; returns redis-cli's output."""
        done = subprocess.run(
            [self.cli, *source.cli_args(), "--cluster", "reshard", f"127.0.0.1:{source.port}",
             "--cluster-from", self.node_id(source), "--cluster-to", self.node_id(target),
             "--cluster-slots", str(slots), "--cluster-yes"],
            capture_output=True, text=True, timeout=timeout,
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        self.wait_ok(replicated=self.replicas > 0)
        return done.stdout

    def slots_of(self, node: ClusterNode) -> list[int]:
        """The slots `node` serves, lowest first."""
        return sorted(s for lo, hi, m, _ in self._view() if m == node.port for s in range(lo, hi + 1))

    def shard_subscribers(self, node: ClusterNode, name: str) -> int:
        """PUBSUB SHARDNUMSUB `name` on `node`: its sharded subscribers there."""
        with node.client() as client:
            reply = client.execute_command("PUBSUB SHARDNUMSUB", name)
        if isinstance(reply, dict):
            return int(next(iter(reply.values())))
        if reply and isinstance(reply[0], (tuple, list)):  # parsed into (name, count) pairs
            return int(reply[0][1])
        return int(reply[1])

    def pubsub_clients(self, node: ClusterNode, name: str = "pushsvc-pubsub") -> int:
        with node.client() as client:
            listed = client.execute_command("CLIENT LIST TYPE pubsub")
        text = listed.decode() if isinstance(listed, bytes) else str(listed)
        return sum(1 for line in text.splitlines() if f"name={name}" in line)

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
        shutil.rmtree(self.root, ignore_errors=True)
