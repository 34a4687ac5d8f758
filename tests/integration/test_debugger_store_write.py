"""The intake's write sends a batch as one array a column (store.UPSERT): what it stores
is what a plain INSERT of the same values stores, column for column, whatever the text
holds (quotes, backslashes, control characters, characters beyond the BMP), whatever
the times' offsets and precision, and a column NULL in every row (sent as one NULL)."""

from datetime import UTC, datetime, timedelta, timezone

import pytest

from services.debugger.app import DATABASE
from services.debugger.store import COLUMNS, RequestRow, RequestStore
from shared.db import open_pool
from shared.request_ids import new_request_id
from tests.integration.test_debugger_partitions import row

pytestmark = pytest.mark.integration

AWKWARD = "q\"uote\\back\\\\slash\nnew\tline\r\x01\x1f é ü 中文 😀 \u2028\u2029 </script> 's"
NOW = datetime.now(UTC).replace(microsecond=123456)


def awkward_row(request_id: str) -> RequestRow:
    return row(
        request_id,
        NOW,
        path=f"/hook/{AWKWARD}",
        query='{"a": ["1", "2"], "k\\"ey": "v\\\\al"}',
        headers='{"x-event": "pu\\"sh", "x-emoji": "😀\\u00e9"}',
        content_type=AWKWARD,
        raw_body=AWKWARD * 3,
        raw_body_truncated=True,
        input='{"big": 9223372036854775807, "f": 1.5e-7, "n": null, "t": true, "s": "\\u0001"}',
        outcome="failed",
        status_code=599,
        response_content_type="text/plain; charset=utf-8",
        response_body=AWKWARD,
        error=AWKWARD,
        steps='[{"ref_id": "s1", "output": {"v": [1, "two", {"3": null}]}}]',
        started_at=NOW.astimezone(timezone(timedelta(hours=5, minutes=30))),
        finished_at=(NOW + timedelta(seconds=1)).replace(microsecond=0),
        replay_of="01a2",
        truncated='{"raw_body": 12}',
        raw_body_encoding="base64",
        duplicate_of="dup",
        response_headers='{"x-r": "é"}',
        repeated=AWKWARD,
        debounced_by="deb",
        answered_at=NOW.replace(tzinfo=None),  # naive: UTC, as asyncpg takes it
        resume_at=NOW + timedelta(days=400),
        source_request_id="src",
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        trace_parent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )


async def test_the_batch_write_stores_what_a_plain_insert_stores(database_url: str) -> None:
    pool = await open_pool(database_url, 2, DATABASE.schema, DATABASE.migrations)
    try:
        written, reference = new_request_id(NOW), new_request_id(NOW)
        sparse = new_request_id(NOW)
        store = RequestStore(pool)
        await store.write([awkward_row(written), row(new_request_id(NOW), NOW)])
        await store.write([row(sparse, NOW)])  # its NULL columns NULL in every row
        # The reference: each value a parameter of its column's type (asyncpg's codecs).
        values = ", ".join(f"${n}" for n in range(1, len(COLUMNS) + 1))
        await pool.execute(
            f"INSERT INTO debugger.requests ({', '.join(COLUMNS)}) VALUES ({values})",
            *awkward_row(reference),
        )
        selected = ", ".join(f"{name}::text" for name in COLUMNS[1:])
        stored = {
            record["id"]: tuple(record)[1:]
            for record in await pool.fetch(
                f"SELECT id, {selected} FROM debugger.requests WHERE id = ANY($1::text[])",
                [written, reference],
            )
        }
        assert stored[written] == stored[reference]
        assert AWKWARD in stored[written]
        # A column NULL in every row of a batch goes as one NULL: stored NULL.
        nulls = await pool.fetchrow(
            "SELECT response_body, error, trace_id, resume_at FROM debugger.requests WHERE id = $1",
            sparse,
        )
        assert tuple(nulls) == (None, None, None, None)
    finally:
        await pool.close()
