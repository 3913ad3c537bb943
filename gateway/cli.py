"""`gateway serve | dev | migrate | token | upload`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import sys
import time
from pathlib import Path

import jwt

from gateway.config import ConfigError, Settings, load_settings, parse_size
from gateway.logs import configure_logging

log = logging.getLogger("gateway")

DEV_AUDIENCE = "gateway-dev"
DEV_ISSUER = "gateway-dev"
DEV_TOKEN_TTL = 7 * 86400


def mint_token(secret: str, subject: str, *, audience: str, issuer: str, ttl: int) -> str:
    now = int(time.time())
    claims = {"sub": subject, "aud": audience, "iss": issuer, "iat": now, "exp": now + ttl}
    return jwt.encode(claims, secret, algorithm="HS256")


def _run_app(settings: Settings) -> None:
    from gateway.app import create_app
    from gateway.serve import run

    run(create_app(settings), settings)


def serve(args: argparse.Namespace) -> None:
    settings = load_settings()
    settings.require_services()
    ops = f", ops (metrics, probes) on port {settings.metrics_port}" if settings.metrics_port else ""
    log.info("gateway listening on http://%s:%d%s with %d worker(s)%s", settings.host, settings.port,
             settings.base_path, args.workers, ops)
    if args.workers <= 1:
        _run_app(settings)
        return
    # A supervising parent; the workers share the ports through SO_REUSEPORT (the kernel spreads connections).
    from gateway.supervisor import supervise

    raise SystemExit(supervise(settings, args.workers, os.environ.get("GATEWAY_LOG_FORMAT", "json")))


def migrate_command(args: argparse.Namespace) -> None:
    from gateway.db.migrate import migrate

    url = os.environ.get("GATEWAY_DATABASE_URL") or load_settings().database_url
    if not url:
        raise ConfigError("GATEWAY_DATABASE_URL is required")
    applied = asyncio.run(migrate(url))
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")


def sweep_command(args: argparse.Namespace) -> None:
    """One pass of the background work: expire, finish completions, abort orphans, purge, deliver."""
    from gateway.app import gateway_services

    settings = load_settings()
    settings.require_services()

    async def run() -> None:
        async with gateway_services(settings) as services:
            background, repo = services.background, services.repo
            report = await background.sweeper.run_once()
            delivered = await background.dispatcher.run_once() if background.dispatcher else 0
            print(f"expired {report.expired}, completed {report.completed}, aborted {report.orphans_aborted} "
                  f"orphan S3 uploads, purged {report.tombstones_purged} tombstones and {report.events_purged} "
                  f"events, delivered {delivered} events; webhook backlog {await repo.backlog()}")

    asyncio.run(run())


def s3_setup_command(args: argparse.Namespace) -> None:
    """Apply the bucket's CORS and lifecycle rules (idempotent); see gateway/s3/setup.py."""
    from gateway.s3.setup import SetupError, apply_bucket_setup

    # Only the S3 settings matter here, so JWT settings are not required (auth plays no part).
    settings = load_settings(auth="none")
    try:
        result = asyncio.run(apply_bucket_setup(settings, create_bucket=args.create_bucket))
    except SetupError as exc:
        raise SystemExit(f"gateway s3 setup: {exc}") from None
    print("\n".join(result.describe()))


def s3_check_command(args: argparse.Namespace) -> None:
    """Probe the bucket for every S3 capability the gateway relies on; exit 1 if a required one is missing."""
    from gateway.s3.check import CheckError, exit_status, format_table, run_check

    settings = load_settings(auth="none")
    try:
        rows = asyncio.run(run_check(settings))
    except CheckError as exc:
        raise SystemExit(f"gateway s3 check: {exc}") from None
    print(format_table(rows))
    raise SystemExit(exit_status(rows))


def _dev_secret(data_dir: Path) -> str:
    path = data_dir / "jwt-secret"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def dev(args: argparse.Namespace) -> None:
    """Everything on one machine: embedded Postgres and SeaweedFS in a data dir that survives restarts."""
    from gateway.db.migrate import migrate
    from gateway.embedded import EmbeddedStack

    data_dir = Path(args.data_dir).resolve()
    auth = os.environ.get("GATEWAY_AUTH", "jwt")
    with EmbeddedStack(data_dir, bucket="uploads", cors_origins=("*",)) as stack_info:
        asyncio.run(migrate(stack_info.database_url))
        secret = _dev_secret(data_dir)
        settings = load_settings(
            {k: v for k, v in os.environ.items() if k.startswith("GATEWAY_")},
            database_url=stack_info.database_url, s3_endpoint_url=stack_info.s3_endpoint_url,
            s3_bucket=stack_info.s3_bucket, s3_region=stack_info.s3_region,
            s3_access_key_id=stack_info.s3_access_key_id, s3_secret_access_key=stack_info.s3_secret_access_key,
            host="127.0.0.1", port=args.port, auth=auth, jwt_secret=secret, jwt_audience=DEV_AUDIENCE,
            jwt_issuer=DEV_ISSUER, cors_origins=("*",), demo_page=True,
        )
        url = f"http://127.0.0.1:{settings.port}{settings.base_path}"
        print(f"\n  gateway dev: {url}\n  data: {data_dir}\n  postgres: {stack_info.database_url}\n"
              f"  s3: {stack_info.s3_endpoint_url} (bucket {stack_info.s3_bucket})")
        if auth == "none":
            print("\n  !!! AUTH IS OFF (GATEWAY_AUTH=none): anyone who can reach this port can upload !!!\n")
        else:
            token = mint_token(secret, "dev-user", audience=DEV_AUDIENCE, issuer=DEV_ISSUER, ttl=DEV_TOKEN_TTL)
            print(f"  demo page: http://127.0.0.1:{settings.port}/#token={token}\n"
                  f"  token (7 days): {token}\n\n"
                  f"  curl -i -X POST {url} -H 'Tus-Resumable: 1.0.0' -H 'Upload-Length: 11' "
                  f"-H \"Authorization: Bearer {token}\"\n")
        sys.stdout.flush()
        _run_app(settings)


def token_command(args: argparse.Namespace) -> None:
    """Mint an HS256 token with GATEWAY_JWT_SECRET (for tests and operators)."""
    settings = load_settings()
    if not settings.jwt_secret:
        raise ConfigError("GATEWAY_JWT_SECRET is required to mint tokens")
    print(mint_token(settings.jwt_secret, args.subject, audience=settings.jwt_audience,
                     issuer=settings.jwt_issuer or DEV_ISSUER, ttl=args.ttl))


def upload_command(args: argparse.Namespace) -> None:
    """Send a file straight to S3 through presigned part URLs; run it again to resume.

    A client of a gateway, not a gateway: it reads no GATEWAY_* settings but GATEWAY_TOKEN.
    """
    from gateway.client import DirectUploader, UploadFailed
    from gateway.client.console import ProgressBar, summary

    if args.parallel < 1:
        raise SystemExit("gateway upload: --parallel must be at least 1")
    # Retries are logged at INFO; printed, they would break the progress line.
    logging.getLogger("gateway.client").setLevel(logging.WARNING)
    bar = ProgressBar(sys.stderr)
    uploader = DirectUploader(args.url, args.file, token=args.token or os.environ.get("GATEWAY_TOKEN"),
                              parallel=args.parallel, part_size=args.part_size, state_file=args.state_file,
                              on_progress=bar)
    started = time.monotonic()
    try:
        result = asyncio.run(uploader.upload())
    except UploadFailed as exc:
        bar.close()
        raise SystemExit(f"gateway upload: {exc}") from None
    except KeyboardInterrupt:
        bar.close()
        print("gateway upload: interrupted; run the same command again to resume", file=sys.stderr)
        raise SystemExit(130) from None
    bar.close()
    print(summary(args.file, result, time.monotonic() - started), file=sys.stderr)
    print(result.url)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Resumable upload gateway (tus -> S3)")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the gateway (production settings from GATEWAY_*)")
    serve_parser.add_argument("--workers", type=int, default=1, help="processes sharing the port")
    serve_parser.set_defaults(func=serve)
    dev_parser = commands.add_parser("dev", help="run with embedded Postgres and SeaweedFS, no settings needed")
    dev_parser.add_argument("--data-dir", default=".dev-data", help="where Postgres and S3 keep data")
    dev_parser.add_argument("--port", type=int, default=8080)
    dev_parser.set_defaults(func=dev)
    sweep_parser = commands.add_parser(
        "sweep", help="run the expiry/cleanup/delivery pass once (serve runs it periodically)")
    sweep_parser.set_defaults(func=sweep_command)
    s3_parser = commands.add_parser("s3", help="S3 bucket administration")
    s3_commands = s3_parser.add_subparsers(dest="s3_command", required=True)
    s3_setup_parser = s3_commands.add_parser("setup", help="apply the bucket's CORS and lifecycle rules (idempotent)")
    s3_setup_parser.add_argument("--create-bucket", action="store_true", help="create the bucket if it is missing")
    s3_setup_parser.set_defaults(func=s3_setup_command)
    s3_check_parser = s3_commands.add_parser(
        "check", help="probe the bucket for the S3 capabilities the gateway needs (exit 1 if one is missing)")
    s3_check_parser.set_defaults(func=s3_check_command)
    migrate_parser = commands.add_parser("migrate", help="apply database migrations (idempotent)")
    migrate_parser.set_defaults(func=migrate_command)
    token_parser = commands.add_parser("token", help="mint an HS256 token with GATEWAY_JWT_SECRET")
    token_parser.add_argument("--subject", default="dev-user")
    token_parser.add_argument("--ttl", type=int, default=3600)
    token_parser.set_defaults(func=token_command)
    upload_parser = commands.add_parser("upload", help="upload a file straight to S3 (presigned parts, resumable)")
    upload_parser.add_argument("file")
    upload_parser.add_argument("--url", required=True,
                               help="the gateway's upload collection, e.g. http://host:8080/files")
    upload_parser.add_argument("--token", help="bearer token (default: $GATEWAY_TOKEN)")
    upload_parser.add_argument("--parallel", type=int, default=4, help="parts in flight at once")
    upload_parser.add_argument("--part-size", type=parse_size, help="part size hint, e.g. 64MiB (the gateway decides)")
    upload_parser.add_argument("--state-file", help="where to remember uploads for resuming "
                                                    "(default: ~/.cache/gateway-upload/state.json)")
    upload_parser.set_defaults(func=upload_command)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # Humans read `dev` and one-shot commands; `serve` logs JSON lines for collectors.
    default_format = "json" if args.command == "serve" else "text"
    configure_logging(os.environ.get("GATEWAY_LOG_FORMAT", default_format))
    try:
        args.func(args)
    except ConfigError as exc:
        print(f"gateway: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
