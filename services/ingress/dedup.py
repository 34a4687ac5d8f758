"""`webhook.dedup` at the ingress: ask the runner whether a request is the first of its
key (`runner.claim_dedup_key`, only for flows with dedup configured or a signing mode's
default key, `FlowWebhookSettings.dedup_of`: other flows pay nothing), and answer a
duplicate with the first's answer, waiting for it if needed.

The state lives in the runner's `runner.dedup_keys` (docs/architecture.md, "Deduplication"):
the ingress keeps no database, and one primary key decides the first across every
replica of both services.

Sync duplicates that wait for the same first are coalesced: one poller per (flow, key)
in this process asks the runner, every waiter awaits its answer, and a request that
finds a poller for its key joins it without asking the runner at all. Waiters per flow
are bounded (`FLOWHOOKS_INGRESS_DEDUP_MAX_WAITING`; past it 429 with `Retry-After`)."""

import asyncio
import itertools
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import orjson
import structlog
from aiohttp import web

from shared.dedup_keys import extract_key, parse_key_spec
from shared.errors import ApiError, RateLimited, Timeout, Unavailable
from shared.messaging.batching import BatchPublisher
from shared.messaging.connection import Broker
from shared.messaging.contracts import CLAIM_DEDUP_KEY, REQUEST_DEDUPLICATED
from shared.messaging.rpc import RpcClient
from shared.retry import RetryPolicy
from shared.schemas.access import FlowWebhookSettings
from shared.schemas.dedup import ClaimDedupKey, DedupClaim, StoredResult
from shared.schemas.runs import RunFinished, RunResult, WebhookRequest
from shared.schemas.vocabulary import JSON, Outcome, envelope

log = structlog.get_logger(__name__)

REPLAYED_HEADER = "Idempotent-Replayed"
# How long a sync first may hold its key without a result beyond its timeout before a
# later request takes it over: its message expired unread, or its runner died (the
# runner kills a run 2 s past its timeout, then records it).
LEASE_MARGIN_S = 10.0
# A waiting duplicate asks again after these pauses (then the last, repeatedly).
POLL_PAUSES = RetryPolicy((0.02, 0.05, 0.1, 0.2, 0.3, 0.5))


def status_url(flow_id: str, request_id: str) -> str:
    """Where a request's status is (`GET`, authorised like the webhook); a path, resolved
    against the webhook's own URL, so that it holds behind any proxy."""
    return f"/v1/flow-webhook/{flow_id}/runs/{request_id}"


def accepted_body(flow_id: str, request_id: str) -> dict[str, object]:
    data = {"request_id": request_id, "status_url": status_url(flow_id, request_id)}
    return envelope(202, None, "accepted", data)


def scheduled_body(request_id: str) -> dict[str, object]:
    return envelope(200, None, "scheduled", {"request_id": request_id})


def request_key(flow: FlowWebhookSettings, request: WebhookRequest) -> str | None:
    """The request's dedup key; None: the flow has no dedup (its own, or its signing
    mode's default), or the request no key (it runs normally)."""
    dedup = flow.dedup_of()
    if dedup is None:
        return None
    try:
        spec = parse_key_spec(dedup.key)
    except ValueError:  # checked on save; a flow saved otherwise is not deduplicated
        log.warning("dedup_key_spec_invalid", flow_id=flow.flow_id)
        return None
    return extract_key(spec, request.headers, request.input)


@dataclass
class _Poller:
    """The one poller of a (flow, key) in this process, and how many wait for it."""

    first_request_id: str
    task: "asyncio.Task[DedupClaim]"
    waiters: int = field(default=0)


class Deduplicator:
    def __init__(self, rpc: RpcClient, broker: Broker, max_waiting_per_flow: int = 1000) -> None:
        self.rpc = rpc
        self.recorded: BatchPublisher[RunFinished] = BatchPublisher(broker, REQUEST_DEDUPLICATED)
        self.max_waiting_per_flow = max_waiting_per_flow
        self._pollers: dict[tuple[str, str], _Poller] = {}
        # Sync duplicates waiting, per flow (the bound), and those refused past it.
        self._waiting: Counter[str] = Counter()
        self.waiters_refused = 0
        # Releases sent after a claim whose answer never came (kept until done).
        self._releases: set[asyncio.Task[None]] = set()

    async def claim(self, flow: FlowWebhookSettings, request_id: str, key: str) -> DedupClaim:
        poller = self._pollers.get((flow.flow_id, key))
        if poller is not None:
            # Requests here already wait for this key's first: a duplicate of it, known
            # without asking the runner.
            return DedupClaim(state="pending", first_request_id=poller.first_request_id)
        try:
            return await self._ask(flow, request_id, key, "claim")
        except Unavailable:
            # The claim may have been made, only its answer lost: the sender is told 503
            # and retries, so this request must not keep the key (for an async flow it
            # would for the whole window, and the retry would be answered "scheduled").
            # Not awaited: the sender's answer does not wait for a runner that is slow.
            release = asyncio.create_task(self.release(flow, request_id, key))
            self._releases.add(release)
            release.add_done_callback(self._releases.discard)
            raise

    async def release(self, flow: FlowWebhookSettings, request_id: str, key: str) -> None:
        """A first refused before it reached a runner (503, 429, ...) lets go of its key,
        so the sender's retry runs. Best effort: if the runner does not hear it, a sync
        key's lease still lapses; an async one stays held for its window (logged)."""
        try:
            await self._ask(flow, request_id, key, "release")
        except ApiError as exc:
            log.warning("dedup_key_not_released", flow_id=flow.flow_id, error=exc.message)

    async def _ask(
        self,
        flow: FlowWebhookSettings,
        request_id: str,
        key: str,
        mode: Literal["claim", "wait", "release"],
    ) -> DedupClaim:
        dedup = flow.dedup_of()
        assert dedup is not None
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
            window_s=dedup.window_s,
            lease_s=lease_s,
            mode=mode,
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
        (waiting for it up to the flow's timeout), or 503 if the first failed: a failure
        is never replayed. Recorded as `duplicate`."""
        first = claim.first_request_id
        replayed = True
        if flow.is_async:
            result = _json_result(200, scheduled_body(first))
        else:
            final = claim if claim.state == "done" else await self._wait(flow, request, key, first)
            if final is not None and final.state == "done" and final.result is not None:
                result = final.result
            elif final is not None and final.state == "released":
                result, replayed = _released(request.request_id, first), False
            else:
                result = self._gave_up(flow, request.request_id, first)
        request.duplicate_of = first
        await self._record(request, result, received_at)
        headers = {**result.headers, "Content-Type": result.content_type}
        if replayed:
            headers[REPLAYED_HEADER] = "true"
        return web.Response(body=result.body.encode(), status=result.status_code, headers=headers)

    async def _wait(
        self, flow: FlowWebhookSettings, request: WebhookRequest, key: str, first: str
    ) -> DedupClaim | None:
        """The key's final state (`done`, `released`) from this process's one poller of
        it; None at the flow's timeout. 429 past the flow's bound of waiters."""
        waited_s = (datetime.now(UTC) - request.received_at).total_seconds()
        left_s = flow.timeout_s - waited_s
        if left_s <= 0:
            return None
        if self._waiting[flow.flow_id] >= self.max_waiting_per_flow:
            self.waiters_refused += 1
            error = RateLimited(
                f"{self.max_waiting_per_flow} requests of this flow already wait for the"
                " first request with their dedup key (FLOWHOOKS_INGRESS_DEDUP_MAX_WAITING)"
            )
            error.retry_after_s = 1
            raise error
        slot = (flow.flow_id, key)
        poller = self._pollers.get(slot)
        if poller is None:
            task = asyncio.create_task(self._poll(flow, request.request_id, key))
            poller = self._pollers[slot] = _Poller(first, task)
            task.add_done_callback(lambda _: self._forget(slot, poller))
        poller.waiters += 1
        self._waiting[flow.flow_id] += 1
        try:
            # Shielded: one waiter's caller going away does not stop the others' poller.
            return await asyncio.wait_for(asyncio.shield(poller.task), left_s)
        except TimeoutError:
            return None
        finally:
            poller.waiters -= 1
            self._waiting[flow.flow_id] -= 1
            if not self._waiting[flow.flow_id]:
                del self._waiting[flow.flow_id]
            if not poller.waiters:
                poller.task.cancel()

    async def _poll(self, flow: FlowWebhookSettings, request_id: str, key: str) -> DedupClaim:
        """Asks the runner (read only) until the first is done or has let go of the key;
        a pending first may be another request that took the key over since."""
        for attempt in itertools.count():
            await asyncio.sleep(POLL_PAUSES.delay_s(attempt + 1))
            claim = await self._ask(flow, request_id, key, "wait")
            if claim.state != "pending":
                # `first` only from a runner that predates `wait` (it took the key over):
                # answered like a timeout, as before.
                return claim
        raise AssertionError("unreachable")

    def _forget(self, slot: tuple[str, str], poller: _Poller) -> None:
        """A finished poller takes no new waiters: a request from now on asks the runner."""
        if self._pollers.get(slot) is poller:
            del self._pollers[slot]

    def _gave_up(self, flow: FlowWebhookSettings, request_id: str, first: str) -> StoredResult:
        if flow.on_timeout == "accept":
            return _json_result(202, accepted_body(flow.flow_id, first))
        error = Timeout(
            f"the first request with this key ({first}) did not finish within"
            f" {flow.timeout_s:g} s (request {request_id})",
            data={"request_id": request_id, "duplicate_of": first},
        )
        return StoredResult.of_error(error)

    async def _record(
        self, request: WebhookRequest, result: StoredResult, received_at: datetime
    ) -> None:
        now = datetime.now(UTC)
        run = RunResult(
            request_id=request.request_id,
            outcome=Outcome.DUPLICATE,
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
        for poller in list(self._pollers.values()):
            poller.task.cancel()
        if self._releases:
            await asyncio.wait(self._releases)
        await self.recorded.drain()


def _released(request_id: str, first: str) -> StoredResult:
    """A duplicate of a first that failed: told to send it again (its key is free now)."""
    error = Unavailable(
        f"the first request with this key ({first}) failed, and a failure is not replayed:"
        " send this request again",
        data={"request_id": request_id, "duplicate_of": first},
    )
    error.retry_after_s = 1
    return StoredResult.of_error(error)


def _json_result(status: int, body: dict[str, object]) -> StoredResult:
    return StoredResult(status_code=status, content_type=JSON, body=orjson.dumps(body).decode())
