"""Links between a source's request and the runs it was fanned out to: each run stores
the source request's id (`source_request_id`, migration 012), so the request's runs are
one indexed query away."""

import uuid
from datetime import datetime

import asyncpg

from services.debugger.partitions import PARENT

# A source routes to at most 25 flows (runner's MAX_ROUTES); replays add their own.
MAX_LISTED_RUNS = 100


async def runs_of(
    pool: asyncpg.Pool,
    request_id: str,
    workspace_id: str,
    received_at: datetime,
    source: str = PARENT,
) -> list[str]:
    """The ids of the runs a source request was fanned out to, oldest first: received
    with it, so the partitions before it are not read."""
    rows = await pool.fetch(
        f"SELECT id FROM {source} WHERE source_request_id = $1 AND workspace_id = $2"
        " AND received_at >= $4 ORDER BY received_at, id LIMIT $3",
        request_id,
        uuid.UUID(workspace_id),
        MAX_LISTED_RUNS,
        received_at,
    )
    return [row["id"] for row in rows]
