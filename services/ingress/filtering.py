"""Filters at the ingress (shared/filters.py): whether a parsed request matches a flow's
`webhook.filter` or a source's route, and the record and answer of one that matched
nothing (`filtered`: answered 200, recorded, never run, so it takes no runner slot)."""

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog

from shared.filters import FilterTooCostly, matches, request_document
from shared.messaging.batching import BatchPublisher
from shared.messaging.connection import Broker
from shared.messaging.contracts import REQUEST_FILTERED
from shared.schemas.runs import RunFinished, RunResult, WebhookRequest
from shared.schemas.vocabulary import JSON, Outcome, envelope

log = structlog.get_logger(__name__)


def filtered_body(request_id: str) -> dict[str, Any]:
    """The answer to a request no filter let through (contract)."""
    return envelope(200, None, Outcome.FILTERED, {"request_id": request_id})


class Filters:
    """Evaluates filters on parsed requests and records the ones left out. Counts what
    it did (`evaluated`, `too_costly`) for the metrics."""

    def __init__(self, broker: Broker, budget: int) -> None:
        self.budget = budget
        # Batched and never awaited, like refusals: a filtered request's answer waits
        # for nothing, so filtering stays cheaper than running (bench/sources.py).
        self.records: BatchPublisher[RunFinished] = BatchPublisher(broker, REQUEST_FILTERED)
        self.too_costly = 0

    def document(self, request: WebhookRequest) -> dict[str, Any]:
        return request_document(request.input, request.headers, request.query, request.path)

    def match(
        self, filter_: Mapping[str, Any] | None, document: Mapping[str, Any], owner: str
    ) -> bool:
        """No filter matches everything; one past its budget matches nothing (counted
        and logged with `owner`, the flow or route it is of: it should be simpler)."""
        if filter_ is None:
            return True
        try:
            return matches(filter_, document, self.budget)
        except FilterTooCostly:
            self.too_costly += 1
            log.warning("filter_too_costly", owner=owner)
            return False

    def record(self, request: WebhookRequest, data: dict[str, Any] | None = None) -> bytes:
        """Records `request` as `filtered` (best effort) and returns the answer's body;
        `data`: what the answer's `data` holds besides the request id."""
        body = filtered_body(request.request_id)
        if data:
            body["data"].update(data)
        encoded = orjson.dumps(body)
        now = datetime.now(UTC)
        result = RunResult(
            request_id=request.request_id,
            outcome=Outcome.FILTERED,
            status_code=200,
            content_type=JSON,
            body=encoded.decode(),
            started_at=request.received_at,
            finished_at=now,
        )
        self.records.publish_soon(RunFinished(request=request, result=result))
        return encoded
