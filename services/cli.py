"""The `flowhooks` command.

flowhooks run                     all four services, supervised (development)
flowhooks ingress|runner|auth|debugger
                                  one service (deployment: one process per container)
flowhooks migrate                 create the database if needed, apply every migration
flowhooks token create --workspace NAME --scope SCOPE [--scope ...]
                                  the first personal access token of a workspace
"""

import argparse
import asyncio
import importlib
import os
import secrets
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from shared.db import ensure_database, migrate
from shared.settings import ServiceSettings

SERVICES = ("auth", "runner", "debugger", "ingress")
# Services that own a database schema, in the order they are migrated.
SCHEMAS = ("auth", "runner", "debugger")
DEV_TOKEN_KEY_FILE = Path(".flowhooks/dev-runner-token-key")


def _serve(name: str) -> int:
    importlib.import_module(f"services.{name}.__main__").main()
    return 0


async def _migrate_all(database_url: str) -> None:
    await ensure_database(database_url)
    for schema in SCHEMAS:
        directory = Path(__file__).parent / schema / "migrations"
        applied = await migrate(database_url, schema, directory)
        print(f"{schema}: {len(applied)} migration(s) applied")


def _cmd_migrate(_: argparse.Namespace) -> int:
    asyncio.run(_migrate_all(ServiceSettings().database_url))
    return 0


def _cmd_token_create(args: argparse.Namespace) -> int:
    from services.auth.cli import create_token

    expires_at = datetime.fromisoformat(args.expires_at) if args.expires_at else None
    try:
        token, secret = asyncio.run(
            create_token(
                ServiceSettings().database_url, args.workspace, args.scope, args.name, expires_at
            )
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"Created token {token.id} in workspace {args.workspace!r} with scopes "
        f"{', '.join(token.scopes)}. It is shown only this once:",
        file=sys.stderr,
    )
    print(secret)
    return 0


def _dev_token_key() -> str:
    """`flowhooks run` only: a stable key for flow webhook tokens kept in ./.flowhooks."""
    if not DEV_TOKEN_KEY_FILE.exists():
        DEV_TOKEN_KEY_FILE.parent.mkdir(exist_ok=True)
        DEV_TOKEN_KEY_FILE.write_text(secrets.token_urlsafe(48))
        DEV_TOKEN_KEY_FILE.chmod(0o600)
    return DEV_TOKEN_KEY_FILE.read_text().strip()


def _cmd_run(_: argparse.Namespace) -> int:
    """Start every service as a child process; stop all of them on Ctrl-C, SIGTERM, or
    when any one exits."""
    settings = ServiceSettings()
    asyncio.run(_migrate_all(settings.database_url))
    env = dict(os.environ)
    if "FLOWHOOKS_RUNNER_TOKEN_KEY" not in env:
        env["FLOWHOOKS_RUNNER_TOKEN_KEY"] = _dev_token_key()
        print(f"using the development token key in {DEV_TOKEN_KEY_FILE}")
    children = {
        name: subprocess.Popen([sys.executable, "-m", f"services.{name}"], env=env)  # noqa: S603
        for name in SERVICES
    }
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    host = settings.host
    ports = {
        name: os.environ.get(f"FLOWHOOKS_{name.upper()}_PORT", default)
        for name, default in (
            ("ingress", "8080"),
            ("auth", "8081"),
            ("runner", "8082"),
            ("debugger", "8083"),
        )
    }
    print("flowhooks is starting:")
    for name, port in ports.items():
        print(f"  {name:9} http://{host}:{port}")
    print(
        "Create the first token:"
        "  .venv/bin/flowhooks token create --workspace acme --scope automation"
    )
    print("Stop with Ctrl-C.")
    exit_code = 0
    while not stopping:
        for name, child in children.items():
            if child.poll() is not None:
                print(
                    f"{name} exited with {child.returncode}; stopping everything", file=sys.stderr
                )
                exit_code, stopping = 1, True
        time.sleep(0.2)
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + settings.shutdown_timeout_s + 5
    for child in children.values():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
    return exit_code


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="flowhooks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="all services, supervised (development)").set_defaults(func=_cmd_run)
    for name in SERVICES:
        sub.add_parser(name, help=f"the {name} service").set_defaults(
            func=lambda _args, name=name: _serve(name)
        )
    sub.add_parser("migrate", help="create the database and apply migrations").set_defaults(
        func=_cmd_migrate
    )
    token = sub.add_parser("token", help="personal access tokens").add_subparsers(
        dest="token_command", required=True
    )
    create = token.add_parser("create", help="create a token and print its secret once")
    create.add_argument("--workspace", required=True)
    create.add_argument(
        "--scope",
        action="append",
        required=True,
        help="automation, automation.manage or automation.webhook_run",
    )
    create.add_argument("--name", default="created on the command line")
    create.add_argument("--expires-at", help="ISO 8601 time with zone, e.g. 2030-01-01T00:00Z")
    create.set_defaults(func=_cmd_token_create)
    args = parser.parse_args(argv)
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
