"""`runner.dedup_keys` and the `runner.claim_dedup_key` RPC: which request of a flow is
the first of its dedup key within the window, and its answer for the duplicates.

One statement decides the first, atomically across every runner replica (the primary
key): an INSERT that, on conflict, takes the row over only when the window has passed
or a pending first's lease has (its run was lost). The first's result is written when
its run finishes (`RunService._one`, before the sender's answer), so a duplicate that
arrives after the first's answer always finds it.

A first that failed (a 5xx answer, or a run that failed, timed out or expired) does not
hold its key (contract, "Deduplication"): its row is deleted instead, so the sender's
retry runs. Deleting cannot let two retries run: each retry's INSERT meets the other's
row (the primary key), so one statement still decides one first."""

from datetime import timedelta

import asyncpg
import orjson
import structlog

from shared.db import delete_in_batches
from shared.schemas.dedup import ClaimDedupKey, DedupClaim, StoredResult
from shared.schemas.runs import RunResult
from shared.schemas.vocabulary import FAILED_OUTCOMES

log = structlog.get_logger(__name__)

CLAIM = """
INSERT INTO runner.dedup_keys (flow_id, key, first_request_id, state, expires_at, lease_until)
VALUES ($1, $2, $3, 'pending', now() + $4::interval, now() + $5::interval)
ON CONFLICT (flow_id, key) DO UPDATE SET
    first_request_id = EXCLUDED.first_request_id, state = 'pending', status_code = NULL,
    content_type = NULL, body = NULL, headers = NULL, created_at = now(),
    expires_at = EXCLUDED.expires_at, lease_until = EXCLUDED.lease_until
WHERE runner.dedup_keys.expires_at <= now()
    OR (runner.dedup_keys.state = 'pending' AND runner.dedup_keys.lease_until <= now())
RETURNING first_request_id
"""
READ = (
    "SELECT first_request_id, state, status_code, content_type, body, headers::text"
    " FROM runner.dedup_keys WHERE flow_id = $1 AND key = $2"
)
# Only while the request still holds the key (a later one may have taken over a lapsed
# lease or a released key).
RELEASE = "DELETE FROM runner.dedup_keys WHERE flow_id = $1 AND key = $2 AND first_request_id = $3"
DONE = (
    "UPDATE runner.dedup_keys SET state = 'done', status_code = $4, content_type = $5,"
    " body = $6, headers = $7::jsonb, lease_until = NULL"
    " WHERE flow_id = $1 AND key = $2 AND first_request_id = $3"
)


def holds_key(result: RunResult) -> bool:
    """Whether a first's result is what its duplicates get: a success or a client error
    (4xx). A 5xx or a failed run lets go of the key instead."""
    return result.status_code < 500 and result.outcome not in FAILED_OUTCOMES


class DedupKeys:
    def __init__(self, pool: asyncpg.Pool, prune_batch: int = 10_000) -> None:
        self.pool = pool
        self.prune_batch = prune_batch

    async def claim(self, request: ClaimDedupKey) -> DedupClaim:
        """`runner.claim_dedup_key`, in its three modes (shared/schemas/dedup.py)."""
        if request.mode == "release":
            await self.pool.execute(RELEASE, request.flow_id, request.key, request.request_id)
            return DedupClaim(state="released", first_request_id=request.request_id)
        lease = timedelta(seconds=request.lease_s) if request.lease_s is not None else None
        async with self.pool.acquire() as conn:
            if request.mode == "claim":
                first = await conn.fetchval(
                    CLAIM,
                    request.flow_id,
                    request.key,
                    request.request_id,
                    timedelta(seconds=request.window_s),
                    lease,
                )
                if first == request.request_id:
                    return DedupClaim(state="first", first_request_id=first)
            row = await conn.fetchrow(READ, request.flow_id, request.key)
        if row is None:
            if request.mode == "wait":
                # The first failed and let go of the key; nobody took it since.
                return DedupClaim(state="released", first_request_id="")
            # Pruned or released between the two statements: ask again.
            return await self.claim(request)
        if row["first_request_id"] == request.request_id:
            # Asked again by the first itself (a retried call): still the first.
            return DedupClaim(state="first", first_request_id=request.request_id)
        if row["state"] != "done":
            return DedupClaim(state="pending", first_request_id=row["first_request_id"])
        return DedupClaim(
            state="done",
            first_request_id=row["first_request_id"],
            result=StoredResult(
                status_code=row["status_code"],
                content_type=row["content_type"],
                body=row["body"],
                headers=orjson.loads(row["headers"]) if row["headers"] else {},
            ),
        )

    async def record(self, flow_id: str, key: str, result: RunResult) -> None:
        """The first's answer, for its duplicates; or, when it failed, the key let go
        (`holds_key`). Only while it still holds the key. Logged, not raised: the
        sender's answer does not depend on it (duplicates then wait out the lease)."""
        try:
            if not holds_key(result):
                await self.pool.execute(RELEASE, flow_id, key, result.request_id)
                return
            await self.pool.execute(
                DONE,
                flow_id,
                key,
                result.request_id,
                result.status_code,
                result.content_type,
                result.body,
                orjson.dumps(result.headers).decode(),
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("dedup_result_not_recorded", error=repr(exc))

    async def prune(self) -> int:
        """Deletes keys past their window, in bounded batches."""
        return await delete_in_batches(
            self.pool,
            "DELETE FROM runner.dedup_keys WHERE (flow_id, key) IN (SELECT flow_id, key"
            " FROM runner.dedup_keys WHERE expires_at <= now() LIMIT $1)",
            batch=self.prune_batch,
        )
