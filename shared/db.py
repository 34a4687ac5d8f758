"""PostgreSQL: the connection pool and the migrations every service applies to its own
schema at start (and `flowhooks migrate`). Migrations are plain SQL files
`services/<name>/migrations/NNN_what.sql`, applied in order, each recorded in
`<schema>.schema_migrations`; an advisory lock keeps concurrent replicas from racing."""

from pathlib import Path

import asyncpg
import structlog
from yarl import URL

log = structlog.get_logger(__name__)


async def ensure_database(dsn: str) -> None:
    """Create the database named in `dsn` if it does not exist yet."""
    url = URL(dsn)
    name = url.path.lstrip("/")
    admin = await asyncpg.connect(str(url.with_path("/postgres")))
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            # Identifiers cannot be parameters; quote it.
            quoted = '"' + name.replace('"', '""') + '"'
            await admin.execute(f"CREATE DATABASE {quoted}")
            log.info("database_created", database=name)
    finally:
        await admin.close()


async def create_pool(dsn: str, max_size: int) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=max_size, command_timeout=30)
    assert pool is not None
    return pool


async def open_pool(dsn: str, max_size: int, schema: str, migrations: Path) -> asyncpg.Pool:
    """A service's pool, with its schema migrated (every service does this at start)."""
    pool = await create_pool(dsn, max_size)
    async with pool.acquire() as conn:
        await apply_migrations(conn, schema, migrations)
    return pool


async def apply_migrations(conn: asyncpg.Connection, schema: str, directory: Path) -> list[str]:
    """Apply the not yet applied `*.sql` files of `directory`; returns their names."""
    applied: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"flowhooks:{schema}")
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations ('
            " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {
            row["version"]
            for row in await conn.fetch(f'SELECT version FROM "{schema}".schema_migrations')
        }
        for path in sorted(directory.glob("*.sql")):
            if path.name in done:
                continue
            await conn.execute(path.read_text())
            await conn.execute(
                f'INSERT INTO "{schema}".schema_migrations (version) VALUES ($1)', path.name
            )
            applied.append(path.name)
    if applied:
        log.info("migrations_applied", schema=schema, files=applied)
    return applied


async def migrate(dsn: str, schema: str, directory: Path) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return await apply_migrations(conn, schema, directory)
    finally:
        await conn.close()


async def delete_in_batches(
    db: asyncpg.Pool | asyncpg.Connection, statement: str, *args: object, batch: int
) -> int:
    """Runs `statement`, a DELETE whose last parameter is the batch size (`LIMIT`), until
    a pass deletes fewer than `batch` rows: a large purge never holds one long lock.
    Returns how many rows it deleted."""
    total = 0
    while True:
        status = await db.execute(statement, *args, batch)
        count = int(status.split()[-1])
        total += count
        if count < batch:
            return total
