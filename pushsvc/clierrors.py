"""What the `pushsvc` command prints when something goes wrong: one line saying what went
wrong, where (address, URL or file) and what to do, and an exit status; never a traceback
(``pushsvc --debug ...`` shows it).  `pushsvc.cli.main` calls `check_arguments` before a
command and `explain` on whatever the command raised."""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
from urllib.parse import urlsplit

from .broker.scripts import IdempotencyConflict
from .config import ConfigError
from .events import EventError

#: Exit statuses: a mistake in what was asked (arguments, settings, files), and a failure
#: of something the command needed (Redis, the service).
USAGE, FAILURE = 2, 1

HTTP_HINTS = {
    401: "pass a publish token the service accepts with --token or PUSHSVC_TOKEN",
    403: "use a token allowed to publish to this channel (or check PUSHSVC_PUBLISH_TOKENS)",
    404: "is this the base URL of a pushsvc service?",
    413: "send a smaller event, or raise PUSHSVC_MAX_EVENT_BYTES / PUSHSVC_MAX_BODY_BYTES",
    503: "the service cannot reach its broker; try again when /readyz answers 200",
}


class CommandError(Exception):
    """A failure already worded for the user."""

    def __init__(self, message: str, status: int = FAILURE) -> None:
        super().__init__(message)
        self.status = status


def redact_url(url: str) -> str:
    """The URL without its password (Redis URLs may carry one)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:***@" if parts.username else "***@"
    return parts._replace(netloc=user + netloc).geturl()


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse what cannot work before the command starts."""
    if args.command == "publish" and not args.http and not args.redis_url \
            and not getattr(args, "cluster_nodes", None) and not os.environ.get("PUSHSVC_REDIS_URL") \
            and not os.environ.get("PUSHSVC_REDIS_CLUSTER_NODES"):
        raise CommandError(
            "publish: no Redis to publish to: pass --redis-url redis://HOST:6379/0, or publish "
            "through a running service with --http http://127.0.0.1:8000 --token TOKEN, or set "
            "PUSHSVC_REDIS_URL (on Redis Cluster: --cluster-nodes or PUSHSVC_REDIS_CLUSTER_NODES)", USAGE)


def http_failure(error: urllib.error.HTTPError, url: str) -> str:
    """One line for an error answer of the service (`publish --http`)."""
    try:
        body = json.loads(error.read() or b"{}")
        detail = f"{body.get('error')}: {body.get('detail')}" if isinstance(body, dict) else str(body)
    except ValueError:
        detail = error.reason
    hint = HTTP_HINTS.get(error.code, "")
    return f"publish: {url} answered {error.code} ({detail})" + (f"; {hint}" if hint else "")


def _redis_url(args: argparse.Namespace) -> str:
    return redact_url(getattr(args, "redis_url", None) or os.environ.get("PUSHSVC_REDIS_URL") or "?")


def explain(exc: BaseException, args: argparse.Namespace) -> tuple[str, int]:
    """(one line, exit status) for an exception a command raised."""
    import redis

    command = args.command
    if isinstance(exc, CommandError):
        return str(exc), exc.status
    if isinstance(exc, ConfigError | EventError):
        return f"{command}: {exc}", USAGE
    if isinstance(exc, IdempotencyConflict):
        return (f"{command}: this idempotency key was already used for a different request (nothing was "
                "published); use a new key"), USAGE
    if isinstance(exc, redis.AuthenticationError | redis.exceptions.AuthenticationWrongNumberOfArgsError):
        return (f"{command}: Redis at {_redis_url(args)} refused the credentials ({exc}); "
                "put the right user and password in the URL"), FAILURE
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return (f"{command}: cannot reach Redis at {_redis_url(args)} ({exc}); start Redis or fix "
                "--redis-url / PUSHSVC_REDIS_URL, or publish through the service with --http URL"), FAILURE
    if isinstance(exc, redis.RedisError):
        return f"{command}: Redis at {_redis_url(args)} answered an error: {exc}", FAILURE
    if isinstance(exc, urllib.error.URLError):
        url = getattr(args, "http", None) or "?"
        reason = getattr(exc.reason, "strerror", None) or str(exc.reason)
        return (f"{command}: cannot reach the service at {url} ({reason}); is `pushsvc serve` "
                "running there? check the URL given with --http"), FAILURE
    if isinstance(exc, TimeoutError):
        url = getattr(args, "http", None) or "?"
        return f"{command}: the service at {url} did not answer in time; check the URL and the service", FAILURE
    if isinstance(exc, ValueError):
        return f"{command}: {exc}", USAGE
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{command}: {exc.strerror or exc}{where}", FAILURE
    return (f"{command}: unexpected {type(exc).__name__}: {exc} (run `pushsvc --debug {command} ...` "
            "for the traceback)"), FAILURE
