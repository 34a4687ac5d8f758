"""Which requests already have their outcome recorded, so that a batch of StartRuns
delivered again (its runner died mid-batch) runs only what had not finished. Marks are
group-committed (one INSERT for the runs that finish together) and written before the
batch is acked; they are an optimisation of at-least-once, so a mark that cannot be
written is logged, not fatal (the run may then run again after a crash).

Runs marked together (`mark_all`: a message's parked runs) are one item of the group
commit. While marks keep coming the inserts go over one connection held from the pool
(given back once none came for `hold_idle_s`): a connection given back is reset (a
second round trip, `RESET ALL` and the like) at every insert, which under load cost the
supervisor more than the insert."""

import asyncio
import contextlib
import time
from collections.abc import Sequence

import asyncpg
import structlog

from shared.db import delete_in_batches
from shared.group_commit import GroupCommit

log = structlog.get_logger(__name__)

MARK_TIMEOUT_S = 2.0
# What a mark may fail with (logged: the run may run again after a crash).
_MARK_ERRORS = (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


class FinishedRuns:
    def __init__(
        self,
        pool: asyncpg.Pool,
        keep_s: float,
        prune_batch: int = 10_000,
        hold_idle_s: float = 1.0,
    ) -> None:
        self.pool = pool
        self.hold_idle_s = hold_idle_s
        self.keep_s = keep_s
        self.prune_batch = prune_batch
        # Each item: the marks of one caller (a message's runs, or one).
        self._marks: GroupCommit[Sequence[str]] = GroupCommit(self._insert)
        # The connection the inserts go over while marks keep coming (None: none held).
        self._held: asyncpg.pool.PoolConnectionProxy | None = None
        self._inserting = False
        self._last_insert = 0.0  # monotonic
        self._idle_check: asyncio.TimerHandle | None = None
        self._releasing: set[asyncio.Task[None]] = set()

    async def mark(self, request_id: str) -> None:
        await self.mark_all((request_id,))

    async def mark_all(self, request_ids: Sequence[str]) -> None:
        """Waits for the marks at most about twice `MARK_TIMEOUT_S` (the insert in
        flight, then its own): a slow database must not hold back the acks of runs
        that are done. The bound is on each insert, not on each caller (a timer and a
        task per run cost the supervisor more than the mark itself)."""
        if not request_ids:
            return
        try:
            await self._marks.submit(request_ids)
        except _MARK_ERRORS as exc:
            log.warning("finished_mark_failed", error=repr(exc))

    def mark_soon(self, request_id: str) -> "asyncio.Future[None]":
        """The mark handed over without waiting for it: its future goes to `settle`
        (a sync message's runs: services/runner/runs.py)."""
        return self._marks.submit((request_id,))

    async def settle(self, marks: Sequence["asyncio.Future[None]"]) -> None:
        """Waits for marks handed over by `mark_soon`, as `mark_all` waits for its own."""
        if not marks:
            return
        await asyncio.wait(marks)
        for mark in marks:
            error = None if mark.cancelled() else mark.exception()
            if error is not None:  # any: the runs were answered, the message is acked
                log.warning("finished_mark_failed", error=repr(error))

    async def _insert(self, batches: list[Sequence[str]]) -> None:
        request_ids = [request_id for batch in batches for request_id in batch]
        self._inserting = True
        try:
            if self._held is None:
                self._held = await asyncio.wait_for(self.pool.acquire(), MARK_TIMEOUT_S)
            held = self._held
            assert held is not None
            try:
                await asyncio.wait_for(
                    held.execute(
                        "INSERT INTO runner.finished_runs (request_id)"
                        " SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
                        request_ids,
                    ),
                    MARK_TIMEOUT_S,
                )
            except BaseException:
                with contextlib.suppress(Exception):  # the insert's error is the one to tell
                    await self._give_back()  # the pool resets it, or replaces it if broken
                raise
        finally:
            self._inserting = False
            self._last_insert = time.monotonic()
        if self._idle_check is None:
            self._idle_check = asyncio.get_running_loop().call_later(
                self.hold_idle_s, self._release_if_idle
            )

    def _release_if_idle(self) -> None:
        """The held connection back to the pool once no insert came for `hold_idle_s`
        (checked at most that often: no timer an insert)."""
        self._idle_check = None
        if self._held is None:
            return
        idle_s = time.monotonic() - self._last_insert
        if self._inserting or idle_s < self.hold_idle_s:
            self._idle_check = asyncio.get_running_loop().call_later(
                self.hold_idle_s - idle_s if not self._inserting else self.hold_idle_s,
                self._release_if_idle,
            )
            return
        # Taken from `_held` here, in one step with the check: no insert is using it,
        # and the next one acquires another.
        held, self._held = self._held, None
        task = asyncio.get_running_loop().create_task(self._release(held))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _give_back(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            await self._release(held)

    async def _release(self, held: asyncpg.pool.PoolConnectionProxy) -> None:
        await self.pool.release(held, timeout=MARK_TIMEOUT_S)

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
        if self._idle_check is not None:
            self._idle_check.cancel()
            self._idle_check = None
        await self._give_back()
        await asyncio.gather(*self._releasing, return_exceptions=True)
