"""Tells each ingress which of the async runs it queued have finished (`runs.drained`),
so that it stops counting them against their workspace's queued bounds
(services/ingress/backlog.py).

Batched: the request ids that finish within one interval
(`FLOWHOOKS_RUNNER_DRAIN_REPORT_INTERVAL_S`, 250 ms) go as one small message per origin
ingress, routed to that ingress's own queue (`runs.drained.<instance>`). Best effort,
like `run.started`: unconfirmed and not mandatory (an ingress that is gone has no queue;
the report is dropped). A lost report only keeps runs counted at their ingress until
they age out of its count."""

import structlog

from shared.messaging import naming
from shared.messaging.connection import Broker
from shared.messaging.contracts import RUNS_DRAINED
from shared.schemas.backlog import RunsDrained

log = structlog.get_logger(__name__)

# Most request ids in one report (about 40 bytes each): a burst is sent in several.
MAX_IDS_PER_REPORT = 5000


class DrainReports:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._pending: dict[str, list[str]] = {}
        self.reports_sent = 0

    def finished(self, origin: str | None, request_id: str) -> None:
        """An async run that `origin` queued has its outcome recorded (no I/O here)."""
        if origin is None:  # queued by a replay or an older ingress: nobody counts it
            return
        self._pending.setdefault(origin, []).append(request_id)

    async def flush(self) -> None:
        """Send what finished since the last flush, one message per origin."""
        pending, self._pending = self._pending, {}
        for origin, request_ids in pending.items():
            for start in range(0, len(request_ids), MAX_IDS_PER_REPORT):
                body = RunsDrained(request_ids=request_ids[start : start + MAX_IDS_PER_REPORT])
                try:
                    await self.broker.publish(
                        body.model_dump_json().encode(),
                        routing_key=naming.runs_drained_key(origin),
                        to_events=True,
                        confirm=False,
                        mandatory=False,
                        persistent=False,
                        message_type=RUNS_DRAINED.body.__name__,
                    )
                except Exception as exc:  # the broker is away: the ingress ages them out
                    log.info("runs_drained_not_sent", origin=origin, error=repr(exc))
                    continue
                self.reports_sent += 1
