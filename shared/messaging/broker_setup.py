"""`flowhooks broker-setup`: the vhost, one user per service with its permissions
(`permissions.py`) and the durable topology (`topology.py`), as RabbitMQ definitions.

The same document serves three ways:
- imported into a running broker, idempotently, through the management HTTP API
  (`POST /api/definitions`) or `rabbitmqctl import_definitions`, whichever is present;
- written to a file with the users' password hashes, for a broker that loads it at boot
  (`load_definitions`, e.g. mounted from a Kubernetes Secret);
- committed without passwords as `deploy/rabbitmq/definitions.json` (a test keeps it
  equal to `template()`), for review and as the shape of the rendered file.

Passwords come from `FLOWHOOKS_BROKER_PASSWORD_<SERVICE>`. A user that does not exist
yet and has no such variable gets a generated password, printed once; an existing user
without one keeps its password (a user entry without a hash would clear it).
"""

import asyncio
import base64
import hashlib
import json
import os
import secrets
import shlex
import shutil
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any, Protocol

import aiohttp
from yarl import URL

from shared.messaging import naming, topology
from shared.messaging.permissions import permissions, services, topic_permissions

DEFAULT_VHOST = "flowhooks"
DEFAULT_USER_PREFIX = "flowhooks-"
HASHING_ALGORITHM = "rabbit_password_hashing_sha256"  # RabbitMQ's default since 3.6
# In the committed template: not base64, so a broker loading the template unrendered
# fails at boot instead of creating users whose password is cleared at every restart.
HASH_PLACEHOLDER = "<rendered by flowhooks broker-setup --definitions-out>"


def password_env(service: str) -> str:
    return f"FLOWHOOKS_BROKER_PASSWORD_{service.upper()}"


def user_names(prefix: str = DEFAULT_USER_PREFIX) -> dict[str, str]:
    return {service: f"{prefix}{service}" for service in services()}


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's `rabbit_password_hashing_sha256`: base64(salt + sha256(salt + password))
    with a 4-byte salt, as `rabbitmqctl export_definitions` writes it."""
    salt = salt if salt is not None else secrets.token_bytes(4)
    digest = hashlib.sha256(salt + password.encode()).digest()
    return base64.b64encode(salt + digest).decode()


def definitions(
    vhost: str,
    users: Mapping[str, str],
    password_hashes: Mapping[str, str] | None = None,
    replicas: int = 1,
    bounds: topology.QueueBounds = topology.DEFAULT_QUEUE_BOUNDS,
) -> dict[str, Any]:
    """RabbitMQ definitions for `vhost` with `users` (service -> user name).
    `password_hashes` (service -> hash): only those users are listed (the others must
    exist already); None: all of them, with `HASH_PLACEHOLDER` (the template).
    `replicas`: the services' `FLOWHOOKS_BROKER_REPLICAS` (`topology.replicated`).
    `bounds`: the durable queues' backstops (`topology.queue_bounds_policy`)."""
    listed = {
        service: (password_hashes[service] if password_hashes is not None else HASH_PLACEHOLDER)
        for service in users
        if password_hashes is None or service in password_hashes
    }
    exchange = naming.EVENTS_EXCHANGE
    return {
        "vhosts": [{"name": vhost}],
        "users": [
            {
                "name": users[service],
                "password_hash": hashed,
                "hashing_algorithm": HASHING_ALGORITHM,
                "tags": [],
            }
            for service, hashed in listed.items()
        ],
        "permissions": [
            {"user": users[service], "vhost": vhost, **asdict(permissions(service))}
            for service in users
        ],
        "topic_permissions": [
            {"user": users[service], "vhost": vhost, **asdict(topic_permissions(service))}
            for service in users
        ],
        "exchanges": [
            {
                "name": exchange,
                "vhost": vhost,
                "type": "topic",
                "durable": True,
                "auto_delete": False,
                "internal": False,
                "arguments": {},
            }
        ],
        "queues": [
            {
                "name": spec.name,
                "vhost": vhost,
                "durable": True,
                "auto_delete": False,
                "arguments": spec.arguments,
            }
            for spec in topology.durable_queues(replicas)
        ],
        "bindings": [
            {
                "source": exchange,
                "vhost": vhost,
                "destination": spec.name,
                "destination_type": "queue",
                "routing_key": key,
                "arguments": {},
            }
            for spec in topology.DURABLE_QUEUES
            for key in spec.bindings
        ],
        "policies": [topology.queue_bounds_policy(vhost, bounds)],
    }


def dumps(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2) + "\n"


def template() -> str:
    """The committed `deploy/rabbitmq/definitions.json`."""
    return dumps(definitions(DEFAULT_VHOST, user_names()))


class BrokerAdmin(Protocol):
    name: str

    async def existing_users(self) -> set[str]: ...

    async def import_definitions(self, document: dict[str, Any]) -> None: ...


class SetupFailed(RuntimeError):
    pass


class ManagementApi:
    """The management plugin's HTTP API; credentials in the URL
    (`http://admin:secret@rabbitmq:15672`), an administrator's."""

    name = "management HTTP API"

    def __init__(self, url: str) -> None:
        parsed = URL(url)
        self.base = parsed.with_user(None).with_password(None).with_path("/api/")
        self.headers = {
            "Authorization": aiohttp.encode_basic_auth(
                parsed.user or "guest", parsed.password or "guest"
            )
        }

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        timeout = aiohttp.ClientTimeout(total=30)
        async with (
            aiohttp.ClientSession(headers=self.headers, timeout=timeout) as session,
            session.request(method, self.base.join(URL(path)), json=body) as answer,
        ):
            text = await answer.text()
            if answer.status >= 300:
                raise SetupFailed(f"{method} /api/{path}: {answer.status} {text[:500]}")
            return json.loads(text) if text else None

    async def reachable(self) -> bool:
        try:
            await self._request("GET", "overview")
        except (aiohttp.ClientConnectionError, TimeoutError):
            return False
        return True

    async def existing_users(self) -> set[str]:
        return {user["name"] for user in await self._request("GET", "users")}

    async def import_definitions(self, document: dict[str, Any]) -> None:
        await self._request("POST", "definitions", document)


class Rabbitmqctl:
    """`rabbitmqctl` on the broker's host (or `command`, e.g. `docker exec rabbitmq
    rabbitmqctl`): needs the node's Erlang cookie, i.e. root or the rabbitmq user."""

    name = "rabbitmqctl"

    def __init__(self, command: str = "rabbitmqctl") -> None:
        self.command = shlex.split(command)

    def present(self) -> bool:
        return shutil.which(self.command[0]) is not None

    async def _run(self, *args: str, stdin: bytes | None = None) -> bytes:
        process = await asyncio.create_subprocess_exec(
            *self.command,
            "-q",
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate(stdin)
        if process.returncode != 0:
            raise SetupFailed(f"rabbitmqctl {args[0]}: {(err or out).decode()[-500:]}")
        return out

    async def existing_users(self) -> set[str]:
        out = await self._run("list_users", "--formatter", "json")
        return {user["user"] for user in json.loads(out)}

    async def import_definitions(self, document: dict[str, Any]) -> None:
        # From stdin, so the password hashes never touch the disk.
        await self._run("import_definitions", "--format", "json", stdin=dumps(document).encode())


async def find_admin(management_url: str, rabbitmqctl: str = "rabbitmqctl") -> BrokerAdmin:
    """The management API if it answers, else rabbitmqctl if it is installed here."""
    api = ManagementApi(management_url)
    if await api.reachable():
        return api
    ctl = Rabbitmqctl(rabbitmqctl)
    if ctl.present():
        return ctl
    raise SetupFailed(
        f"neither the management API ({api.base}) answers nor {ctl.command[0]!r} is installed"
    )


def passwords_from_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    return {s: environ[password_env(s)] for s in services() if environ.get(password_env(s))}


def choose_passwords(
    users: Mapping[str, str], given: Mapping[str, str], existing: set[str]
) -> tuple[dict[str, str], dict[str, str]]:
    """(passwords to set, of which generated): given ones, and a new one for each user
    that does not exist yet; an existing user with none given keeps its own."""
    chosen = {service: given[service] for service in users if service in given}
    generated = {
        service: secrets.token_urlsafe(32)
        for service, user in users.items()
        if service not in chosen and user not in existing
    }
    return chosen | generated, generated


async def apply(
    admin: BrokerAdmin,
    vhost: str,
    users: Mapping[str, str],
    given: Mapping[str, str],
    replicas: int = 1,
    bounds: topology.QueueBounds = topology.DEFAULT_QUEUE_BOUNDS,
) -> dict[str, str]:
    """Creates or updates the vhost, the users, their permissions, the topology and the
    queues' backstops; returns the passwords it generated (service -> password)."""
    chosen, generated = choose_passwords(users, given, await admin.existing_users())
    hashes = {service: password_hash(password) for service, password in chosen.items()}
    await admin.import_definitions(definitions(vhost, users, hashes, replicas, bounds))
    return generated


async def apply_queue_bounds(admin: BrokerAdmin, vhost: str, bounds: topology.QueueBounds) -> None:
    """Only the durable queues' backstops (a policy: existing queues take it at once)."""
    await admin.import_definitions({"policies": [topology.queue_bounds_policy(vhost, bounds)]})


def vhost_of(amqp_url: str) -> str:
    """The vhost an AMQP URL names, as aio-pika reads it (none: `/`)."""
    return URL(amqp_url).path[1:] or "/"


async def bound_dev_queues(
    amqp_url: str, management_url: str, rabbitmqctl: str, bounds: topology.QueueBounds
) -> str:
    """`flowhooks run`: the backstops on the development vhost, through whichever admin
    interface is here (its name); `SetupFailed` if none is."""
    admin = await find_admin(management_url, rabbitmqctl)
    await apply_queue_bounds(admin, vhost_of(amqp_url), bounds)
    return admin.name


def render(
    vhost: str,
    users: Mapping[str, str],
    given: Mapping[str, str],
    replicas: int = 1,
    bounds: topology.QueueBounds = topology.DEFAULT_QUEUE_BOUNDS,
) -> tuple[str, dict[str, str]]:
    """Definitions for a broker to load at boot, every user with a password hash; missing
    passwords are generated. Returns (document, generated passwords)."""
    chosen, generated = choose_passwords(users, given, existing=set())
    hashes = {service: password_hash(password) for service, password in chosen.items()}
    return dumps(definitions(vhost, users, hashes, replicas, bounds)), generated
