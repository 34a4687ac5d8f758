"""Isolation on the real local servers: a RabbitMQ vhost and a PostgreSQL database of
their own for each test (or e2e module), removed afterwards.

The suite makes about a hundred of each, so both are made ahead and removed behind the
tests' backs: every `rabbitmqctl` call boots an Erlang VM (about a second on two
cores, and a vhost took three calls), and CREATE / DROP DATABASE each wait for the
disk. Vhosts are created several per call (`import_definitions`), one database is kept
ready, and what a test gave back is removed by a background thread, several per call.
`close()` (run at the end of the pytest session, and at exit) waits for the removals.
"""

import asyncio
import atexit
import json
import os
import queue
import shlex
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import asyncpg
from yarl import URL

AMQP_BASE = os.environ.get("FLOWHOOKS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
PG_BASE = os.environ.get(
    "FLOWHOOKS_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


# The command, split like a shell would: `docker exec -i flowhooks-rabbitmq rabbitmqctl`
# where the broker is deploy/local/containers.py's container (the Makefile sets it).
RABBITMQCTL = shlex.split(os.environ.get("FLOWHOOKS_TEST_RABBITMQCTL", "rabbitmqctl"))


def _rabbitmqctl(*args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        [*RABBITMQCTL, "-q", *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        input=stdin,
    )
    return done.stdout


class Remover:
    """Removes names on a thread of its own, all that are waiting in one call: a test's
    teardown does not wait for the broker or the disk."""

    def __init__(self, remove_many: Callable[[list[str]], None], what: str) -> None:
        self._remove_many = remove_many
        self._what = what
        self._waiting: queue.Queue[str | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def put(self, name: str) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"remove-{self._what}", daemon=True
                )
                self._thread.start()
        self._waiting.put(name)

    def _run(self) -> None:
        while True:
            names = [self._waiting.get()]
            while not self._waiting.empty():
                names.append(self._waiting.get())
            done = None in names
            names_left = [name for name in names if name is not None]
            if names_left:
                try:
                    self._remove_many(names_left)
                except Exception as exc:  # a leftover test vhost or database harms no test
                    print(f"could not remove test {self._what} {names_left}: {exc!r}",
                          file=sys.stderr)
            if done:
                return

    def close(self) -> None:
        """Waits until everything put so far is removed."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._waiting.put(None)
            thread.join(timeout=300)


class Vhosts:
    """Vhosts of the local broker, each with all permissions for the base URL's user."""

    def __init__(self, base_url: str = AMQP_BASE, batch: int = 4) -> None:
        self.base = URL(base_url)
        self.user = self.base.user or "guest"
        self.batch = batch
        self._stock: list[str] = []
        self._lock = threading.Lock()
        self._remover = Remover(self._delete, "vhosts")

    def url(self, name: str) -> str:
        return str(self.base.with_path("/" + name))

    def take(self) -> str:
        with self._lock:
            if not self._stock:
                self._stock = self._create(self.batch)
            return self._stock.pop()

    def give_back(self, name: str) -> None:
        self._remover.put(name)

    def close(self) -> None:
        with self._lock:
            unused, self._stock = self._stock, []
        for name in unused:
            self._remover.put(name)
        self._remover.close()

    def _create(self, count: int) -> list[str]:
        """`count` vhosts in one `rabbitmqctl` call."""
        names = [f"flowhooks-test-{uuid.uuid4().hex[:10]}" for _ in range(count)]
        definitions = {
            "vhosts": [{"name": name} for name in names],
            "permissions": [
                {"user": self.user, "vhost": name, "configure": ".*", "write": ".*", "read": ".*"}
                for name in names
            ],
        }
        # From standard input: a path would have to be inside the broker's container.
        _rabbitmqctl("import_definitions", "--format", "json", stdin=json.dumps(definitions))
        return names

    def _delete(self, names: list[str]) -> None:
        _delete_each(names, "rabbit_vhost:delete", "delete_vhost", self.user)


def _delete_each(names: list[str], function: str, command: str, acting_user: str) -> None:
    """`function(Name, ActingUser)` for every name in one `rabbitmqctl eval`; one
    `rabbitmqctl <command> name` each if the broker's internal function is not there
    (another RabbitMQ version). Names are the tests' own: no quotes in them."""
    listed = ", ".join(f'<<"{name}">>' for name in names)
    acting = acting_user.replace('"', "")
    try:
        _rabbitmqctl("eval", f'[catch {function}(N, <<"{acting}">>) || N <- [{listed}]].')
    except subprocess.CalledProcessError:
        for name in names:
            subprocess.run([*RABBITMQCTL, "-q", command, name], capture_output=True, timeout=120)


class BrokerUsers:
    """Broker users a test made (`flowhooks broker-setup`'s), deleted behind its back."""

    def __init__(self, acting_user: str = URL(AMQP_BASE).user or "guest") -> None:
        self.acting_user = acting_user
        self._remover = Remover(self._delete, "broker users")

    def give_back(self, *names: str) -> None:
        for name in names:
            self._remover.put(name)

    def close(self) -> None:
        self._remover.close()

    def _delete(self, names: list[str]) -> None:
        _delete_each(names, "rabbit_auth_backend_internal:delete_user", "delete_user",
                     self.acting_user)


async def _admin(*statements: str) -> None:
    conn = await asyncpg.connect(PG_BASE)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


class Databases:
    """Empty databases of the local server; the next one is created while the last one
    taken is in use."""

    def __init__(self, base_url: str = PG_BASE) -> None:
        self.base = URL(base_url)
        self._ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="create-database")
        self._next: Future[str] | None = None
        self._lock = threading.Lock()
        self._remover = Remover(self._drop, "databases")

    def url(self, name: str) -> str:
        return str(self.base.with_path("/" + name))

    def take(self) -> str:
        with self._lock:
            ready = self._next or self._ahead.submit(self._create)
            self._next = self._ahead.submit(self._create)
        return ready.result(timeout=120)

    def give_back(self, name: str) -> None:
        self._remover.put(name)

    def close(self) -> None:
        with self._lock:
            ahead, self._next = self._next, None
        if ahead is not None:
            try:
                self._remover.put(ahead.result(timeout=120))
            except Exception as exc:  # it was never handed out
                print(f"could not create a test database: {exc!r}", file=sys.stderr)
        self._remover.close()

    @staticmethod
    def _create() -> str:
        name = f"flowhooks_test_{uuid.uuid4().hex[:10]}"
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
        return name

    @staticmethod
    def _drop(names: list[str]) -> None:
        asyncio.run(_admin(*(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)' for name in names)))


class TestServers:
    """The vhosts, databases and broker users one test process makes. One per process
    (`SERVERS`): `fresh_vhost()` and `fresh_database()` are called by fixtures, by
    `running_system()` and by bench scripts, none of which has a fixture to be handed
    it by."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(self) -> None:
        self.vhosts = Vhosts()
        self.databases = Databases()
        self.broker_users = BrokerUsers()
        atexit.register(self.close)

    def close(self) -> None:
        self.broker_users.close()
        self.vhosts.close()
        self.databases.close()


SERVERS = TestServers()


@contextmanager
def fresh_vhost(servers: TestServers = SERVERS) -> Iterator[str]:
    """An AMQP URL on a new vhost (like nameko's per-test vhost fixture)."""
    name = servers.vhosts.take()
    try:
        yield servers.vhosts.url(name)
    finally:
        servers.vhosts.give_back(name)


@contextmanager
def fresh_database(servers: TestServers = SERVERS) -> Iterator[str]:
    """A PostgreSQL URL of a new, empty database."""
    name = servers.databases.take()
    try:
        yield servers.databases.url(name)
    finally:
        servers.databases.give_back(name)
