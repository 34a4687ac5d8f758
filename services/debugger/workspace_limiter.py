"""Fair shares of the API's costly queries (listings, searches, stats) between
workspaces, in one process: a workspace runs at most `per_workspace` of them at once,
all workspaces together at most `total` (kept below the API pool's size, so cheap
queries always find a connection). A request past its share waits up to `wait_s`, at
most `max_waiting` of one workspace; then it is refused with 429 `rate_limited`.

When a slot frees, it goes to the waiting workspace that holds the fewest (first come
among equals), not to whoever asked first: 40 searches of one workspace queued ahead
cannot delay another workspace's listing, and any number of busy workspaces cannot
starve one more. Per process: with N debugger replicas a workspace may run N times
`per_workspace`."""

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator

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
    ) -> None:
        if total < 1 or per_workspace < 1 or max_waiting < 0 or wait_s < 0:
            raise ValueError("limits must be positive")
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
        # Counters for metrics and tests.
        self.refused = 0

    def held(self, workspace: str) -> int:
        return self._held.get(workspace, 0)

    @property
    def in_use(self) -> int:
        return self._in_use

    def waiting(self, workspace: str) -> int:
        return len(self._waiting.get(workspace, ()))

    @contextlib.asynccontextmanager
    async def slot(self, workspace: str) -> AsyncIterator[None]:
        await self.acquire(workspace)
        try:
            yield
        finally:
            self.release(workspace)

    async def acquire(self, workspace: str) -> None:
        """A slot for `workspace`, now or within `wait_s`; else `RateLimited`."""
        if self._free_for(workspace) and not self._waiting.get(workspace):
            self._grant(workspace)
            return
        queue = self._waiting.setdefault(workspace, deque())
        if len(queue) >= self.max_waiting:
            self._forget(workspace)
            raise self._refuse()
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(granted)
        try:
            async with asyncio.timeout(self.wait_s):
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
