"""Links between a source's request and the runs it was fanned out to: each run stores
the source request's id (`source_request_id`, migration 012), so the request's runs are
one indexed query away."""

import uuid

import asyncpg

# A source routes to at most 25 flows (runner's MAX_ROUTES); replays add their own.
MAX_LISTED_RUNS = 100


async def runs_of(pool: asyncpg.Pool, request_id: str, workspace_id: str) -> list[str]:
    """The ids of the runs a source request was fanned out to, oldest first."""
    rows = await pool.fetch(
        "SELECT id FROM debugger.requests WHERE source_request_id = $1 AND workspace_id = $2"
        " ORDER BY received_at, id LIMIT $3",
        request_id,
        uuid.UUID(workspace_id),
        MAX_LISTED_RUNS,
    )
    return [row["id"] for row in rows]
