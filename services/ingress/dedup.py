"""`webhook.dedup` at the ingress: ask the runner whether a request is the first of its
key (`runner.claim_dedup_key`, only for flows with dedup configured: other flows pay
nothing), and answer a duplicate with the first's answer, waiting for it if needed.

The state lives in the runner's `runner.dedup_keys` (docs/architecture.md, "Deduplication"):
the ingress keeps no database, and one primary key decides the first across every
replica of both services."""

import asyncio
import itertools
import time
from datetime import UTC, datetime

import orjson
import structlog
from aiohttp import web

from shared.dedup_keys import extract_key, parse_key_spec
from shared.errors import Timeout, Unavailable
from shared.messaging.batching import BatchPublisher
from shared.messaging.connection import Broker
from shared.messaging.contracts import CLAIM_DEDUP_KEY, REQUEST_DEDUPLICATED
from shared.messaging.rpc import RpcClient
from shared.schemas.access import FlowWebhookSettings
from shared.schemas.dedup import ClaimDedupKey, DedupClaim, StoredResult
from shared.schemas.runs import RunFinished, RunResult, WebhookRequest

log = structlog.get_logger(__name__)

REPLAYED_HEADER = "Idempotent-Replayed"
# How long a sync first may hold its key without a result beyond its timeout before a
# later request takes it over: its message expired unread, or its runner died (the
# runner kills a run 2 s past its timeout, then records it).
LEASE_MARGIN_S = 10.0
# A waiting duplicate asks again after these pauses (then the last, repeatedly).
POLL_PAUSES_S = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)


def status_url(flow_id: str, request_id: str) -> str:
    """Where a request's status is (`GET`, authorised like the webhook); a path, resolved
    against the webhook's own URL, so that it holds behind any proxy."""
    return f"/v1/flow-webhook/{flow_id}/runs/{request_id}"


def accepted_body(flow_id: str, request_id: str) -> dict[str, object]:
    return {
        "status": 202,
        "error": None,
        "message": "accepted",
        "data": {"request_id": request_id, "status_url": status_url(flow_id, request_id)},
    }


def scheduled_body(request_id: str) -> dict[str, object]:
    return {
        "status": 200,
        "error": None,
        "message": "scheduled",
        "data": {"request_id": request_id},
    }


def request_key(flow: FlowWebhookSettings, request: WebhookRequest) -> str | None:
    """The request's dedup key; None: the flow has no dedup, or the request no key (it
    runs normally)."""
    if flow.dedup is None:
        return None
    try:
        spec = parse_key_spec(flow.dedup.key)
    except ValueError:  # checked on save; a flow saved otherwise is not deduplicated
        log.warning("dedup_key_spec_invalid", flow_id=flow.flow_id)
        return None
    return extract_key(spec, request.headers, request.input)


class Deduplicator:
    def __init__(self, rpc: RpcClient, broker: Broker) -> None:
        self.rpc = rpc
        self.recorded: BatchPublisher[RunFinished] = BatchPublisher(broker, REQUEST_DEDUPLICATED)

    async def claim(self, flow: FlowWebhookSettings, request_id: str, key: str) -> DedupClaim:
        assert flow.dedup is not None
        # A sync first that errs at its timeout may lose its run (the message expires
        # unread): its key is taken over after the lease. Async and "accept" runs are
        # never dropped, so their firsts keep the key.
        lease_s = (
            flow.timeout_s + LEASE_MARGIN_S
            if not flow.is_async and flow.on_timeout == "error"
            else None
        )
        claim = ClaimDedupKey(
            flow_id=flow.flow_id,
            key=key,
            request_id=request_id,
            window_s=flow.dedup.window_s,
            lease_s=lease_s,
        )
        try:
            return await self.rpc.call(CLAIM_DEDUP_KEY, claim)
        except Timeout:
            # Running it anyway could run it twice: the sender retries instead.
            raise Unavailable("deduplication is unavailable right now") from None

    async def answer(
        self,
        flow: FlowWebhookSettings,
        request: WebhookRequest,
        key: str,
        claim: DedupClaim,
        received_at: datetime,
    ) -> web.Response:
        """A duplicate's answer: async, the first's id at once; sync, the first's answer
        (waiting for it up to the flow's timeout). Recorded as `duplicate`."""
        first = claim.first_request_id
        if flow.is_async:
            result = _json_result(200, scheduled_body(first))
        else:
            waited = claim.result or await self._wait(flow, request.request_id, key, received_at)
            result = waited or self._gave_up(flow, request.request_id, first)
        request.duplicate_of = first
        await self._record(request, result, received_at)
        headers = {**result.headers, "Content-Type": result.content_type, REPLAYED_HEADER: "true"}
        return web.Response(body=result.body.encode(), status=result.status_code, headers=headers)

    async def _wait(
        self, flow: FlowWebhookSettings, request_id: str, key: str, received_at: datetime
    ) -> StoredResult | None:
        """The first's result once it has one; None at the flow's timeout."""
        waited_s = (datetime.now(UTC) - received_at).total_seconds()
        deadline = time.monotonic() + flow.timeout_s - waited_s
        for attempt in itertools.count():
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            await asyncio.sleep(min(left, POLL_PAUSES_S[min(attempt, len(POLL_PAUSES_S) - 1)]))
            claim = await self.claim(flow, request_id, key)
            if claim.state == "done":
                return claim.result
            if claim.state == "first":
                # The first lost its run and this request took the key over: it cannot
                # run now (its caller is out of time), so it answers like a timeout.
                return None
        raise AssertionError("unreachable")

    def _gave_up(self, flow: FlowWebhookSettings, request_id: str, first: str) -> StoredResult:
        if flow.on_timeout == "accept":
            return _json_result(202, accepted_body(flow.flow_id, first))
        error = Timeout(
            f"the first request with this key ({first}) did not finish within"
            f" {flow.timeout_s:g} s (request {request_id})",
            data={"request_id": request_id, "duplicate_of": first},
        )
        return _json_result(error.status_code, error.envelope())

    async def _record(
        self, request: WebhookRequest, result: StoredResult, received_at: datetime
    ) -> None:
        now = datetime.now(UTC)
        run = RunResult(
            request_id=request.request_id,
            outcome="duplicate",
            status_code=result.status_code,
            content_type=result.content_type,
            body=result.body,
            headers=result.headers,
            started_at=received_at,
            finished_at=now,
        )
        try:
            await self.recorded.publish(RunFinished(request=request, result=run))
        except Unavailable:
            log.warning("duplicate_not_recorded", request_id=request.request_id)

    async def drain(self) -> None:
        await self.recorded.drain()


def _json_result(status: int, body: dict[str, object]) -> StoredResult:
    return StoredResult(
        status_code=status, content_type="application/json", body=orjson.dumps(body).decode()
    )
