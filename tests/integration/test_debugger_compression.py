"""The large values of a request (its step trace, bodies, input) are compressed with lz4
(migration 018) in the partitions that exist at the migration and in those made after
it, and read back as they were written."""

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from services.debugger.app import DATABASE
from services.debugger.partitions import Partitions
from services.debugger.store import RequestStore
from shared.db import open_pool
from shared.request_ids import new_request_id
from tests.integration.test_debugger_partitions import WORKSPACE, row

pytestmark = pytest.mark.integration

# A trace of a few kilobytes, compressible as traces are (repeated keys and shapes).
STEPS = orjson.dumps(
    [
        {
            "ref_id": f"s{i}",
            "type": "http",
            "input": {"url": f"https://example.com/items/{i}"},
            "output": {"items": [{"id": k, "name": f"item {k}"} for k in range(40)]},
            "error": None,
            "started_at": "2026-12-07T00:00:00Z",
            "duration_ms": 1.5,
        }
        for i in range(6)
    ]
).decode()


async def test_large_values_are_compressed_with_lz4_in_old_and_new_partitions(
    database_url: str,
) -> None:
    pool = await open_pool(database_url, 2, DATABASE.schema, DATABASE.migrations)
    try:
        store = RequestStore(pool)
        parts = Partitions(
            pool, interval=timedelta(days=1), ahead=timedelta(days=3), max_age=timedelta(days=30)
        )
        now = datetime.now(UTC)
        later = now + timedelta(days=10)  # past what the migration made: a new partition
        await parts.ensure(later, later)
        ids = [new_request_id(now), new_request_id(later)]
        body = "x" * 1000 + "y" * 3000
        await store.write(
            [
                row(request_id, at, steps=STEPS, raw_body=body)
                for request_id, at in zip(ids, (now, later), strict=True)
            ]
        )
        stored = await pool.fetch(
            "SELECT tableoid::regclass::text AS home, pg_column_compression(steps) AS steps,"
            " pg_column_compression(raw_body) AS body FROM debugger.requests ORDER BY received_at"
        )
        assert len({record["home"] for record in stored}) == 2
        assert [(record["steps"], record["body"]) for record in stored] == [("lz4", "lz4")] * 2
        for request_id in ids:
            found = await store.get(request_id, WORKSPACE)
            assert found is not None
            assert found["steps"] == orjson.loads(STEPS) and found["raw_body"] == body
    finally:
        await pool.close()
