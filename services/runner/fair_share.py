"""Fair share of a runner's run slots: no workspace holds more than `share` of them, and
when slots free up, workspaces that wait take turns (round robin), so a workspace with
slow flows or a flood of requests cannot starve the others."""

import asyncio
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class FairShare:
    def __init__(self, slots: int, share: float) -> None:
        self.slots = slots
        self.per_workspace = max(1, int(slots * share))
        self.free = slots
        self.running: dict[str, int] = {}
        # Workspaces with runs waiting, in turn order.
        self._waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()

    @asynccontextmanager
    async def slot(self, workspace: str) -> AsyncIterator[None]:
        await self.acquire(workspace)
        try:
            yield
        finally:
            self.release(workspace)

    def waiting(self, workspace: str) -> int:
        return len(self._waiting.get(workspace, ()))

    async def acquire(self, workspace: str) -> None:
        # Whoever waits cannot run now (else `_grant` would have let them): a workspace
        # that can goes ahead, unless its own earlier runs wait.
        if workspace not in self._waiting and self._can_run(workspace):
            self._take(workspace)
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(workspace, deque()).append(granted)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release(workspace)  # granted just as it was cancelled
            else:
                self._forget(workspace, granted)
            raise

    def release(self, workspace: str) -> None:
        self.free += 1
        left = self.running[workspace] - 1
        if left:
            self.running[workspace] = left
        else:
            del self.running[workspace]
        self._grant()

    def _can_run(self, workspace: str) -> bool:
        return self.free > 0 and self.running.get(workspace, 0) < self.per_workspace

    def _take(self, workspace: str) -> None:
        self.free -= 1
        self.running[workspace] = self.running.get(workspace, 0) + 1

    def _grant(self) -> None:
        """Hand free slots to waiting workspaces, one each per turn."""
        progress = True
        while progress and self.free:
            progress = False
            for workspace in list(self._waiting):
                if not self._can_run(workspace):
                    continue
                queue = self._waiting.pop(workspace)
                granted = queue.popleft()
                if queue:
                    self._waiting[workspace] = queue  # to the back of the turn order
                self._take(workspace)
                granted.set_result(None)
                progress = True

    def _forget(self, workspace: str, granted: asyncio.Future[None]) -> None:
        queue = self._waiting.get(workspace)
        if queue is not None and granted in queue:
            queue.remove(granted)
            if not queue:
                del self._waiting[workspace]
