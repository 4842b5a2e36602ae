"""Settings: one frozen object read from ``PUSHSVC_*`` environment variables.

Every value is validated at start-up; a bad one raises `ConfigError` naming the variable.
Units are in the names.  The README has the table of every setting (kept in sync with
`SETTINGS` below by a test).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .keys import InvalidKey, load_public_key


class ConfigError(ValueError):
    pass


#: How much larger than its wire JSON an event can be as SSE bytes (a newline, 2 bytes
#: escaped in JSON, becomes ``\ndata: `` -- 7 bytes -- in the stream), rounded up.
FRAME_EXPANSION = 4


def _str(value: str) -> str:
    return value


def _opt_str(value: str) -> str | None:
    return value or None


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("expected true or false")


def _list(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _networks(value: str) -> tuple[str, ...]:
    items = _list(value)
    for item in items:
        ipaddress.ip_network(item, strict=False)  # ValueError names the bad item
    return items


def _int_range(low: int, high: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        number = int(value)
        if not low <= number <= high:
            raise ValueError(f"expected an integer from {low} to {high}")
        return number

    return parse


def _float_range(low: float, high: float) -> Callable[[str], float]:
    def parse(value: str) -> float:
        number = float(value)
        if not low <= number <= high:
            raise ValueError(f"expected a number from {low} to {high}")
        return number

    return parse


def _choice(*options: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return value

    return parse


def _setting(default: Any, parse: Callable[[str], Any], doc: str, secret: bool = False) -> Any:
    # A secret stays out of repr(settings), so a logged or printed Settings shows no credential.
    return field(default=default, metadata={"parse": parse, "doc": doc}, repr=not secret)


@dataclass(frozen=True)
class Settings:
    redis_url: str | None = _setting(
        None, _opt_str, "Redis URL (`redis://host:6379/0`). Unset: embedded in-process broker "
        "(one process only)."
    )
    redis_cluster_nodes: tuple[str, ...] = _setting(
        (), _list, "Redis Cluster seed URLs, comma-separated (`redis://10.0.0.1:7000,redis://10.0.0.2:7000`; "
        "`rediss://` and `redis://:password@` accepted; the first seed's password and TLS options, such as "
        "`rediss://10.0.0.1:7000?ssl_ca_certs=/etc/pushsvc/redis-ca.pem`, apply to every node). Channels are "
        "spread over the shards; raw "
        "publishers must use `SPUBLISH`. Not together with `PUSHSVC_REDIS_URL`.", secret=True
    )
    redis_cluster_refresh_seconds: float = _setting(
        1.0, _float_range(0.1, 3600), "Redis Cluster: read the topology (`CLUSTER SLOTS`) this often; it is "
        "also read at once when a node redirects a command, drops a subscription or a connection is lost."
    )
    publish_tokens: tuple[str, ...] = _setting(
        (), _list, "Comma-separated bearer tokens accepted by `POST /publish`.", secret=True
    )
    allow_anonymous_publish: bool = _setting(
        False, _bool, "Development only: accept `POST /publish` without a token."
    )
    keepalive_seconds: float = _setting(
        15.0, _float_range(0.2, 3600), "Heartbeat comment on idle streams after this long."
    )
    retry_ms: int = _setting(
        3000, _int_range(0, 3_600_000), "`retry:` hint sent to browsers (jittered +-20% at shutdown)."
    )
    queue_size: int = _setting(
        1000, _int_range(1, 1_000_000), "Per-subscriber queue bound, in events; a subscriber "
        "over it has its stream ended (it resumes from history)."
    )
    queue_bytes: int = _setting(
        1024 * 1024, _int_range(1024, 1 << 31), "Per-subscriber queue bound, in bytes (events are shared "
        "between subscribers; this bounds what one stalled stream can keep alive)."
    )
    history_size: int = _setting(
        1000, _int_range(0, 1_000_000), "Events kept per channel for resume (0: no history)."
    )
    history_ttl_seconds: int = _setting(
        3600, _int_range(0, 365 * 86400), "History and sequence of an idle channel expire after "
        "this long (0: never)."
    )
    redis_timeout_seconds: float = _setting(
        2.0, _float_range(0.05, 60), "Bound on one Redis operation; `POST /publish` answers 503 "
        "after it."
    )
    max_streams: int = _setting(
        20000, _int_range(1, 10_000_000), "Open streams per process; beyond it `/stream` answers "
        "with a jittered `retry:` and ends."
    )
    max_channels_per_stream: int = _setting(
        50, _int_range(1, 1000), "Channels one `/stream` may ask for."
    )
    max_event_bytes: int = _setting(
        256 * 1024, _int_range(64, 16 * 1024 * 1024), "Largest event accepted by `POST /publish` "
        "(413 beyond), counted as its stored JSON: the `data` value encoded as JSON (a string's quotes and "
        "escapes included) plus its `type` and `retry` fields; a 64 KiB string fits with the default."
    )
    max_batch: int = _setting(
        1000, _int_range(1, 100_000), "Most events in one `POST /publish` batch (413 beyond)."
    )
    max_retry_ms: int = _setting(
        60000, _int_range(0, 3_600_000), "Largest per-event `retry` a publisher may set (400 beyond)."
    )
    idempotency_seconds: int = _setting(
        300, _int_range(1, 7 * 86400), "How long an `Idempotency-Key` (or `idempotency_key`) is "
        "remembered: a repeat within it stores nothing new and answers the original ids."
    )
    max_body_bytes: int = _setting(
        1024 * 1024, _int_range(1024, 256 * 1024 * 1024), "Largest `POST /publish` body (413)."
    )
    tcp_user_timeout_ms: int = _setting(
        30000, _int_range(0, 3_600_000), "`TCP_USER_TIMEOUT` on the listening socket (`pushsvc "
        "serve`): a peer that stops reading is cut after this long (0: kernel default)."
    )
    send_buffer_bytes: int = _setting(
        262144, _int_range(0, 64 * 1024 * 1024), "`SO_SNDBUF` of accepted sockets (`pushsvc serve`): "
        "bounds the kernel memory and copying spent on a peer that stops reading (0: kernel autotuning)."
    )
    write_timeout_seconds: float = _setting(
        30.0, _float_range(0, 86400), "A stream whose pending write has not completed after this "
        "long is ended (reason `write_timeout`) and its queue and session released, without waiting "
        "for `TCP_USER_TIMEOUT` (0: no deadline)."
    )
    write_delay_ms: int = _setting(
        0, _int_range(0, 1000), "Coalescing window per stream: a stream that has just written waits up "
        "to this long to collect further events into one write (one write per window instead of one per "
        "event: less CPU for streams receiving many events per second, at most this much added latency). "
        "A write still goes out at once when it reaches the per-write byte cap or half the queue bound; "
        "heartbeats and stream ends are never delayed (0: every event written at once)."
    )
    drain_seconds: float = _setting(
        2.0, _float_range(0, 300), "On SIGTERM, how long `pushsvc serve` waits for streams to "
        "end; keep it below Hypercorn's graceful_timeout."
    )
    private_channels: tuple[str, ...] = _setting(
        (), _list, "Comma-separated channel patterns (`*` matches any run of characters, `*` "
        "alone: every channel) whose streams need a JWT allowing them."
    )
    jwt_secret: str | None = _setting(
        None, _opt_str, "HS256 shared secret (at least 32 bytes) for subscriber and publisher JWTs.",
        secret=True,
    )
    jwt_public_key: str | None = _setting(
        None, _opt_str, "PEM public key for RS256 (RSA) or ES256 (EC P-256) JWTs; the algorithm "
        "follows the key type."
    )
    jwt_audience: str | None = _setting(
        None, _opt_str, "Required `aud` of JWTs (unset: tokens carrying an `aud` are refused)."
    )
    jwt_issuer: str | None = _setting(None, _opt_str, "Required `iss` of JWTs (unset: not checked).")
    jwt_leeway_seconds: int = _setting(
        5, _int_range(0, 300), "Clock leeway for `exp` and `nbf`; a stream closes at `exp` plus it."
    )
    jwt_cookie: str = _setting(
        "pushsvc_token", _str, "Cookie read for a subscriber JWT (after `Authorization: Bearer`, "
        "before `?token=`)."
    )
    # -- the app authorises subscribers (issue 15) --
    auth_url: str | None = _setting(
        None, _opt_str, "URL of the app's authorisation callback: a stream asking for private channels "
        "without a JWT is authorised by a `POST` there (see Private channels)."
    )
    auth_timeout_seconds: float = _setting(
        2.0, _float_range(0.05, 60), "Bound on one call to `PUSHSVC_AUTH_URL`; no answer in time is a "
        "refusal for now (the stream gets a jittered `retry:` and ends)."
    )
    auth_cache_seconds: float = _setting(
        0.0, _float_range(0, 86400), "How long an app's \"allowed\" is reused per (credentials, "
        "channel) (0: every stream asks the app)."
    )
    cors_origins: tuple[str, ...] = _setting(
        (), _list, "Comma-separated exact origins (`https://app.example.com`) allowed to read "
        "streams and publish from a browser, with credentials; `*` alone: any origin, without "
        "credentials."
    )
    trusted_proxies: tuple[str, ...] = _setting(
        (), _networks, "Comma-separated IPs/CIDRs of reverse proxies whose `X-Forwarded-For` is "
        "believed (the client address in logs); from any other peer the header is ignored."
    )
    metrics_dir: str | None = _setting(
        None, _opt_str, "Directory where each worker writes its counters every second so that "
        "any worker's `/metrics` reports the sum; `pushsvc serve --workers N` makes one itself."
    )
    debug_gc: bool = _setting(
        False, _bool, "Development only: serve `/debug/gc` (live objects, and what the garbage "
        "collector finds in reference cycles, by type) for leak tests."
    )
    log_format: str = _setting("text", _choice("text", "json"), "`text` or `json` (one object "
                               "per line).")
    log_level: str = _setting(
        "INFO", _choice("DEBUG", "INFO", "WARNING", "ERROR"), "Log level."
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = env_name(f.name)
            if name in env:
                try:
                    values[f.name] = f.metadata["parse"](env[name])
                except ValueError as exc:
                    raise ConfigError(f"{name}={env[name]!r} is invalid: {exc}") from None
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.redis_url is not None and not self.redis_url.startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise ConfigError(
                f"{env_name('redis_url')} must start with redis://, rediss:// or unix://"
            )
        if self.redis_cluster_nodes and self.redis_url is not None:
            raise ConfigError(
                f"set {env_name('redis_url')} or {env_name('redis_cluster_nodes')}, not both"
            )
        for seed in self.redis_cluster_nodes:
            if not seed.startswith(("redis://", "rediss://")):
                raise ConfigError(
                    f"{env_name('redis_cluster_nodes')}: every seed must start with redis:// or rediss://"
                )
        self._validate_security()
        self._validate_bounds()

    @property
    def uses_redis(self) -> bool:
        """Events cross processes (a Redis or a Redis Cluster is configured)."""
        return self.redis_url is not None or bool(self.redis_cluster_nodes)

    def _validate_bounds(self) -> None:
        """Settings that each parse but contradict each other: name both."""
        if self.max_event_bytes > self.max_body_bytes:
            raise ConfigError(
                f"{env_name('max_event_bytes')}={self.max_event_bytes} must not exceed "
                f"{env_name('max_body_bytes')}={self.max_body_bytes}: such an event could never be sent"
            )
        need = FRAME_EXPANSION * self.max_event_bytes
        if self.queue_bytes < need:
            raise ConfigError(
                f"{env_name('queue_bytes')}={self.queue_bytes} is too small for "
                f"{env_name('max_event_bytes')}={self.max_event_bytes}: one accepted event can take up "
                f"to {FRAME_EXPANSION}x its size in a stream ('data: ' on every line), so it would cut "
                f"every subscriber; set {env_name('queue_bytes')} to at least {need} or lower "
                f"{env_name('max_event_bytes')}"
            )
        if self.max_batch > self.queue_size:
            raise ConfigError(
                f"{env_name('max_batch')}={self.max_batch} exceeds {env_name('queue_size')}="
                f"{self.queue_size}: one accepted batch to a channel would overflow the queue of every "
                f"subscriber of it; lower {env_name('max_batch')} or raise {env_name('queue_size')}"
            )

    def _validate_security(self) -> None:
        from .patterns import PATTERN_RE

        for pattern in self.private_channels:
            if PATTERN_RE.fullmatch(pattern) is None:
                raise ConfigError(
                    f"{env_name('private_channels')}: {pattern!r} is not a channel pattern (1 to 200 "
                    "letters, digits, _ - . : @ / or the wildcard *)"
                )
        if self.jwt_secret is not None and len(self.jwt_secret.encode("utf-8")) < 32:
            raise ConfigError(f"{env_name('jwt_secret')} must be at least 32 bytes (RFC 7518 3.2)")
        if self.jwt_public_key is not None:
            try:
                load_public_key(self.jwt_public_key)
            except InvalidKey as exc:
                raise ConfigError(f"{env_name('jwt_public_key')}: {exc}") from None
        if (self.private_channels and self.jwt_secret is None and self.jwt_public_key is None
                and self.auth_url is None):
            raise ConfigError(
                f"{env_name('private_channels')} is set but nothing authorises subscribers: set "
                f"{env_name('jwt_secret')}, {env_name('jwt_public_key')} or {env_name('auth_url')}"
            )
        if self.auth_url is not None and not self.auth_url.startswith(("http://", "https://")):
            raise ConfigError(f"{env_name('auth_url')} must be an http:// or https:// URL")
        if not _COOKIE_NAME_RE.fullmatch(self.jwt_cookie):
            raise ConfigError(f"{env_name('jwt_cookie')}={self.jwt_cookie!r} is not a cookie name")
        if "*" in self.cors_origins and len(self.cors_origins) > 1:
            raise ConfigError(
                f"{env_name('cors_origins')}: '*' (any origin, no credentials) cannot be combined "
                "with named origins"
            )
        for origin in self.cors_origins:
            if origin != "*" and _ORIGIN_RE.fullmatch(origin) is None:
                raise ConfigError(
                    f"{env_name('cors_origins')}: {origin!r} is not an origin like "
                    "https://app.example.com (scheme, host, optional port; no path)"
                )


_COOKIE_NAME_RE = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]{1,100}")
_ORIGIN_RE = re.compile(r"https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def env_name(field_name: str) -> str:
    return "PUSHSVC_" + field_name.upper()


def settings_table() -> list[tuple[str, str, str]]:
    """(variable, default, description) for every setting: the README's table."""
    rows = []
    for f in fields(Settings):
        default = f.default
        shown = "unset" if default is None or default == () else str(default).lower() if isinstance(
            default, bool) else str(default)
        rows.append((env_name(f.name), shown, f.metadata["doc"]))
    return rows


def settings_markdown() -> str:
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    lines += [f"| `{name}` | `{default}` | {doc} |" for name, default, doc in settings_table()]
    return "\n".join(lines)
