"""RabbitMQ and PostgreSQL as Docker containers, through testcontainers: for a machine
with a Docker engine but neither server installed. deploy/local/ensure_services.py
calls `start(...)` for `make run` and `make test` when nothing answers on a local port.

Each container publishes the server's standard port on 127.0.0.1 (5672, 5432), so every
default URL (FLOWHOOKS_AMQP_URL, FLOWHOOKS_DATABASE_URL, the tests') reaches it, and
is left running for the next run: testcontainers' reaper is turned off, since it would
remove the containers when this script exits. The guest user (RabbitMQ) and the
postgres user without a password (PostgreSQL, trust) are what the local servers have.
`docker rm -f flowhooks-rabbitmq flowhooks-postgres` removes them.

The tests reach the broker's rabbitmqctl with `docker exec` (the Makefile sets
FLOWHOOKS_TEST_RABBITMQCTL). What containers cannot give: the failover tests run their
own RabbitMQ nodes and PostgreSQL servers from the host's binaries
(harness/rabbit_cluster.py, harness/pg_replica.py), and two tests restart the host's servers;
those need the servers installed."""

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Server:
    container: str
    image: str  # the versions docker-compose.yml runs
    port: int
    # Run inside the container until it exits 0: the server accepts clients on its port
    # (the PostgreSQL image's first, initdb-time server listens on no TCP port).
    ready: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)


RABBITMQ = Server(
    "flowhooks-rabbitmq",
    "rabbitmq:3.13-management",
    5672,
    ("rabbitmq-diagnostics", "-q", "check_port_connectivity"),
)
POSTGRESQL = Server(
    "flowhooks-postgres",
    "postgres:16",
    5432,
    ("pg_isready", "-q", "-h", "127.0.0.1", "-U", "postgres"),
    {"POSTGRES_HOST_AUTH_METHOD": "trust"},
)


def start(server: Server, timeout_s: float = 180) -> None:
    """`server`'s container running and ready: the one an earlier run left, started
    again if it stopped, or a new one."""
    from testcontainers.core.config import testcontainers_config
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.docker_client import DockerClient

    testcontainers_config.ryuk_disabled = True  # they outlive this script on purpose
    found = DockerClient().client.containers.list(
        all=True, filters={"name": f"^{server.container}$"}
    )
    if found:
        wrapped = found[0]
        wrapped.start()  # nothing happens when it is running
    else:
        container = DockerContainer(server.image).with_name(server.container)
        # On loopback only, like the local servers.
        container.with_bind_ports(server.port, ("127.0.0.1", server.port))  # type: ignore[arg-type]
        for key, value in server.env.items():
            container.with_env(key, value)
        wrapped = container.start().get_wrapped_container()
    wait_ready(wrapped, server, timeout_s)


def wait_ready(wrapped: Any, server: Server, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while wrapped.exec_run(list(server.ready)).exit_code != 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{server.container} not ready after {timeout_s} s")
        time.sleep(1)
