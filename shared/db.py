"""PostgreSQL: the connection pool and the migrations every service applies to its own
schema at start (and `flowhooks migrate`). Migrations are plain SQL files
`services/<name>/migrations/NNN_what.sql`, applied in order, each recorded in
`<schema>.schema_migrations`; an advisory lock keeps concurrent replicas from racing.

Failover: `FLOWHOOKS_DATABASE_URL` may name several hosts, primary first, e.g.
`postgresql://user@db1:5432,db2:5432/flowhooks?target_session_attrs=read-write`
(docs/operations.md, "Database failover"). Every connection, the pool's included,
tries the hosts in order, each for at most `CONNECT_TIMEOUT_S` (asyncpg's own timeout
covers all hosts together: a first host that hangs would use it all up and the next one
would never be tried), and keeps the first that accepts writes. A pooled connection to
a primary that died is closed by asyncpg when the socket breaks (the query on it fails
once) and replaced, on the next acquire, by one to whichever host is primary then."""

from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import asyncpg
import structlog

log = structlog.get_logger(__name__)

# Per host, for the TCP connect, TLS and authentication together.
CONNECT_TIMEOUT_S = 5.0
# Idle pooled connections are closed after this: none lingers long on a host that
# stopped being the primary without breaking the socket.
MAX_INACTIVE_CONNECTION_LIFETIME_S = 60.0

# The database is away, or no host is the primary (yet): retry later, the request or
# write itself is fine. A commit interrupted by one of these may or may not have
# happened: callers must not answer success, and retried writes must be idempotent.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable
    TimeoutError,  # CONNECT_TIMEOUT_S or command_timeout
    asyncpg.InterfaceError,  # connection closed under the query, pool closing
    asyncpg.PostgresConnectionError,  # class 08
    # TargetServerAttributeNotMatched (every host up, none writable), and a pooled
    # connection whose server died while it was idle: its next query fails once with
    # "cannot switch to state ..." (asyncpg issues #784, #1069), then it is discarded.
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.CannotConnectNowError,  # starting up, shutting down
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,  # a standby
)


def database_of(dsn: str) -> str:
    """The database a `postgresql://` URL names (any number of hosts)."""
    name = unquote(urlsplit(dsn).path.lstrip("/"))
    if not name:
        raise ValueError("the database URL names no database (postgresql://host/NAME)")
    return name


def with_database(dsn: str, name: str) -> str:
    """The same URL (hosts, user, options) naming database `name` instead."""
    return urlunsplit(urlsplit(dsn)._replace(path="/" + quote(name, safe="")))


def host_dsns(dsn: str) -> list[str]:
    """One URL per host of a multi-host URL (`h1:p1,h2:p2`), in order, each with the
    same user, database and options; a single-host URL as it is."""
    parts = urlsplit(dsn)
    user, at, hosts = parts.netloc.rpartition("@")
    if "," not in hosts:
        return [dsn]
    return [
        urlunsplit(parts._replace(netloc=f"{user}{at}{host.strip()}"))
        for host in hosts.split(",")
        if host.strip()
    ]


async def connect(dsn: str, **kwargs: Any) -> asyncpg.Connection:
    """`asyncpg.connect`, trying the hosts of `dsn` one at a time, each for at most
    `CONNECT_TIMEOUT_S`. When none accepts, raises what asyncpg would: the last host's
    connection error (OSError, TimeoutError, ...), else `TargetServerAttributeNotMatched`
    (every host up, none writable); every host's error is in a note."""
    failures: list[tuple[str, BaseException]] = []
    for candidate in host_dsns(dsn):
        try:
            conn: asyncpg.Connection = await asyncpg.connect(
                candidate, timeout=CONNECT_TIMEOUT_S, **kwargs
            )
            return conn
        except UNAVAILABLE as exc:  # not this host (or not now): try the next one
            failures.append((urlsplit(candidate).netloc.rpartition("@")[2], exc))
    errors = [exc for _, exc in failures]
    chosen = next((e for e in reversed(errors) if not isinstance(e, _NOT_WRITABLE)), errors[-1])
    if len(failures) > 1:
        chosen.add_note("no host accepted: " + "; ".join(f"{h}: {e!r}" for h, e in failures))
    raise chosen


_NOT_WRITABLE = asyncpg.exceptions.TargetServerAttributeNotMatched


async def ensure_database(dsn: str) -> None:
    """Create the database named in `dsn` if it does not exist yet."""
    name = database_of(dsn)
    admin = await connect(with_database(dsn, "postgres"))
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            # Identifiers cannot be parameters; quote it.
            quoted = '"' + name.replace('"', '""') + '"'
            await admin.execute(f"CREATE DATABASE {quoted}")
            log.info("database_created", database=name)
    finally:
        await admin.close()


async def create_pool(
    dsn: str,
    max_size: int,
    *,
    statement_timeout_ms: int | None = None,
    application_name: str | None = None,
) -> asyncpg.Pool:
    """A pool of at most `max_size` connections. `statement_timeout_ms`: PostgreSQL's
    `statement_timeout` on each of its connections (0: none, whatever the database's or
    role's default; None: that default); a statement past it fails with
    `asyncpg.QueryCanceledError` and its server-side work stops, which a client-side
    timeout alone would not do. `application_name` shows the pool in
    `pg_stat_activity`."""
    server_settings: dict[str, str] = {}
    if statement_timeout_ms is not None:
        server_settings["statement_timeout"] = f"{statement_timeout_ms}ms"
    if application_name is not None:
        server_settings["application_name"] = application_name
    pool = await asyncpg.create_pool(
        dsn,
        min_size=1,
        max_size=max_size,
        command_timeout=30,
        max_inactive_connection_lifetime=MAX_INACTIVE_CONNECTION_LIFETIME_S,
        connect=connect,
        server_settings=server_settings or None,
    )
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
    conn = await connect(dsn)
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
