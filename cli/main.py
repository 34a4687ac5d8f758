"""The `flowhooks` command.

flowhooks run                     all four services, supervised (development)
flowhooks ingress|runner|auth|debugger
                                  one service (deployment: one process per container)
flowhooks migrate                 create the database if needed, apply every migration
flowhooks broker-setup            the broker's vhost, one user per service, their
                                  permissions and the topology (docs/operations.md)
flowhooks token create --workspace NAME --scope SCOPE [--scope ...]
                                  the first personal access token of a workspace
flowhooks flows rotate-all-tokens a new webhook token for every flow, from the current
                                  key of FLOWHOOKS_RUNNER_TOKEN_KEYS (docs/operations.md)

Through the HTTP APIs, with a personal access token (--token-file PATH, FLOWHOOKS_TOKEN_FILE
or FLOWHOOKS_TOKEN) and the URLs FLOWHOOKS_RUNNER_URL, FLOWHOOKS_AUTH_URL,
FLOWHOOKS_DEBUGGER_URL; --json for scripts:
flowhooks flows list|show ID|apply -f FILE|pause ID|resume ID|rotate-token ID
flowhooks requests list FLOW_ID [--outcome O --mode M --match JSON --limit N --cursor C]
flowhooks requests show ID|tail FLOW_ID|replay ID [--body-file F] [--force]
flowhooks requests stats FLOW_ID [--window 1h|24h|7d]
flowhooks tokens list|create --scope S [--name N]|revoke ID
"""

import argparse
import asyncio
import importlib.metadata
import os
import secrets
import sys
from datetime import datetime
from pathlib import Path

from cli.commands import FILTER_VALUES_HELP
from cli.commands import register as register_api_commands
from cli.sources import register as register_source_commands
from services import registry
from shared.settings import DatabaseSettings, QueueBoundsSettings

DEV_TOKEN_KEY_FILE = Path(".flowhooks/dev-runner-token-key")
DEV_SECRETS_KEY_FILE = Path(".flowhooks/dev-webhook-secrets-key")


def _serve(name: str) -> int:
    registry.spec(name).main()
    return 0


async def _migrate_all(database_url: str) -> None:
    """Every service's schema that owns one (`ServiceSpec.database`)."""
    # Here, not at the top: asyncpg's import would cost every API command a tenth of a
    # second of CPU, for nothing.
    from shared.db import ensure_database, migrate

    await ensure_database(database_url)
    for spec in registry.specs():
        if spec.database is not None:
            schema = spec.database.schema
            applied = await migrate(database_url, schema, spec.database.migrations)
            print(f"{schema}: {len(applied)} migration(s) applied")


def _cmd_migrate(_: argparse.Namespace) -> int:
    asyncio.run(_migrate_all(DatabaseSettings().database_url))
    return 0


def _cmd_token_create(args: argparse.Namespace) -> int:
    from cli.tokens import create_token

    expires_at = datetime.fromisoformat(args.expires_at) if args.expires_at else None
    try:
        token, secret = asyncio.run(
            create_token(
                DatabaseSettings().database_url, args.workspace, args.scope, args.name, expires_at
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


def _dev_key(path: Path) -> str:
    """`flowhooks run` only: a stable development key kept in ./.flowhooks."""
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def _dev_token_key() -> str:
    """The key for flow webhook tokens."""
    return _dev_key(DEV_TOKEN_KEY_FILE)


def _dev_queue_bounds(amqp_url: str) -> None:
    """The durable queues' backstops (a broker policy), as broker-setup applies them in
    production; best effort: without an admin interface the services run without them."""
    from shared.messaging import broker_setup as setup

    try:
        via = asyncio.run(
            setup.bound_dev_queues(
                amqp_url,
                os.environ.get(
                    "FLOWHOOKS_BROKER_MANAGEMENT_URL", "http://guest:guest@127.0.0.1:15672"
                ),
                os.environ.get("FLOWHOOKS_BROKER_RABBITMQCTL", "rabbitmqctl"),
                QueueBoundsSettings().bounds(),
            )
        )
    except setup.SetupFailed as exc:
        print(f"warning: the queues' length and byte bounds are not applied: {exc}")
        return
    print(f"queue length and byte bounds applied through {via}")


def _cmd_run(_: argparse.Namespace) -> int:
    """Start every service as a child process, each with only its own variables; start a
    crashed one again with backoff; stop all of them on Ctrl-C or SIGTERM."""
    from cli.supervisor import Supervisor, service_env, settings_class

    settings = DatabaseSettings()
    asyncio.run(_migrate_all(settings.database_url))
    _dev_queue_bounds(settings.broker_urls[0])
    env = dict(os.environ)
    if not env.get("FLOWHOOKS_RUNNER_TOKEN_KEYS") and not env.get("FLOWHOOKS_RUNNER_TOKEN_KEY"):
        env["FLOWHOOKS_RUNNER_TOKEN_KEYS"] = _dev_token_key()
        print(f"using the development token key in {DEV_TOKEN_KEY_FILE}")
    if not env.get("FLOWHOOKS_WEBHOOK_SECRETS_KEY"):
        # Runner and ingress share it: signing flows work in development too.
        env["FLOWHOOKS_WEBHOOK_SECRETS_KEY"] = _dev_key(DEV_SECRETS_KEY_FILE)
        print(f"using the development webhook secrets key in {DEV_SECRETS_KEY_FILE}")
    environments = {name: service_env(env, settings_class(name)) for name in registry.NAMES}
    supervisor = Supervisor(environments, settings.shutdown_timeout_s)
    supervisor.handle_signals()
    host = settings.host
    print("flowhooks is starting:")
    for name, service_environ in environments.items():
        field = settings_class(name).model_fields["port"]  # its variable, else its default
        port = service_environ.get(str(field.validation_alias), field.default)
        print(f"  {name:9} http://{host}:{port}")
    print(
        "Create the first token:"
        "  .venv/bin/flowhooks token create --workspace acme --scope automation"
    )
    print("Stop with Ctrl-C.", flush=True)
    return supervisor.run()


def _cmd_flows_rotate_all_tokens(_: argparse.Namespace) -> int:
    from services.runner.access import RingMismatch
    from services.runner.settings import RunnerSettings
    from services.runner.token_rotation import rotate_all_tokens
    from shared.errors import Unavailable

    try:
        rotated = asyncio.run(rotate_all_tokens(RunnerSettings()))
    except (RingMismatch, Unavailable, ValueError) as exc:  # ValueError: bad settings
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"every flow has a new webhook token ({rotated} flow(s)); the old ones are refused")
    return 0


def _cmd_broker_setup(args: argparse.Namespace) -> int:
    from shared.messaging import broker_setup as setup

    if args.template:
        print(setup.template(), end="")
        return 0
    users = setup.user_names(args.user_prefix)
    given = setup.passwords_from_env()
    if args.definitions_out:
        document, generated = setup.render(
            args.vhost, users, given, args.replicas, QueueBoundsSettings().bounds()
        )
        fd = os.open(args.definitions_out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(document)
        print(f"wrote {args.definitions_out} (password hashes: keep it secret)", file=sys.stderr)
    else:
        admin: setup.BrokerAdmin
        try:
            if args.via == "management":
                admin = setup.ManagementApi(args.management_url)
            elif args.via == "rabbitmqctl":
                admin = setup.Rabbitmqctl(args.rabbitmqctl)
            else:
                admin = asyncio.run(setup.find_admin(args.management_url, args.rabbitmqctl))
            generated = asyncio.run(
                setup.apply(
                    admin, args.vhost, users, given, args.replicas, QueueBoundsSettings().bounds()
                )
            )
        except setup.SetupFailed as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"vhost {args.vhost!r} and users set up through {admin.name}:", file=sys.stderr)
        for service, user in users.items():
            print(f"  {service:9} {user}", file=sys.stderr)
    if generated:
        print("Generated passwords, shown only this once:", file=sys.stderr)
        for service, password in generated.items():
            print(f"{setup.password_env(service)}={password}")
    return 0


def _version() -> str:
    try:
        return importlib.metadata.version("flowhooks")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout never installed
        return "unknown"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="flowhooks",
        description=f"{__doc__}{FILTER_VALUES_HELP}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"flowhooks {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="all services, supervised (development)").set_defaults(func=_cmd_run)
    for name in registry.NAMES:
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
    flows = sub.add_parser("flows", help="flows").add_subparsers(
        dest="flows_command", required=True
    )
    # flows list|show|apply|..., requests ..., tokens ...: through the HTTP APIs.
    register_api_commands(sub, flows)
    register_source_commands(sub)  # sources list|show|apply|route|unroute
    flows.add_parser(
        "rotate-all-tokens",
        help="a new webhook token for every flow; every token shown before is refused",
        description="Runs with the runner's settings (FLOWHOOKS_DATABASE_URL,"
        " FLOWHOOKS_AMQP_URL, FLOWHOOKS_RUNNER_TOKEN_KEYS: the runners' ring).",
    ).set_defaults(func=_cmd_flows_rotate_all_tokens)
    broker = sub.add_parser(
        "broker-setup",
        help="create or update the broker's vhost, users, permissions and topology",
        description="Passwords: FLOWHOOKS_BROKER_PASSWORD_<SERVICE>; a new user without one"
        " gets a generated password, printed once; an existing one keeps its own.",
    )
    broker.add_argument("--vhost", default="flowhooks")
    broker.add_argument("--user-prefix", default="flowhooks-", help="users are PREFIX<service>")
    broker.add_argument(
        "--via",
        choices=("auto", "management", "rabbitmqctl"),
        default="auto",
        help="auto: the management API if it answers, else rabbitmqctl",
    )
    broker.add_argument(
        "--management-url",
        default=os.environ.get(
            "FLOWHOOKS_BROKER_MANAGEMENT_URL", "http://guest:guest@127.0.0.1:15672"
        ),
        help="with an administrator's credentials (env FLOWHOOKS_BROKER_MANAGEMENT_URL)",
    )
    broker.add_argument(
        "--rabbitmqctl",
        default=os.environ.get("FLOWHOOKS_BROKER_RABBITMQCTL", "rabbitmqctl"),
        help="the command, e.g. 'docker exec rabbitmq rabbitmqctl'",
    )
    broker.add_argument(
        "--replicas",
        type=int,
        default=int(os.environ.get("FLOWHOOKS_BROKER_REPLICAS", "1")),
        help="quorum members of each durable queue, as the services' FLOWHOOKS_BROKER_REPLICAS",
    )
    broker.add_argument(
        "--definitions-out",
        metavar="FILE",
        help="write definitions with password hashes (for load_definitions) instead",
    )
    broker.add_argument(
        "--template", action="store_true", help="print deploy/rabbitmq/definitions.json"
    )
    broker.set_defaults(func=_cmd_broker_setup)
    args = parser.parse_args(argv)
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
