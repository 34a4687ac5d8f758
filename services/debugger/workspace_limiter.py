"""Fair shares of the API's costly queries (listings, searches, stats) between
workspaces, in one process: a workspace runs at most `per_workspace` of them at once,
all workspaces together at most `total` (kept below the API pool's size, so cheap
queries always find a connection). A request past its share waits up to `wait_s`, at
most `max_waiting` of one workspace; then it is refused with 429 `rate_limited`.

When a slot frees, it goes to the waiting workspace that holds the fewest (first come
among equals), not to whoever asked first: 40 searches of one workspace queued ahead
cannot delay another workspace's listing, and any number of busy workspaces cannot
starve one more.

Statement time too: with `time_share`, the time a workspace's slots are held (its
statements' time, as the database spends it) is counted in a leaky bucket that drains
at `time_share` seconds per second. Past `time_burst_s` owed, its next request pauses
until the bucket is back under it, or, when that is longer than `wait_s`, is refused
after `wait_s` with the Retry-After of the rest: a workspace whose searches keep a slot
busy back to back uses `time_share` of a database core on average, not the whole core
its concurrency allows.

Per process: with N debugger replicas a workspace may run N times all of this."""

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

from shared.errors import RateLimited


class WorkspaceLimiter:
    def __init__(
        self,
        *,
        total: int,
        per_workspace: int,
        max_waiting: int,
        wait_s: float,
        retry_after_s: int = 1,
        time_share: float | None = None,
        time_burst_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if total < 1 or per_workspace < 1 or max_waiting < 0 or wait_s < 0:
            raise ValueError("limits must be positive")
        if (time_share is not None and time_share <= 0) or time_burst_s < 0:
            raise ValueError("the time share must be positive")
        self.total = total
        self.per_workspace = per_workspace
        self.max_waiting = max_waiting
        self.wait_s = wait_s
        self.retry_after_s = retry_after_s
        self._held: dict[str, int] = {}
        # Per workspace, its waiters in arrival order; a waiter's future is resolved
        # once the slot is counted as its own.
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}
        self._in_use = 0
        self.time_share = time_share
        self.time_burst_s = time_burst_s
        self._clock = clock
        # Per workspace: statement seconds owed, as of when (drained since at time_share).
        self._owed: dict[str, tuple[float, float]] = {}
        # Per workspace: its requests pausing until their time is paid back.
        self._pausing: dict[str, int] = {}
        # Counters for metrics and tests.
        self.refused = 0

    def held(self, workspace: str) -> int:
        return self._held.get(workspace, 0)

    @property
    def in_use(self) -> int:
        return self._in_use

    def waiting(self, workspace: str) -> int:
        return len(self._waiting.get(workspace, ())) + self._pausing.get(workspace, 0)

    def owed(self, workspace: str) -> float:
        """Statement seconds the workspace owes now (0 without a time share)."""
        owed, since = self._owed.get(workspace, (0.0, 0.0))
        if self.time_share is None or not owed:
            return 0.0
        return max(0.0, owed - (self._clock() - since) * self.time_share)

    def charge(self, workspace: str, seconds: float) -> None:
        """Count `seconds` of statement time against the workspace's share."""
        if self.time_share is None:
            return
        self._owed[workspace] = (self.owed(workspace) + seconds, self._clock())
        if len(self._owed) > 1024:  # forget the workspaces that owe nothing any more
            for name in [name for name in self._owed if not self.owed(name)]:
                del self._owed[name]

    @contextlib.asynccontextmanager
    async def slot(self, workspace: str) -> AsyncIterator[None]:
        """A slot for the block, its time charged to the workspace."""
        await self.acquire(workspace)
        started = self._clock()
        try:
            yield
        finally:
            self.release(workspace)
            self.charge(workspace, self._clock() - started)

    async def acquire(self, workspace: str) -> None:
        """A slot for `workspace`, now or within `wait_s`; else `RateLimited`."""
        paused = await self._pay_back(workspace)
        if self._free_for(workspace) and not self._waiting.get(workspace):
            self._grant(workspace)
            return
        queue = self._waiting.setdefault(workspace, deque())
        if self.waiting(workspace) >= self.max_waiting:
            self._forget(workspace)
            raise self._refuse()
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(granted)
        try:
            async with asyncio.timeout(max(0.0, self.wait_s - paused)):
                await granted
        except TimeoutError:
            if granted.done() and not granted.cancelled():
                return  # granted at the very moment the wait ended: it is ours
            self._drop(workspace, granted)
            raise self._refuse() from None
        except asyncio.CancelledError:  # the client went away
            if granted.done() and not granted.cancelled():
                self.release(workspace)
            else:
                self._drop(workspace, granted)
            raise

    async def _pay_back(self, workspace: str) -> float:
        """Past its burst of statement time, pause until the workspace is back under it
        (returns the pause), or refuse when that is longer than the wait."""
        if self.time_share is None:
            return 0.0
        over = self.owed(workspace) - self.time_burst_s
        if over <= 0:
            return 0.0
        pause = over / self.time_share
        if self.waiting(workspace) >= self.max_waiting:
            raise self._over_time(pause)
        self._pausing[workspace] = self._pausing.get(workspace, 0) + 1
        try:
            # Longer than the wait: refused after the wait all the same, so that a
            # client retrying at once cannot turn refusals into a flood of requests.
            await asyncio.sleep(min(pause, self.wait_s))
        finally:
            left = self._pausing[workspace] - 1
            if left:
                self._pausing[workspace] = left
            else:
                del self._pausing[workspace]
        if pause > self.wait_s:
            raise self._over_time(pause - self.wait_s)
        return pause

    def _over_time(self, pause: float) -> RateLimited:
        self.refused += 1
        seconds = max(1, math.ceil(pause))
        error = RateLimited(
            "this workspace's listings and searches have used more than their share of"
            " the database's time on this debugger (FLOWHOOKS_DEBUGGER_LIST_TIME_SHARE);"
            f" try again in {seconds} s",
            data={"time_share": self.time_share},
        )
        error.retry_after_s = seconds
        return error

    def release(self, workspace: str) -> None:
        held = self._held[workspace] - 1
        if held:
            self._held[workspace] = held
        else:
            del self._held[workspace]
        self._in_use -= 1
        self._dispatch()

    def _free_for(self, workspace: str) -> bool:
        return self._in_use < self.total and self.held(workspace) < self.per_workspace

    def _grant(self, workspace: str) -> None:
        self._held[workspace] = self.held(workspace) + 1
        self._in_use += 1

    def _dispatch(self) -> None:
        """Hand free slots to waiters: each to the eligible workspace holding fewest."""
        while self._in_use < self.total:
            eligible = [ws for ws, queue in self._waiting.items() if queue and self._free_for(ws)]
            if not eligible:
                return
            # min() keeps the first of equals: dict order is the order workspaces began
            # waiting, and a served workspace moves to the back (below).
            workspace = min(eligible, key=self.held)
            queue = self._waiting.pop(workspace)
            granted = queue.popleft()
            if queue:
                self._waiting[workspace] = queue
            if granted.done():  # its wait ended (cancelled) and it is not gone yet
                continue
            self._grant(workspace)
            granted.set_result(None)

    def _drop(self, workspace: str, granted: asyncio.Future[None]) -> None:
        queue = self._waiting.get(workspace)
        if queue is not None:
            with contextlib.suppress(ValueError):
                queue.remove(granted)
        self._forget(workspace)

    def _forget(self, workspace: str) -> None:
        if not self._waiting.get(workspace, True):
            del self._waiting[workspace]

    def _refuse(self) -> RateLimited:
        self.refused += 1
        error = RateLimited(
            f"this workspace already runs {self.per_workspace} listings or searches at once"
            " on this debugger (FLOWHOOKS_DEBUGGER_LIST_PER_WORKSPACE), or the debugger is"
            " busy; try again later",
            data={"per_workspace": self.per_workspace},
        )
        error.retry_after_s = self.retry_after_s
        return error
