"""The paced runs' dispatcher, one in every runner replica: claims the runs whose turn
it is from `runner.paced_runs` (paced_runs.py), runs each like any async run
(`RunService.run_paced`: recorded, confirmed, called back), then deletes it; renews the
leases of the runs it holds; records the requests of debounced bursts.

It looks for work when this replica inserted paced runs or finished one (at once), and
every `poll_s` besides: what another replica frees (a run that finished there, a lease
that lapsed, a `not_before` that passed) is picked up within that. Runs that fail for an
infrastructure reason (the broker or database away) keep their row: their lease lapses
and they are claimed again."""

import asyncio
from datetime import UTC, datetime

import structlog

from services.runner.paced_runs import ClaimedRun, DebouncedRun, PacedRuns
from services.runner.runs import REPEATED_AFTER_CRASH, RunService

log = structlog.get_logger(__name__)

# Runs due further ahead than this are left to the poll.
MAX_TIMER_S = 5.0


class PacedDispatcher:
    def __init__(
        self, paced: PacedRuns, runs: RunService, max_in_flight: int, poll_s: float
    ) -> None:
        self.paced = paced
        self.runs = runs
        self.max_in_flight = max_in_flight
        self.poll_s = poll_s
        self._wake = asyncio.Event()
        # Request id -> the task running it (its lease is renewed while it is here).
        self._held: dict[str, asyncio.Task[None]] = {}
        self._recording: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        self._wake.set()

    def wake_at(self, due: datetime) -> None:
        """Runs inserted here may start at `due` (their delay, or the settle window):
        looked for then, not at the next poll."""
        delay_s = (due - datetime.now(UTC)).total_seconds()
        if delay_s <= 0:
            self.wake()
        elif delay_s <= MAX_TIMER_S:
            asyncio.get_running_loop().call_later(delay_s, self.wake)
        # Later ones are found by the poll (within `poll_s`): no timer kept for days.

    async def run_forever(self) -> None:
        while True:
            self._wake.clear()
            room = self.max_in_flight - len(self._held)
            try:
                claim = await self.paced.claim(room)
            except Exception as exc:
                log.warning("paced_claim_failed", error=repr(exc))
                await asyncio.sleep(self.poll_s)
                continue
            for run in claim.runs:
                request_id = run.start.request.request_id
                self._held[request_id] = asyncio.create_task(self._run(run))
            if claim.debounced:
                task = asyncio.create_task(self._record_debounced(claim.debounced))
                self._recording.add(task)
                task.add_done_callback(self._recording.discard)
            if room > 0 and len(claim.runs) == room:
                continue  # more may be eligible
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            except TimeoutError:
                pass

    async def _run(self, claimed: ClaimedRun) -> None:
        start = claimed.start
        request_id = start.request.request_id
        if claimed.claims > 1 and start.repeated is None:
            start = start.model_copy(update={"repeated": REPEATED_AFTER_CRASH})
        try:
            await self.runs.run_paced(start)
            await self.paced.finish([request_id])
        except Exception as exc:
            # Its row stays: once its lease lapses it is claimed again, still first of
            # its key.
            log.warning("paced_run_not_recorded", request_id=request_id, error=repr(exc))
        finally:
            del self._held[request_id]
            self.wake()

    async def _record_debounced(self, debounced: list[DebouncedRun]) -> None:
        try:
            await asyncio.gather(
                *(self.runs.record_debounced(run.start, run.debounced_by) for run in debounced)
            )
            await self.paced.finish([run.start.request.request_id for run in debounced])
        except Exception as exc:
            # Their rows stay leased: once the lease lapses, a claim records them again.
            log.warning("debounced_not_recorded", count=len(debounced), error=repr(exc))

    async def renew_leases(self) -> None:
        try:
            await self.paced.renew(list(self._held))
        except Exception as exc:
            log.warning("paced_lease_not_renewed", error=repr(exc))

    async def drain(self) -> None:
        """At shutdown: the runs this replica holds finish (bounded by the kernel's
        shutdown timeout), so none waits for its lease to lapse."""
        tasks = [*self._held.values(), *self._recording]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def in_flight(self) -> int:
        return len(self._held)
