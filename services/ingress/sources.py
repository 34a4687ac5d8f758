"""`/v1/source-webhook/{source_id}`: one URL, many flows (contract: "Sources").

The request goes through the flow webhook's pipeline (services/ingress/webhook.py,
`handle_with`) with a source in the flow's place: verified once (a bearer: the source's
token; else its `auth` mode, handshakes included), parsed once, deduplicated on the
source's key, and then fanned out: every route whose filter matches gets its own async
run with the same input. The runs of one request travel in ONE message on the async
runs queue (group-committed with other requests' runs as one unit that is never split
apart: `BatchPublisher.publish_together`), so the broker takes all of them or none:
200 only once that message is confirmed, 503 otherwise (the source's dedup key let go,
so the sender's retry runs them once). A request no route takes is answered 200
`filtered` and recorded so.

What a source is (its verification, dedup and routes with their filters) comes from the
runner (`runner.get_source`) and is cached here per source, like auth's answers in
access_cache.py: every replica forgets a source when the runner publishes
`source.changed` (the source, its routes, or a flow it routes to changed), an answer
fetched while such an event arrived is not cached, a reconnect drops everything, and a
TTL bounds the rest. So filters are evaluated here without a round trip per request."""

import time
from collections import OrderedDict
from contextlib import AsyncExitStack
from datetime import UTC, datetime

import orjson
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from services.ingress.pubsub import is_jwt_bearer
from services.ingress.webhook import Answer, WebhookHandler
from shared.bearer import bearer_from_header, hash_token, same_hash
from shared.errors import NotFound, PayloadTooLarge, Timeout, Unauthorized, Unavailable
from shared.messaging.batching import BatchPublisher
from shared.messaging.contracts import GET_SOURCE, REQUEST_ROUTED
from shared.messaging.rpc import RpcClient
from shared.schemas.access import FlowWebhookSettings
from shared.schemas.runs import (
    RunFinished,
    RunProgress,
    RunResult,
    StartRun,
    WebhookRequest,
)
from shared.schemas.sources import GetSource, SourceAccess, SourceChanged, source_answer
from shared.schemas.vocabulary import JSON, Outcome, Progress, RunMode
from shared.web import json_response

log = structlog.get_logger(__name__)


class SourceCache:
    """`runner.get_source` answers by source id, bounded, kept correct by `source.changed`."""

    def __init__(self, rpc: RpcClient, max_entries: int, ttl_s: float) -> None:
        self.rpc = rpc
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._entries: OrderedDict[str, tuple[SourceAccess, float]] = OrderedDict()
        self._generation = 0

    async def get(self, source_id: str) -> SourceAccess:
        cached = self._entries.get(source_id)
        if cached is not None:
            source, stored_at = cached
            if time.monotonic() - stored_at < self.ttl_s:
                self._entries.move_to_end(source_id)
                return source
            del self._entries[source_id]
        generation = self._generation
        try:
            source = await self.rpc.call(GET_SOURCE, GetSource(source_id=source_id))
        except Timeout:
            raise Unavailable("the runner did not answer in time") from None
        if generation == self._generation and self.max_entries > 0:
            self._entries[source_id] = (source, time.monotonic())
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return source

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()

    async def changed(self, change: SourceChanged) -> None:
        self._generation += 1
        if change.source_id is not None:
            self._entries.pop(change.source_id, None)
        if change.flow_id is not None:
            stale = [
                source_id
                for source_id, (source, _) in self._entries.items()
                if any(route.flow_id == change.flow_id for route in source.routes)
            ]
            for source_id in stale:
                del self._entries[source_id]


class SourceMetrics:
    """Requests per source by what became of them, and the runs they started."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "flowhooks_source_requests",
            "Source webhook requests taken, by source and result (routed: at least one"
            " run; filtered: no route took it)",
            ["source", "result"],
            registry=registry,
        )
        self.runs = Counter(
            "flowhooks_source_runs",
            "Routes of source requests, by source and result (started, or skipped as its"
            " flow is paused)",
            ["source", "result"],
            registry=registry,
        )


class SourceWebhook:
    def __init__(
        self,
        webhook: WebhookHandler,
        cache: SourceCache,
        max_message_bytes: int,
        metrics: SourceMetrics | None = None,
    ) -> None:
        self.webhook = webhook
        self.cache = cache
        self.max_message_bytes = max_message_bytes
        self.metrics = metrics if metrics is not None else SourceMetrics()
        # The source's request itself, recorded `routed` once its runs are queued
        # (batched, never awaited: each run is recorded by its runner anyway).
        self.routed: BatchPublisher[RunFinished] = BatchPublisher(webhook.broker, REQUEST_ROUTED)

    async def handle(self, request: web.Request) -> web.Response:
        source = await self._find(request.match_info["source_id"])

        async def authorize(request: web.Request) -> FlowWebhookSettings:
            return self._authorize(request, source)

        async def start(
            flow: FlowWebhookSettings, normalised: WebhookRequest, key: str | None, answer: Answer
        ) -> web.Response:
            return await self._fan_out(source, normalised, answer)

        return await self.webhook.handle_with(request, authorize, start)

    async def _find(self, source_id: str) -> SourceAccess:
        source = await self.cache.get(source_id)
        if not source.found:
            raise NotFound("no such source")
        return source

    @staticmethod
    def _authorize(request: web.Request, source: SourceAccess) -> FlowWebhookSettings:
        """The source as the flow settings the pipeline takes it under (always async, a
        fan-out is queued). A bearer must be the source's token, unless it is a Pub/Sub
        push's JWT to a `google-pubsub` source (judged by its signature); without one,
        the source must have a signing mode."""
        settings = FlowWebhookSettings(
            flow_id=source.source_id,
            workspace_id=source.workspace_id,
            version=source.version,
            status="live",
            is_async=True,
            signing=source.signing,
            dedup=source.dedup,
            dedup_default=source.dedup_default,
        )
        header = request.headers.get("Authorization")
        pubsub = source.signing is not None and source.signing.mode == "google-pubsub"
        if header is None:
            if source.signing is None:
                raise Unauthorized(
                    "missing Authorization header; send 'Authorization: Bearer <token>'"
                )
            return settings
        if pubsub and is_jwt_bearer(header):
            return settings
        presented = hash_token(bearer_from_header(header))
        # Every hash compared (constant time each): which key matched is no signal.
        matched = [same_hash(presented, known) for known in source.token_hashes.values()]
        if not any(matched):
            raise Unauthorized("unknown token for this source")
        return settings

    async def _fan_out(
        self, source: SourceAccess, request: WebhookRequest, answer: Answer
    ) -> web.Response:
        filters = self.webhook.filters
        document = filters.document(request)
        matched = [
            route
            for route in source.routes
            if filters.match(route.filter, document, f"{source.source_id}/{route.flow_id}")
        ]
        running = [route for route in matched if not route.paused]
        paused = len(matched) - len(running)
        if paused:
            self.metrics.runs.labels(source.source_id, "paused").inc(paused)
        if not running:
            answer.outcome = Outcome.FILTERED
            self.metrics.requests.labels(source.source_id, Outcome.FILTERED).inc()
            answered = source_answer(request.request_id, 0, paused=paused)
            body = filters.record(request, answered["data"])
            return web.Response(body=body, content_type="application/json")
        starts = [
            StartRun(
                request=request.model_copy(
                    update={
                        "request_id": _run_id(request.request_id, index),
                        "flow_id": route.flow_id,
                        "mode": RunMode.ASYNC,
                        "source_request_id": request.request_id,
                    }
                ),
                flow_version=route.flow_version,
            )
            for index, route in enumerate(running)
        ]
        await self._schedule_all(starts)
        answer.outcome = Progress.QUEUED
        self.metrics.requests.labels(source.source_id, Outcome.ROUTED).inc()
        self.metrics.runs.labels(source.source_id, "started").inc(len(starts))
        accepted = source_answer(request.request_id, len(starts))
        self._record_routed(request, accepted)
        return json_response(accepted)

    def _record_routed(self, request: WebhookRequest, body: dict[str, object]) -> None:
        now = datetime.now(UTC)
        result = RunResult(
            request_id=request.request_id,
            outcome=Outcome.ROUTED,
            status_code=200,
            content_type=JSON,
            body=orjson.dumps(body).decode(),
            started_at=request.received_at,
            finished_at=now,
        )
        self.routed.publish_soon(RunFinished(request=request, result=result))

    async def _schedule_all(self, starts: list[StartRun]) -> None:
        """All the runs in one confirmed message, or none (`Unavailable`, 503). Counted
        against their workspace's queued bounds like any async run (429 past them)."""
        webhook = self.webhook
        broker = webhook.broker
        async with AsyncExitStack() as counted:
            for start in starts:
                await counted.enter_async_context(
                    webhook.backlog.scheduling(start, origin=broker.instance)
                )
            # The runs differ only in their ids; each carries the body twice (raw and
            # parsed, about as long for JSON) and its headers: an estimate, without
            # encoding them a second time.
            request = starts[0].request
            one = 2 * len(request.raw_body) + sum(map(len, request.headers.values())) + 4096
            size = one * len(starts)
            if size > self.max_message_bytes:
                raise PayloadTooLarge(
                    f"this request routed to {len(starts)} flows takes {size} bytes, more"
                    f" than {self.max_message_bytes}"
                    " (FLOWHOOKS_INGRESS_SOURCE_MAX_MESSAGE_BYTES): send a smaller body"
                )
            # Batched with other requests' runs (group commit), but as one unit: the
            # message holding them all is confirmed, or none of them is queued.
            await webhook.runner.schedule_together(starts)
        if webhook.record_queued:
            now = datetime.now(UTC)
            for start in starts:
                webhook.queued.publish_soon(RunProgress(request=start.request, at=now))


def _run_id(source_request_id: str, index: int) -> str:
    """A run's request id: the source request's with the route's place, so that a run
    names its source request at a glance (the debugger links them by field)."""
    return f"{source_request_id}-{index + 1}"
