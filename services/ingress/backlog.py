"""Per-workspace bounds on what one ingress has queued for the runners: async runs not
finished yet (a count and their body bytes) and sync requests waiting for their answer.
Past a bound the ingress answers 429 `rate_limited` with `Retry-After`, before it
publishes anything, so that one workspace's flood stays out of the queues the others
share (contract, "Isolation"), well before the queues' own backstops (a broker policy,
shared/messaging/topology.py) would refuse everyone.

The ingress keeps no database, so each replica counts what it queued itself (the bound
is per replica: N replicas admit up to N times it):
- an async request is counted from just before its publish (uncounted again if the
  publish fails) until a runner reports its run finished: runners send the request ids
  of finished runs, batched, to the ingress that queued them (`StartRun.origin`,
  `runs.drained.<instance>`, services/runner/drain_reports.py);
- reports are best effort, so an entry older than the age bound is dropped (a lost
  report, or a run dead-lettered after its delivery limit, cannot hold a workspace's
  budget forever), and after a broker reconnect, when reports may have been missed,
  every count starts again from zero;
- a run parked by a runner (its workspace at its share) is still queued, and counted.
"""

import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

from shared.errors import RateLimited
from shared.schemas.backlog import RunsDrained
from shared.schemas.runs import StartRun, WebhookRequest

# A full backlog drains at the pace of its runs: seconds, not the next instant.
QUEUED_RETRY_AFTER_S = 5


@dataclass(frozen=True)
class _Queued:
    workspace: str
    size: int
    at: float  # monotonic


class WorkspaceBacklog:
    def __init__(
        self,
        *,
        max_runs: int,
        max_bytes: int,
        max_age_s: float,
        max_sync: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Bounds of 0 are off."""
        self.max_runs = max_runs
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.max_sync = max_sync
        self.clock = clock
        # By request id, oldest first (the order they were counted in).
        self._queued: OrderedDict[str, _Queued] = OrderedDict()
        self._runs: Counter[str] = Counter()
        self._bytes: Counter[str] = Counter()
        self._sync: Counter[str] = Counter()
        # Requests refused past each bound (services/ingress/metrics.py).
        self.refused_runs = 0
        self.refused_bytes = 0
        self.refused_sync = 0

    def queued(self, workspace: str) -> tuple[int, int]:
        """The workspace's counted async runs and their bytes."""
        self._expire()
        return self._runs[workspace], self._bytes[workspace]

    @asynccontextmanager
    async def scheduling(self, start: StartRun, origin: str) -> AsyncIterator[None]:
        """Around the publish of an async run: raises `RateLimited` if its workspace is
        at a bound; counts it meanwhile, and afterwards unless the publish failed.
        `origin`: this process's broker instance, which runners report its end to."""
        start.origin = origin
        with self.queueing(start.request):
            yield

    @contextmanager
    def queueing(self, request: WebhookRequest) -> Iterator[None]:
        """`scheduling` of a run whose message the caller encoded with its origin."""
        self.check(request.workspace_id)
        self.add(request.request_id, request.workspace_id, len(request.raw_body))
        try:
            yield
        except BaseException:
            self.remove(request.request_id)
            raise

    def check(self, workspace: str) -> None:
        """Raises `RateLimited` if the workspace's queued runs or bytes reached a bound
        (the run that crosses the byte bound is still taken: a body larger than the
        bound is not refused forever)."""
        runs, size = self.queued(workspace)
        if self.max_runs and runs >= self.max_runs:
            self.refused_runs += 1
            bound = f"{self.max_runs} async runs (FLOWHOOKS_INGRESS_WORKSPACE_QUEUED_RUNS)"
        elif self.max_bytes and size >= self.max_bytes:
            self.refused_bytes += 1
            bound = (
                f"{self.max_bytes} bytes of async requests"
                " (FLOWHOOKS_INGRESS_WORKSPACE_QUEUED_BYTES)"
            )
        else:
            return
        error = RateLimited(
            f"this workspace has {bound} queued and not yet run; retry later",
            data={"queued_runs": runs, "queued_bytes": size},
        )
        error.retry_after_s = QUEUED_RETRY_AFTER_S
        raise error

    def add(self, request_id: str, workspace: str, size: int) -> None:
        if request_id in self._queued:
            return
        self._queued[request_id] = _Queued(workspace, size, self.clock())
        self._runs[workspace] += 1
        self._bytes[workspace] += size

    def remove(self, request_id: str) -> None:
        entry = self._queued.pop(request_id, None)
        if entry is not None:
            self._forget(entry)

    async def drained(self, report: RunsDrained) -> None:
        """A runner's report: these runs finished (ids this ingress does not count, of
        a previous connection or aged out, are ignored)."""
        for request_id in report.request_ids:
            self.remove(request_id)

    def clear(self) -> None:
        """After a broker reconnect: reports may have been lost while it was down."""
        self._queued.clear()
        self._runs.clear()
        self._bytes.clear()

    @contextmanager
    def sync_request(self, workspace: str) -> Iterator[None]:
        """Around a sync request's wait for its answer: raises `RateLimited` if the
        workspace has `max_sync` of them waiting at this ingress already."""
        if self.max_sync and self._sync[workspace] >= self.max_sync:
            self.refused_sync += 1
            raise RateLimited(
                f"this workspace has {self.max_sync} sync requests waiting for their answer"
                " at once (FLOWHOOKS_INGRESS_WORKSPACE_SYNC_REQUESTS); retry later"
            )
        self._sync[workspace] += 1
        try:
            yield
        finally:
            left = self._sync[workspace] - 1
            if left:
                self._sync[workspace] = left
            else:
                del self._sync[workspace]

    def _expire(self) -> None:
        limit = self.clock() - self.max_age_s
        while self._queued:
            request_id, entry = next(iter(self._queued.items()))
            if entry.at > limit:
                return
            del self._queued[request_id]
            self._forget(entry)

    def _forget(self, entry: _Queued) -> None:
        for counts, amount in ((self._runs, 1), (self._bytes, entry.size)):
            left = counts[entry.workspace] - amount
            if left > 0:
                counts[entry.workspace] = left
            else:
                counts.pop(entry.workspace, None)
