"""Which requests already have their outcome recorded, so that a batch of StartRuns
delivered again (its runner died mid-batch) runs only what had not finished. Marks are
group-committed (one INSERT for the runs that finish together) and written before the
batch is acked; they are an optimisation of at-least-once, so a mark that cannot be
written is logged, not fatal (the run may then run again after a crash)."""

import asyncio

import asyncpg
import structlog

from shared.db import delete_in_batches
from shared.group_commit import GroupCommit

log = structlog.get_logger(__name__)

MARK_TIMEOUT_S = 2.0


class FinishedRuns:
    def __init__(self, pool: asyncpg.Pool, keep_s: float, prune_batch: int = 10_000) -> None:
        self.pool = pool
        self.keep_s = keep_s
        self.prune_batch = prune_batch
        self._marks: GroupCommit[str] = GroupCommit(self._insert)

    async def mark(self, request_id: str) -> None:
        """Waits for the mark at most about twice `MARK_TIMEOUT_S` (the insert in
        flight, then its own): a slow database must not hold back the acks of runs
        that are done. The bound is on each insert, not on each caller (a timer and a
        task per run cost the supervisor more than the mark itself)."""
        try:
            await self._marks.submit(request_id)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("finished_mark_failed", error=repr(exc))

    async def _insert(self, request_ids: list[str]) -> None:
        await asyncio.wait_for(
            self.pool.execute(
                "INSERT INTO runner.finished_runs (request_id) SELECT unnest($1::text[])"
                " ON CONFLICT DO NOTHING",
                request_ids,
            ),
            MARK_TIMEOUT_S,
        )

    async def which(self, request_ids: list[str]) -> set[str]:
        """Those of `request_ids` that finished (none, if the database cannot say)."""
        try:
            rows = await self.pool.fetch(
                "SELECT request_id FROM runner.finished_runs WHERE request_id = ANY($1::text[])",
                request_ids,
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("finished_lookup_failed", error=repr(exc))
            return set()
        return {row["request_id"] for row in rows}

    async def prune(self) -> int:
        """Deletes marks older than `keep_s`, in bounded batches."""
        return await delete_in_batches(
            self.pool,
            "DELETE FROM runner.finished_runs WHERE request_id IN (SELECT request_id"
            " FROM runner.finished_runs WHERE finished_at < now() - make_interval(secs => $1)"
            " LIMIT $2)",
            self.keep_s,
            batch=self.prune_batch,
        )

    async def drain(self) -> None:
        await self._marks.drain()
