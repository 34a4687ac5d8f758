"""The requests that point back at one request: its replays (`replay_of`) and, for a
source's request, the runs it was fanned out to (`source_request_id`, migration 012).
Each is one indexed query, received after the request, so the partitions before it
are not read."""

import uuid
from datetime import datetime
from typing import Literal

import asyncpg

from services.debugger.partitions import PARENT

# A request's detail lists this many of either at most, oldest first (a source routes
# to at most 25 flows, the runner's MAX_ROUTES; replays add their own).
MAX_LISTED = 100

Link = Literal["replay_of", "source_request_id"]


async def linked_ids(
    pool: asyncpg.Pool,
    link: Link,
    request_id: str,
    workspace_id: str,
    received_at: datetime,
    source: str = PARENT,
) -> list[str]:
    """The ids of the requests whose `link` column names `request_id`, oldest first."""
    rows = await pool.fetch(
        f"SELECT id FROM {source} WHERE {link} = $1 AND workspace_id = $2"
        " AND received_at >= $4 ORDER BY received_at, id LIMIT $3",
        request_id,
        uuid.UUID(workspace_id),
        MAX_LISTED,
        received_at,
    )
    return [row["id"] for row in rows]
