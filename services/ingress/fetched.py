"""What the ingress fetches from URLs that senders' flows or messages name (Google
Pub/Sub's JWKS, AWS SNS's signing certificates), kept by URL. One mechanism for both,
so that each bound holds for both:
- at most `max_entries` URLs kept, the least recently used dropped first;
- one fetch per URL at a time, shared by every request that needs it, each waiting at
  most `wait_s` (shielded: one waiter's end does not cancel the fetch);
- at most `max_in_flight` URLs fetched at once: hosts that hang cannot pile up fetches
  (each is bounded by its own timeout, but many URLs would still hold many), and a
  request past the bound is answered at once instead.

What an entry holds, how long it is fresh and what a failure keeps are the caller's:
`fetch(url)` builds the entry (a failure included); `timed_out` and `busy` build the
entry a waiter gets instead."""

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

E = TypeVar("E")

# URLs fetched at once, per cache (beyond it, 503 at once, so that forgeries naming
# many URLs cannot queue fetches without end): a healthy deployment fetches from a few
# (Google's JWKS, one SNS certificate per region and key).
MAX_FETCHES_IN_FLIGHT = 8


class FetchedByUrl(Generic[E]):
    def __init__(
        self,
        fetch: Callable[[str], Awaitable[E]],
        *,
        max_entries: int,
        wait_s: float,
        max_in_flight: int,
        timed_out: Callable[[str], E],
        busy: Callable[[str], E],
    ) -> None:
        self._fetch = fetch
        self.max_entries = max(1, max_entries)
        self.wait_s = wait_s
        self.max_in_flight = max(1, max_in_flight)
        self._timed_out = timed_out
        self._busy = busy
        self._entries: OrderedDict[str, E] = OrderedDict()
        self._fetches: dict[str, asyncio.Task[E]] = {}

    def cached(self, url: str) -> E | None:
        """The entry kept for `url` (now the most recently used), fresh or not."""
        entry = self._entries.get(url)
        if entry is not None:
            self._entries.move_to_end(url)
        return entry

    def keep(self, url: str, entry: E) -> None:
        self._entries[url] = entry
        self._entries.move_to_end(url)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def urls(self) -> list[str]:
        """The URLs kept, least recently used first."""
        return list(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    async def fetch(self, url: str) -> E:
        """A new entry for `url`, from the fetch in flight for it or a new one."""
        task = self._fetches.get(url)
        if task is None:
            if len(self._fetches) >= self.max_in_flight:
                return self._busy(url)
            task = asyncio.create_task(self._fetch_and_keep(url))
            self._fetches[url] = task
            task.add_done_callback(lambda _: self._fetches.pop(url, None))
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.wait_s)
        except TimeoutError:
            return self._timed_out(url)

    async def _fetch_and_keep(self, url: str) -> E:
        entry = await self._fetch(url)
        self.keep(url, entry)
        return entry
