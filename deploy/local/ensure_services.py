"""Make sure RabbitMQ and PostgreSQL answer before `make run` / `make test`.

Standard library only (it runs before anything else). For each server named by
FLOWHOOKS_AMQP_URL and FLOWHOOKS_DATABASE_URL (defaults: 127.0.0.1:5672 and :5432):
if it answers, fine; if it is local, installed and stopped, start it and wait; otherwise
say exactly what is missing and exit 1.
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


def ensure(name: str, url: str, default_port: int, starter: list[str] | None, hint: str) -> bool:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    if answers(host, port):
        print(f"{name}: answering on {host}:{port}")
        return True
    if host not in LOCAL or starter is None:
        print(f"{name}: nothing answers on {host}:{port}. {hint}", file=sys.stderr)
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
        "Install it (Debian: apt-get install rabbitmq-server) or point FLOWHOOKS_AMQP_URL "
        "at a running broker.",
    )
    ok &= ensure(
        "PostgreSQL", DATABASE_URL, 5432, start_postgresql(),
        "Install it (Debian: apt-get install postgresql) or point FLOWHOOKS_DATABASE_URL "
        "at a running server.",
    )
    if not shutil.which("rabbitmqctl"):
        print("note: rabbitmqctl is not on PATH; the tests need it to create a vhost per test",
              file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
