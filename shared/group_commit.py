"""`GroupCommit`: many callers' items written by one flush, with no added latency when
idle. A flush starts at once when none is in flight; items that arrive while it runs
go together in the next one (up to `max_items`, and up to `max_size` by `size`). Each
caller of `add` returns when the flush that held its item succeeded, or raises what
that flush raised; a flush may instead answer item by item (a list of exceptions or
None, in the batch's order), so that one item's failure is its caller's alone.

Used by the runner's finished marks (services/runner/finished.py) and by every
`BatchPublisher` (shared/messaging/batching.py: many events to one message)."""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

# What a flush answers: None (every item written), or one entry per item of the batch
# (None: written; an exception: that item's caller raises it).
FlushResult = Sequence[BaseException | None] | None


class GroupCommit(Generic[T]):
    def __init__(
        self,
        flush: Callable[[list[T]], Awaitable[FlushResult]],
        max_items: int = 1000,
        *,
        max_size: int | None = None,
        size: Callable[[T], int] = lambda _: 0,
    ) -> None:
        self._flush = flush
        self.max_items = max_items
        # A batch takes items while their `size` sums to at most `max_size` (the first
        # item always goes, whatever its size).
        self.max_size = max_size
        self.size = size
        self._waiting: list[tuple[T, asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.flushes = 0

    @property
    def pending(self) -> int:
        """Items handed over and not yet in a flush."""
        return len(self._waiting)

    async def add(self, item: T) -> None:
        await asyncio.shield(self.submit(item))

    def submit(self, item: T) -> "asyncio.Future[None]":
        """Hands `item` over without waiting: the future is done when its flush is."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, done))
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_all())
        return done

    def _next_batch(self) -> list[tuple[T, "asyncio.Future[None]"]]:
        count, total = 0, 0
        for item, _ in self._waiting[: self.max_items]:
            if self.max_size is not None:
                total += self.size(item)
                if count and total > self.max_size:
                    break
            count += 1
        batch = self._waiting[:count]
        del self._waiting[:count]
        return batch

    async def _flush_all(self) -> None:
        try:
            while self._waiting:
                batch = self._next_batch()
                try:
                    results = await self._flush([item for item, _ in batch])
                except Exception as exc:  # every caller must hear
                    results = [exc] * len(batch)
                else:
                    self.flushes += 1
                for (_, done), error in zip(batch, results or [None] * len(batch), strict=True):
                    if done.done():
                        continue
                    if error is None:
                        done.set_result(None)
                    else:
                        done.set_exception(error)
        finally:
            self._flusher = None

    async def drain(self) -> None:
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
