"""Make sure RabbitMQ and PostgreSQL answer before `make run` / `make test`.

For each server named by FLOWHOOKS_AMQP_URL and FLOWHOOKS_DATABASE_URL (defaults:
127.0.0.1:5672 and :5432): if it answers, fine; if it is local, installed and stopped,
start it and wait; if it is local and not installed but a Docker engine answers, start
it as a container (deploy/local/containers.py, testcontainers); otherwise say exactly
what is missing and exit 1. Standard library only, but for the container path.
"""

import glob
import os
import shutil
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

AMQP_URL = os.environ.get("FLOWHOOKS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
DATABASE_URL = os.environ.get(
    "FLOWHOOKS_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/flowhooks"
)
LOCAL = {"127.0.0.1", "localhost", "::1"}
# harness/rabbit_cluster.py and harness/pg_replica.py start their own nodes from these.
TEST_BINARIES = ("/usr/lib/rabbitmq/bin/rabbitmq-server", "/usr/lib/postgresql/15/bin/initdb")


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def start_rabbitmq() -> list[str] | None:
    return ["rabbitmq-server", "-detached"] if shutil.which("rabbitmq-server") else None


def start_postgresql() -> list[str] | None:
    versions = sorted(os.path.basename(p) for p in glob.glob("/etc/postgresql/*"))
    if shutil.which("pg_ctlcluster") and versions:
        return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"]
    return None


def docker_engine() -> tuple[bool, str]:
    """Whether a Docker engine answers (its /_ping), and where it was looked for."""
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    parts = urlsplit(where)
    try:
        if parts.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(2)
            sock.connect(parts.path)
        elif parts.scheme == "tcp" and parts.hostname:
            sock = socket.create_connection((parts.hostname, parts.port or 2375), timeout=2)
        else:
            return False, where
        with sock:
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            status_line = sock.recv(64).split(b"\r\n", 1)[0]
        return status_line.startswith(b"HTTP/1.") and b" 200" in status_line, where
    except OSError:
        return False, where


def start_container(name: str, server: str) -> bool:
    """deploy/local/containers.py's container for `server` ("RABBITMQ"/"POSTGRESQL")."""
    import containers  # deploy/local/, beside this script: testcontainers is a dev package

    spec = getattr(containers, server)
    print(f"{name}: not installed; starting Docker container {spec.container} ({spec.image})")
    try:
        containers.start(spec)
    except Exception as exc:  # the engine refused, the image could not be pulled, ...
        print(f"{name}: the container did not start: {exc}", file=sys.stderr)
        return False
    print(f"{name}: running in container {spec.container} (docker rm -f to remove it)")
    return True


def ensure(
    name: str,
    url: str,
    default_port: int,
    starter: list[str] | None,
    hint: str,
    container: str,
) -> bool:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    if answers(host, port):
        print(f"{name}: answering on {host}:{port}")
        return True
    if host not in LOCAL:
        print(f"{name}: nothing answers on {host}:{port}. {hint}", file=sys.stderr)
        return False
    if starter is None:
        engine, where = docker_engine()
        if engine:
            return start_container(name, container)
        print(
            f"{name}: nothing answers on {host}:{port}, it is not installed here, and no "
            f"Docker engine answers at {where} to run it in a container. {hint}",
            file=sys.stderr,
        )
        return False
    print(f"{name}: not answering on {host}:{port}; starting it: {' '.join(starter)}")
    subprocess.run(starter, check=False)  # noqa: S603
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if answers(host, port):
            print(f"{name}: started")
            return True
        time.sleep(1)
    print(f"{name}: started but still not answering on {host}:{port} after 90 s", file=sys.stderr)
    return False


def main() -> int:
    ok = ensure(
        "RabbitMQ", AMQP_URL, 5672, start_rabbitmq(),
        "Install it (Debian: apt-get install rabbitmq-server), or Docker, or point "
        "FLOWHOOKS_AMQP_URL at a running broker.",
        "RABBITMQ",
    )
    ok &= ensure(
        "PostgreSQL", DATABASE_URL, 5432, start_postgresql(),
        "Install it (Debian: apt-get install postgresql), or Docker, or point "
        "FLOWHOOKS_DATABASE_URL at a running server.",
        "POSTGRESQL",
    )
    # What only the tests need, beyond servers that answer.
    if not shutil.which("rabbitmqctl") and not shutil.which("docker"):
        print("note: neither rabbitmqctl nor the docker command is on PATH; the tests need "
              "one of them to create a vhost per test", file=sys.stderr)
    missing = [path for path in TEST_BINARIES if not os.path.exists(path)]
    if missing:
        print(f"note: the failover tests run their own servers from {', '.join(missing)}, "
              "which are missing (apt-get install rabbitmq-server postgresql-15)",
              file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
