"""Requests refused 401 by their signature, recorded in the debugger like a body that
cannot be parsed (outcome `rejected`, the 401 envelope as the result), so that ops see
why a provider's deliveries fail.

Bounded and best effort: each flow may have `FLOWHOOKS_INGRESS_REFUSED_RECORDS_PER_S`
records a second (burst `FLOWHOOKS_INGRESS_REFUSED_RECORDS_BURST`) in each replica;
past that a refusal is only counted. The budget is taken before anything is built, so
a refusal past it costs a bucket look-up; a record is batched and never awaited, so
the 401 waits for nothing."""

from collections.abc import Callable
from datetime import UTC, datetime

import structlog

from services.ingress.rate_limit import RefusalRecordBudget
from shared.errors import ApiError
from shared.messaging.batching import BatchPublisher, Unencodable
from shared.messaging.connection import Broker
from shared.messaging.contracts import REQUEST_REJECTED
from shared.schemas.runs import RunFinished, WebhookRequest, error_result
from shared.schemas.vocabulary import Outcome

log = structlog.get_logger(__name__)

# Appended to the record's error when the headers alone refused the request: its body
# (empty in the record) was never read.
BODY_NOT_READ = " (refused on its headers: the body was not read)"


class RefusalRecorder:
    def __init__(self, broker: Broker, rate_per_s: float, burst: int) -> None:
        self.budget = RefusalRecordBudget(rate_per_s, burst)
        self.publisher: BatchPublisher[RunFinished] = BatchPublisher(broker, REQUEST_REJECTED)

    def record(
        self,
        flow_id: str,
        request: Callable[[], WebhookRequest],
        error: ApiError,
        *,
        body_read: bool,
    ) -> None:
        """Records the refusal if the flow's budget allows; `request` builds what the
        debugger shows of the request (only then). `body_read`: False when it was
        refused on its headers (the request's body is then empty)."""
        if not self.budget.take(flow_id):
            return
        normalised = request()
        now = datetime.now(UTC)
        result = error_result(normalised.request_id, error, Outcome.REJECTED, now, finished_at=now)
        if not body_read:
            result.error = error.message + BODY_NOT_READ
        try:
            self.publisher.publish_soon(RunFinished(request=normalised, result=result))
        except Unencodable:
            log.warning("refused_request_not_recorded", request_id=normalised.request_id)
