"""`GroupCommit`: many callers' items written by one flush, with no added latency when
idle. A flush starts at once when none is in flight; items that arrive while it runs
go together in the next one. Each caller of `add` returns when the flush that held its
item succeeded, or raises what that flush raised."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class GroupCommit(Generic[T]):
    def __init__(self, flush: Callable[[list[T]], Awaitable[None]], max_items: int = 1000) -> None:
        self._flush = flush
        self.max_items = max_items
        self._waiting: list[tuple[T, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.flushes = 0

    async def add(self, item: T) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, done))
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_all())
        await asyncio.shield(done)

    async def _flush_all(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[: self.max_items]
                del self._waiting[: self.max_items]
                try:
                    await self._flush([item for item, _ in batch])
                except Exception as exc:  # every caller must hear
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(exc)
                    continue
                self.flushes += 1
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)
        finally:
            self._flusher = None

    async def drain(self) -> None:
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
