"""The kernel's named pools against the real PostgreSQL: each has its own size and
statement timeout (enforced by the server, whatever the database's default), shows its
name in pg_stat_activity, and is closed with the kernel; the main pool is as before."""

from pathlib import Path

import asyncpg
import pytest

from shared.service import Database, Kernel
from shared.settings import DatabaseSettings
from shared.web import base_app

pytestmark = pytest.mark.integration


async def test_named_pools_have_their_own_bounds_and_close_with_the_kernel(
    amqp_url: str, database_url: str, tmp_path: Path
) -> None:
    admin = await asyncpg.connect(database_url)
    database = await admin.fetchval("SELECT current_database()")
    # A default the API pool overrides and the intake's must not inherit.
    await admin.execute(f'ALTER DATABASE "{database}" SET statement_timeout = 250')
    settings = DatabaseSettings(amqp_url=amqp_url, database_url=database_url, shutdown_timeout_s=5)
    kernel = Kernel("test", settings, base_app("test"))
    await kernel.start(Database("named_pools", tmp_path))
    try:
        api = await kernel.named_pool("api", 2, statement_timeout_ms=100)
        ingest = await kernel.named_pool("ingest", 1, statement_timeout_ms=0)
        assert await api.fetchval("SHOW statement_timeout") == "100ms"
        assert await ingest.fetchval("SHOW statement_timeout") == "0"
        assert await kernel.pool.fetchval("SHOW statement_timeout") == "250ms"
        # The server stops a statement past the bound; the intake's waits it out.
        with pytest.raises(asyncpg.QueryCanceledError):
            await api.fetchval("SELECT pg_sleep(1)")
        assert await api.fetchval("SELECT 1") == 1  # the connection is still good
        await ingest.execute("SELECT pg_sleep(0.4)")
        # Sizes are their own: the API's two connections held, the intake still writes.
        async with api.acquire(), api.acquire():
            assert await ingest.fetchval("SELECT 2") == 2
        names = {
            row["application_name"]
            for row in await admin.fetch(
                "SELECT application_name FROM pg_stat_activity WHERE datname = $1", database
            )
        }
        assert {"flowhooks-test-api", "flowhooks-test-ingest"} <= names
        with pytest.raises(AssertionError, match="asked for twice"):
            await kernel.named_pool("api", 1)
    finally:
        await kernel.stop()
        await admin.close()
    assert api.is_closing() and ingest.is_closing() and kernel.pool.is_closing()
