"""The `pushsvc` command: serve, publish, token, doctor."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

from .clierrors import check_arguments, explain, http_failure
from .config import ConfigError, Settings


def _serve(args: argparse.Namespace) -> int:
    from .logs import configure as configure_logging
    from .server import serve

    settings = Settings.from_env()
    configure_logging(settings.log_format, settings.log_level)
    return serve(settings, args.bind, args.workers, args.config)


def _publish(args: argparse.Namespace) -> int:
    try:
        data: Any = json.loads(args.data)
    except ValueError:
        data = args.data  # plain text is sent as a string
    if args.http:
        body: dict[str, Any] = {"channel": args.channel, "data": data}
        if args.type:
            body["type"] = args.type
        if args.retry is not None:
            body["retry"] = args.retry
        request = urllib.request.Request(
            args.http.rstrip("/") + "/publish", json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )
        token = args.token or os.environ.get("PUSHSVC_TOKEN")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        if args.idempotency_key:
            request.add_header("Idempotency-Key", args.idempotency_key)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                print(response.read().decode())
        except urllib.error.HTTPError as exc:
            print(f"pushsvc: {http_failure(exc, request.full_url)}", file=sys.stderr)
            return 1
        return 0
    from .publisher import Publisher

    publisher = Publisher(args.redis_url, cluster_nodes=args.cluster_nodes)
    try:
        ids = publisher.publish(args.channel, data, type=args.type, retry=args.retry,
                                idempotency_key=args.idempotency_key)
    finally:
        publisher.close()
    print(json.dumps({"ids": ids}))
    return 0


def _split(values: list[str] | None) -> list[str]:
    return [item.strip() for value in values or [] for item in value.split(",") if item.strip()]


def _token(args: argparse.Namespace) -> int:
    from .patterns import PATTERN_RE
    from .tokens import mint

    settings = Settings.from_env()
    if settings.jwt_secret is None:
        raise ConfigError("pushsvc token mints HS256 tokens: set PUSHSVC_JWT_SECRET (32+ bytes)")
    subscribe, publish = _split(args.subscribe), _split(args.publish)
    if not subscribe and not publish:
        raise ConfigError("give --subscribe and/or --publish channel patterns")
    for pattern in subscribe + publish:
        if PATTERN_RE.fullmatch(pattern) is None:
            raise ConfigError(f"{pattern!r} is not a channel name or pattern")
    print(mint(
        settings.jwt_secret, subscribe=subscribe, publish=publish, ttl_seconds=args.ttl,
        audience=settings.jwt_audience, issuer=settings.jwt_issuer, subject=args.sub,
    ))
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import DEFAULT_IDLE_SECONDS, run

    idle = DEFAULT_IDLE_SECONDS if args.idle is None else args.idle
    return run(args.url, args.token or os.environ.get("PUSHSVC_TOKEN"), idle, args.origin)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pushsvc", description=__doc__)
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (anywhere on the command line)")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the service under Hypercorn")
    serve.add_argument("--bind", default="127.0.0.1:8000", help="HOST:PORT (default 127.0.0.1:8000)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (needs Redis if > 1)")
    serve.add_argument("--config", default=None, help="Hypercorn TOML (default ./hypercorn.toml)")
    serve.set_defaults(func=_serve)

    publish = commands.add_parser("publish", help="publish one event")
    publish.add_argument("channel")
    publish.add_argument("data", help="JSON value (anything else is sent as a string)")
    publish.add_argument("--type", default=None)
    publish.add_argument("--retry", type=int, default=None)
    publish.add_argument("--redis-url", default=None, help="default: PUSHSVC_REDIS_URL")
    publish.add_argument("--cluster-nodes", default=None, metavar="URLS",
                         help="Redis Cluster seed URLs, comma-separated (default: PUSHSVC_REDIS_CLUSTER_NODES)")
    publish.add_argument("--http", default=None, metavar="URL",
                         help="publish through a running service's POST /publish instead")
    publish.add_argument("--token", default=None, help="bearer token for --http (or PUSHSVC_TOKEN)")
    publish.add_argument("--idempotency-key", default=None, metavar="KEY",
                         help="repeat safely: within PUSHSVC_IDEMPOTENCY_SECONDS the same key "
                         "publishes once and prints the original ids")
    publish.set_defaults(func=_publish)

    token = commands.add_parser(
        "token", help="mint a development JWT (HS256, PUSHSVC_JWT_SECRET; aud/iss from "
        "PUSHSVC_JWT_AUDIENCE/PUSHSVC_JWT_ISSUER)")
    token.add_argument("--subscribe", action="append", metavar="PATTERNS",
                       help="channels it may subscribe to (repeatable or comma-separated; * wildcard)")
    token.add_argument("--publish", action="append", metavar="PATTERNS",
                       help="channels it may publish to (repeatable or comma-separated; * wildcard)")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires (default 3600)")
    token.add_argument("--sub", default=None, help="optional subject (sub claim)")
    token.set_defaults(func=_token)

    doctor = commands.add_parser(
        "doctor", help="check a deployment through its public URL (proxy buffering, heartbeats and idle "
        "timeouts, resume, HTTP version, retry, CORS); exit 0 only when all is well")
    doctor.add_argument("url", help="the service's public base URL, e.g. https://push.example.com")
    doctor.add_argument("--token", default=None, help="publish token for the probe events (or PUSHSVC_TOKEN)")
    doctor.add_argument("--idle", type=float, default=None, metavar="SECONDS",
                        help="how long an idle stream must survive (default 70, above nginx's 60 s)")
    doctor.add_argument("--origin", default=None, help="check CORS for a page on this origin")
    doctor.set_defaults(func=_doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv:  # accepted after the command too: `pushsvc serve --debug`
        argv = ["--debug", *(a for a in argv if a != "--debug")]
    args = build_parser().parse_args(argv)
    try:
        check_arguments(args)
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.debug:
            raise
        message, code = explain(exc, args)
        print(f"pushsvc: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
