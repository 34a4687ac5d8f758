"""Isolation on the real local servers: a RabbitMQ vhost and a PostgreSQL database of
their own for each test (or e2e module), removed afterwards."""

import asyncio
import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg
from yarl import URL

AMQP_BASE = os.environ.get("FLOWHOOKS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
PG_BASE = os.environ.get(
    "FLOWHOOKS_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@contextmanager
def fresh_vhost() -> Iterator[str]:
    """An AMQP URL on a new vhost (like nameko's per-test vhost fixture)."""
    name = f"flowhooks-test-{uuid.uuid4().hex[:10]}"
    user = URL(AMQP_BASE).user or "guest"
    _rabbitmqctl("add_vhost", name)
    _rabbitmqctl("set_permissions", "-p", name, user, ".*", ".*", ".*")
    try:
        yield str(URL(AMQP_BASE).with_path("/" + name))
    finally:
        _rabbitmqctl("delete_vhost", name)


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_BASE)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def fresh_database() -> Iterator[str]:
    """A PostgreSQL URL of a new, empty database."""
    name = f"flowhooks_test_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield str(URL(PG_BASE).with_path("/" + name))
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
