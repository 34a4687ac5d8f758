"""`/v1/flow-webhook/{flow_id}`: check the bearer, answer paused flows, read and parse
the body, then either run the flow over RPC (sync) or queue it durably (async)."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict

from services.ingress import handshake
from services.ingress.access_cache import AccessCache
from services.ingress.backlog import WorkspaceBacklog
from services.ingress.dedup import Deduplicator, accepted_body, request_key, scheduled_body
from services.ingress.filtering import Filters
from services.ingress.form_body import multi_dict
from services.ingress.learned_secrets import SecretLearner
from services.ingress.metrics import IngressMetrics, error_outcome
from services.ingress.normalise import (
    BodyLimits,
    parse_input,
    parse_push_input,
    webhook_request,
)
from services.ingress.pubsub import is_jwt_bearer
from services.ingress.rate_limit import BadSignatureBudget, FlowRateLimiter
from services.ingress.refusals import RefusalRecorder
from services.ingress.run_messages import RunAnswer, run_progress_json, start_run_json
from services.ingress.settings import IngressSettings
from services.ingress.signatures import RequestLine
from services.ingress.signing import SignatureChecks
from services.ingress.sns import SubscribeVisits, parse_sns_input
from services.ingress.text import replace_undecodable
from shared import tracing
from shared.bearer import bearer_from_header, hash_token
from shared.errors import (
    ApiError,
    BadRequest,
    Forbidden,
    NotFound,
    RateLimited,
    ResultTooLarge,
    Timeout,
    Unauthorized,
    Unavailable,
)
from shared.http_api import Call
from shared.messaging.batching import BatchPublisher
from shared.messaging.connection import Broker
from shared.messaging.contracts import (
    GET_RUN_STATUS,
    REQUEST_HANDSHAKE,
    REQUEST_QUEUED,
    REQUEST_REJECTED,
)
from shared.messaging.runner_client import RunnerClient
from shared.redaction import redact_headers
from shared.schemas.access import FlowWebhookSettings, TokenIdentity
from shared.schemas.dedup import GetRunStatus
from shared.schemas.runs import (
    RunFinished,
    RunProgress,
    RunResult,
    RunsFinished,
    StepTrace,
    WebhookRequest,
    error_result,
)
from shared.schemas.vocabulary import Outcome, Progress, RunMode
from shared.web import REQUEST_ID, error_response, json_response, read_body


class Accepted(BaseModel):
    """Accepted, not finished: `data.status_url` tells how it ends"""

    model_config = ConfigDict(extra="allow")

    status: int
    message: str
    data: dict[str, Any]


log = structlog.get_logger(__name__)

# The pipeline's first stage (who the request is for, as the flow settings it is taken
# under) and last (take it: run, queue, or fan out; with its dedup key, if any).
Authorize = Callable[[web.Request], Awaitable[FlowWebhookSettings]]
Start = Callable[
    [FlowWebhookSettings, WebhookRequest, "str | None", "Answer"], Awaitable[web.Response]
]

# The original product's answer for a paused flow, byte for byte (contract).
PAUSED_BODY = (
    b'{"status": 200, "error": "biz_logic", "message": "Flow status is `paused`. '
    b'Unpause to run this flow using a webhook", "data": null}'
)


def body_limits(settings: IngressSettings) -> BodyLimits:
    """Each bound of body parsing from its setting, `ingress_<the field's name>`: a body
    type's new bound is its `BodyLimits` field and its setting, nothing here."""
    bounds = {
        field.name: getattr(settings, f"ingress_{field.name}") for field in fields(BodyLimits)
    }
    return BodyLimits(**bounds)


def _handshake_input(normalised: WebhookRequest, limits: BodyLimits) -> Any:
    """What the debugger shows as a handshake's input: the query (GET) or the parsed
    body, as for a run; None where it does not parse (the raw body is kept anyway)."""
    try:
        return parse_input(
            normalised.method,
            normalised.query,
            normalised.content_type,
            normalised.raw_body_bytes(),
            limits,
        )
    except BadRequest:
        return None


def _without_secrets(normalised: WebhookRequest) -> WebhookRequest:
    """A handshake's request as recorded: secret headers (Asana's `X-Hook-Secret`: the
    flow's secret itself) redacted before it crosses the broker."""
    return normalised.model_copy(update={"headers": redact_headers(normalised.headers)})


class _RefusedUnread(Exception):
    """A large body refused before it was read: answered without draining it."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.message)
        self.error = error


async def _answer_unread(request: web.Request, error: ApiError) -> web.Response:
    """The error's envelope, then the connection closed without reading the body the
    sender is still sending: aiohttp would otherwise read and drop it (for up to 10 s),
    which costs the ingress about what reading it does, and is what refusing it was
    meant to save. The sender may see the connection reset once it has the answer."""
    response = error_response(error)
    response.headers["X-Request-Id"] = request[REQUEST_ID]
    response.force_close()  # Connection: close
    await response.prepare(request)
    await response.write_eof()
    if request.protocol is not None:
        request.protocol.force_close()  # no lingering read of the unread body
    return response


class Answer:
    """What one webhook answer is counted as (`IngressMetrics.webhook`)."""

    __slots__ = ("mode", "outcome")

    def __init__(self) -> None:
        self.mode = "unknown"  # until the flow is known
        self.outcome = "error"


def _route_of(request: web.Request) -> str:
    """The route's template (a flow's or a source's webhook), never the ids in it."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else request.path


def _span_attributes(request: web.Request) -> dict[str, str | int | float | bool]:
    """HTTP semantic conventions; never the query (it may hold a token) nor a header."""
    if not tracing.enabled():
        return {}
    return {
        "http.request.method": request.method,
        "http.route": _route_of(request),
        "url.path": request.path,
        "url.scheme": request.scheme,
        "flowhooks.request_id": str(request.get(REQUEST_ID, "")),
        "flowhooks.flow_id": request.match_info.get("flow_id", ""),
        "flowhooks.source_id": request.match_info.get("source_id", ""),
    }


def _answered(span: tracing.Span | None, status: int) -> None:
    if span is not None:
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            tracing.failed(span, str(status))


class WebhookHandler:
    def __init__(
        self,
        access: AccessCache,
        runner: RunnerClient,
        broker: Broker,
        settings: IngressSettings,
        signatures: SignatureChecks,
        dedup: Deduplicator,
        metrics: IngressMetrics | None = None,
        sns_visits: SubscribeVisits | None = None,
        learner: SecretLearner | None = None,
    ) -> None:
        self.access = access
        # SNS SubscribeURLs visited in the background (None: answered, never visited).
        self.sns_visits = sns_visits
        # Keeps the secret an asana flow's first handshake gives (runner RPC).
        self.learner = learner
        self.metrics = metrics if metrics is not None else IngressMetrics()
        self.signatures = signatures
        self.rate_limiter = FlowRateLimiter(
            settings.ingress_flow_rate_limit_per_s, settings.ingress_flow_rate_burst
        )
        self.bad_signatures = BadSignatureBudget(
            settings.ingress_bad_signature_rate_per_s, settings.ingress_bad_signature_burst
        )
        self.small_body_bytes = settings.ingress_bad_signature_small_body_bytes
        # Requests refused by their signature, recorded in the debugger (bounded per flow).
        self.refusals = RefusalRecorder(
            broker, settings.ingress_refused_records_per_s, settings.ingress_refused_records_burst
        )
        self.runner = runner
        self.broker = broker
        self.dedup = dedup
        self.filters = Filters(broker, settings.ingress_filter_budget)
        # Per-workspace bounds on what this replica has queued (429 past them); runners'
        # `runs.drained` reports reach it through app.py's wiring.
        self.backlog = WorkspaceBacklog(
            max_runs=settings.ingress_workspace_queued_runs,
            max_bytes=settings.ingress_workspace_queued_bytes,
            max_age_s=settings.ingress_workspace_queued_max_age_s,
            max_sync=settings.ingress_workspace_sync_requests,
        )
        self.record_queued = settings.ingress_record_queued
        self.queued: BatchPublisher[RunProgress] = BatchPublisher(broker, REQUEST_QUEUED)
        self.max_body_bytes = settings.ingress_max_body_bytes
        self.body_timeout_s = settings.ingress_body_timeout_s
        self.limits = body_limits(settings)
        self.parse_inline_max_bytes = settings.ingress_parse_inline_max_bytes
        self.parser = ThreadPoolExecutor(
            settings.ingress_parse_threads, thread_name_prefix="ingress-parse"
        )

    def close(self) -> None:
        self.parser.shutdown(wait=False, cancel_futures=True)

    async def handle(self, request: web.Request) -> web.Response:
        """`/v1/flow-webhook/{flow_id}`."""
        return await self.handle_with(request, self._authorize_flow, self._start)

    async def handle_with(
        self, request: web.Request, authorize: Authorize, start: Start
    ) -> web.Response:
        """The pipeline with its first and last stages given: who the request is for
        (a flow; a source, services/ingress/sources.py), and what taking it means. Every
        answer is counted once, by outcome and mode (services/ingress/metrics.py)."""
        answer = Answer()
        # The sender's `traceparent` is honoured; without one the trace starts here.
        # Off, only its ids are carried (stored with the request): no name to make.
        with tracing.span(
            f"{request.method} {_route_of(request)}" if tracing.enabled() else "",
            kind=tracing.SERVER,
            parent=tracing.incoming(request.headers),
            attributes=_span_attributes(request),
        ) as span:
            try:
                response = await self._handle(request, answer, authorize, start)
            except _RefusedUnread as refused:
                self.metrics.webhook(error_outcome(refused.error.status_code), answer.mode)
                _answered(span, refused.error.status_code)
                return await _answer_unread(request, refused.error)
            except ApiError as error:
                self.metrics.webhook(error_outcome(error.status_code), answer.mode)
                _answered(span, error.status_code)
                raise
            except Exception:
                self.metrics.webhook("error", answer.mode)
                raise
            self.metrics.webhook(answer.outcome, answer.mode)
            _answered(span, response.status)
            return response

    async def _authorize_flow(self, request: web.Request) -> FlowWebhookSettings:
        return await self._authorize(request, request.match_info["flow_id"])

    async def _handle(
        self, request: web.Request, answer: Answer, authorize: Authorize, start: Start
    ) -> web.Response:
        """The pipeline, stage by stage: authorise, verify (a signing flow's sender) and
        read the body, answer a paused flow, answer a provider's handshake, parse, filter
        (`webhook.filter`), then deduplicate and run or queue."""
        received_at = datetime.now(UTC)
        flow = await authorize(request)
        answer.mode = RunMode.of(flow.is_async)
        signed_sender = self._by_signature(request, flow)
        if signed_sender:
            body, unsigned_handshake = await self._verify(request, flow, received_at)
            # Judged before anything else about the flow (paused) shows, and before the
            # body is parsed or published.
            if flow.status == "paused":
                answer.outcome = "paused"
                return web.Response(body=PAUSED_BODY, content_type="application/json")
        else:
            if flow.status == "paused":
                # Neither run nor stored (contract).
                answer.outcome = "paused"
                return web.Response(body=PAUSED_BODY, content_type="application/json")
            self.rate_limiter.check(flow.flow_id)
            body = await self._read_body(request)
        normalised = self._normalise(request, flow, body, received_at)
        if signed_sender:
            handshake_answer = await self._handshake(
                request, flow, normalised, body, unsigned_handshake
            )
            if handshake_answer is not None:
                answer.outcome = Outcome.HANDSHAKE
                return handshake_answer
        push = flow.signing is not None and flow.signing.mode == "google-pubsub"
        sns = flow.signing is not None and flow.signing.mode == "sns"
        try:
            normalised.input = await self._parse(
                request.method,
                normalised.query,
                normalised.content_type,
                body,
                push_envelope=push,
                sns_envelope=sns,
            )
        except BadRequest as error:
            await self._record_rejected(normalised, error)
            raise
        if flow.filter is not None and not self.filters.match(
            flow.filter, self.filters.document(normalised), flow.flow_id
        ):
            # Before dedup and the runner: a request the flow does not want costs neither.
            answer.outcome = Outcome.FILTERED
            body = self.filters.record(normalised)
            return web.Response(body=body, content_type="application/json")
        key = request_key(flow, normalised)
        if key is None:
            return await start(flow, normalised, None, answer)
        claim = await self.dedup.claim(flow, normalised.request_id, key)
        if claim.state != "first":
            answer.outcome = Outcome.DUPLICATE
            return await self.dedup.answer(flow, normalised, key, claim, received_at)
        try:
            return await start(flow, normalised, key, answer)
        except Timeout:
            raise  # the run may still finish: the runner records it, or lets go of the key
        except Exception:
            # Refused before a runner had it (503, 429, ...): a first that failed does not
            # hold its key (contract), so the sender's retry runs.
            await self.dedup.release(flow, normalised.request_id, key)
            raise

    def _normalise(
        self,
        request: web.Request,
        flow: FlowWebhookSettings,
        body: bytes,
        received_at: datetime,
    ) -> WebhookRequest:
        """The request as the runner and the debugger see it (its input not parsed yet)."""
        content_type = request.headers.get("Content-Type")
        if content_type is not None:
            content_type = replace_undecodable(content_type)
        query = (
            multi_dict(
                (replace_undecodable(key), replace_undecodable(value))
                for key, value in request.query.items()
            )
            if request.query_string
            else {}
        )
        return webhook_request(
            request_id=request[REQUEST_ID],
            flow_id=flow.flow_id,
            workspace_id=flow.workspace_id,
            received_at=received_at,
            method=request.method,
            path=replace_undecodable(request.path),
            query=query,
            headers=request.headers,
            content_type=content_type,
            body=body,
            parsed_input=None,
            mode=RunMode.of(flow.is_async),
            # The context the request is handed on in (what `tracing.handed_on` gives).
            trace=tracing.carrier(),
        )

    async def _verify(
        self, request: web.Request, flow: FlowWebhookSettings, received_at: datetime
    ) -> tuple[bytes, bool]:
        """A signing flow's sender: the body once its signature holds, or, for the
        mode's unsigned handshake (a GET challenge, Graph's validationToken), its small
        body unverified (the handshake stage judges it). And whether it was that."""
        assert flow.signing is not None
        unsigned = handshake.arrives_unsigned(
            flow.signing.mode,
            request.method,
            request.query,
            request.headers,
            request.content_length,
            request.body_exists,
        )
        if not unsigned:
            return await self._read_signed_body(request, flow, received_at), False
        self.rate_limiter.check(flow.flow_id)
        body = await read_body(
            request,
            max_bytes=handshake.MAX_HANDSHAKE_BODY_BYTES,
            timeout_s=self.body_timeout_s,
        )
        return body, True

    async def _handshake(
        self,
        request: web.Request,
        flow: FlowWebhookSettings,
        normalised: WebhookRequest,
        body: bytes,
        unsigned: bool,
    ) -> web.Response | None:
        """A provider's handshake, answered at once and recorded as `handshake` (the flow
        is not run); None for any other request. A refused handshake (400, 401) is
        recorded as `rejected`, so that a failing subscription shows in the debugger.
        A handshake that gives the flow its secret (asana) is answered only once the
        runner keeps it; its records carry no secret header in the clear."""
        assert flow.signing is not None
        check = self.signatures.check_for(flow, flow.signing)
        probe = handshake.Probe(request.method, request.query, request.headers, body)
        try:
            answered = handshake.answer(check, probe, time.time())
            if answered is None and unsigned:  # cannot happen: recognised as one
                raise Unauthorized(f"invalid {flow.signing.mode} signature: not a handshake")
            if answered is not None and answered.learned_secret is not None:
                await self._learn(flow, answered.learned_secret)
        except (BadRequest, NotFound) as error:
            await self._record_rejected(_without_secrets(normalised), error)
            raise
        except Unauthorized as error:
            # A forged handshake (or Asana's second one): recorded within the flow's
            # budget, like any refusal, its secret headers redacted.
            self.refusals.record(
                flow.flow_id, lambda: _without_secrets(normalised), error, body_read=True
            )
            raise
        if answered is None:
            return None
        recorded = _without_secrets(normalised)
        visit = None
        if answered.visit is not None and self.sns_visits is not None:
            # Confirmed before answering (within 10 s, inside SNS's 15 s): answered 200
            # only once AWS took the confirmation, else 503 and SNS sends it again. A
            # visit left to the background would be lost with this process.
            visit = await self.sns_visits.visit(answered.visit)
            if visit.error is not None:
                answered = handshake.unconfirmed(visit.error)
        await self._record_handshake(recorded, answered, visit)
        response = web.Response(
            body=answered.body or None, status=answered.status, headers=answered.headers
        )
        if answered.content_type is not None:
            response.content_type = answered.content_type
        return response

    async def _record_handshake(
        self,
        normalised: WebhookRequest,
        answered: handshake.HandshakeAnswer,
        visit: StepTrace | None = None,
    ) -> None:
        """Recorded like a rejected body: the request and the answer it was given. Best
        effort: the provider is waiting for its answer, which does not depend on this.
        `visit`: SNS's SubscribeURL visit, recorded as the one step (its error, if it
        failed, as the record's error)."""
        normalised.input = _handshake_input(normalised, self.limits)
        now = datetime.now(UTC)
        result = RunResult(
            request_id=normalised.request_id,
            outcome=Outcome.HANDSHAKE,
            status_code=answered.status,
            content_type=answered.content_type or "",
            body=answered.body.decode(),
            # Asana's answer echoes the flow's new secret: recorded as `[redacted]`.
            headers=redact_headers(answered.headers),
            steps=[] if visit is None else [visit],
            error=None if visit is None else visit.error,
            started_at=normalised.received_at,
            finished_at=now,
        )
        try:
            await self.broker.publish_event(
                REQUEST_HANDSHAKE,
                RunsFinished(items=[RunFinished(request=normalised, result=result)]),
            )
        except Unavailable:
            log.warning("handshake_not_recorded", request_id=normalised.request_id)

    async def _learn(self, flow: FlowWebhookSettings, secret: str) -> None:
        """The runner keeps `secret` as the flow's (or refuses: 401 held, 404, 400, 503).
        This replica forgets its cached copy of the flow at once; auth's change event
        brings every replica the new version within the usual bound."""
        if self.learner is None:
            raise Unavailable("this ingress cannot keep handshake secrets")
        await self.learner.learn(flow, secret)
        self.access.forget(flow_id=flow.flow_id)

    async def _start(
        self,
        flow: FlowWebhookSettings,
        normalised: WebhookRequest,
        key: str | None,
        answer: Answer,
    ) -> web.Response:
        """Queue (async) or run (sync) the request; `key`: its dedup key, as its first."""
        if flow.is_async:
            # An async run's time budget starts when a runner takes it, not now.
            answer.outcome = Progress.QUEUED
            return await self._schedule(normalised, flow.version, key)
        if flow.on_timeout == "accept":
            # No deadline: its caller may be answered 202 and poll, so the run goes on
            # (with the runner's own budget) whenever it starts.
            start = start_run_json(normalised, flow.version, dedup_key=key, accept_on_timeout=True)
            return await self._run_or_accept(normalised, start, flow.timeout_s, answer)
        start = start_run_json(
            normalised,
            flow.version,
            deadline=normalised.received_at + timedelta(seconds=flow.timeout_s),
            dedup_key=key,
        )
        return await self._run_sync(normalised, start, flow.timeout_s, answer)

    async def find(self, request: web.Request, caller: TokenIdentity | None) -> FlowWebhookSettings:
        """The status route's flow (`Route.resource`): authorised like a bearer webhook
        call (a signature cannot sign a GET without a body, so a bearer only)."""
        if "Authorization" not in request.headers:
            raise Unauthorized("missing Authorization header; send 'Authorization: Bearer <token>'")
        return await self._authorize(request, request.match_info["flow_id"])

    async def status(self, call: Call[None, None]) -> web.Response:
        """`GET /v1/flow-webhook/{flow_id}/runs/{request_id}`: 202 while queued or
        running, then the run's own answer, from the debugger's record
        (`debugger.get_run_status`)."""
        flow: FlowWebhookSettings = call.resource
        request_id = call.path("request_id")
        status = await self.runner.rpc.call(
            GET_RUN_STATUS, GetRunStatus(flow_id=flow.flow_id, request_id=request_id)
        )
        if status.state == "unknown":
            raise NotFound(
                f"no request {request_id} of this flow (a request accepted a moment ago"
                " may not be recorded yet)"
            )
        if status.state == "pending" or status.result is None:
            body = accepted_body(flow.flow_id, request_id)
            body["message"] = status.outcome or Progress.QUEUED
            if status.resume_at is not None:  # `waiting` in a `delay` step until then
                body["data"]["resume_at"] = status.resume_at.isoformat()  # type: ignore[index]
            return json_response(body, status=202)
        if status.body_truncated:
            raise ResultTooLarge(
                f"the run's response body ({status.body_size} bytes) is larger than the"
                " debugger keeps (FLOWHOOKS_DEBUGGER_MAX_RESPONSE_BODY_BYTES)",
                data={"request_id": request_id, "status_code": status.result.status_code},
            )
        result = status.result
        headers = {**result.headers, "Content-Type": result.content_type}
        return web.Response(body=result.body.encode(), status=result.status_code, headers=headers)

    async def _parse(
        self,
        method: str,
        query: dict[str, Any],
        content_type: str | None,
        body: bytes,
        *,
        push_envelope: bool = False,
        sns_envelope: bool = False,
    ) -> Any:
        """The flow's input. A large body is parsed on a worker thread: its parse (bounded
        and linear, but up to the body size) must not hold up the event loop and with it
        every other request on this ingress. `push_envelope`: a Pub/Sub push's, its
        `message.data` decoded (normalise.parse_push_input); `sns_envelope`: an SNS
        message's, its `Message` parsed when JSON (sns.parse_sns_input)."""
        parser = parse_push_input if push_envelope else parse_input
        if sns_envelope:
            parser = parse_sns_input
        if method == "GET" or len(body) <= self.parse_inline_max_bytes:
            return parser(method, query, content_type, body, self.limits)
        parse = partial(parser, method, query, content_type, body, self.limits)
        return await asyncio.get_running_loop().run_in_executor(self.parser, parse)

    async def _schedule(
        self, request: WebhookRequest, flow_version: int, key: str | None
    ) -> web.Response:
        """200 only once the broker has confirmed the persistent message on the durable
        queue; any failure is a 503 from `Broker.publish`, never a false 200."""
        # The runners report its end to this process (`origin`).
        start = start_run_json(request, flow_version, dedup_key=key, origin=self.broker.instance)
        with self.backlog.queueing(request):  # 429 past the workspace's bounds
            await self.runner.schedule_encoded(start)
        if self.record_queued:
            # Best effort, batched, not awaited: the debugger shows it `queued` meanwhile.
            self.queued.publish_encoded_soon(run_progress_json(request, datetime.now(UTC)))
        return json_response(scheduled_body(request.request_id))

    async def _run_or_accept(
        self, request: WebhookRequest, start: bytes, timeout_s: float, answer: Answer
    ) -> web.Response:
        """`on_timeout: "accept"`: the run's answer if it comes within the flow's
        timeout, else 202 with the status URL; the run goes on."""
        try:
            return await self._run_sync(request, start, timeout_s, answer, keep_queued=True)
        except Timeout:
            answer.outcome = "accepted"
            if self.record_queued:
                # Best effort: the debugger may know it only once the run starts.
                self.queued.publish_encoded_soon(run_progress_json(request, datetime.now(UTC)))
            return json_response(accepted_body(request.flow_id, request.request_id), status=202)

    async def _run_sync(
        self,
        request: WebhookRequest,
        start: bytes,
        timeout_s: float,
        answer: Answer,
        *,
        keep_queued: bool = False,
    ) -> web.Response:
        """`start`: the run's `StartRun`, encoded (run_messages.py)."""
        with self.backlog.sync_request(request.workspace_id):  # 429 past its bound
            result = await self.runner.run_encoded(
                request.request_id, start, timeout_s, RunAnswer, keep_queued=keep_queued
            )
        answer.outcome = result.outcome
        # The flow's own headers were checked on save: none the ingress owns
        # (X-Request-Id, Content-Length, hop-by-hop) can be among them.
        headers = {**result.headers, "Content-Type": result.content_type}
        return web.Response(body=result.body.encode(), status=result.status_code, headers=headers)

    async def _record_rejected(self, normalised: WebhookRequest, error: ApiError) -> None:
        """A body that cannot be parsed is still stored, so the sender's mistake shows;
        so is a refused handshake."""
        now = datetime.now(UTC)
        result = error_result(normalised.request_id, error, Outcome.REJECTED, now, finished_at=now)
        try:
            await self.broker.publish_event(
                REQUEST_REJECTED,
                RunsFinished(items=[RunFinished(request=normalised, result=result)]),
            )
        except Unavailable:
            log.warning("rejected_request_not_recorded", request_id=normalised.request_id)

    @staticmethod
    def _by_signature(request: web.Request, flow: FlowWebhookSettings) -> bool:
        """Whether the request is judged by the flow's signature rather than by a bearer:
        it sends no Authorization header, or it is a Pub/Sub push's bearer JWT."""
        if flow.signing is None:
            return False
        header = request.headers.get("Authorization")
        return header is None or (flow.signing.mode == "google-pubsub" and is_jwt_bearer(header))

    async def _authorize(self, request: web.Request, flow_id: str) -> FlowWebhookSettings:
        header = request.headers.get("Authorization")
        if header is None or is_jwt_bearer(header):
            # No bearer: a signing flow's sender. auth answers with the flow's signing
            # settings (cached like any answer), or 401 for every other flow. A bearer
            # JWT is a Pub/Sub push's token, for a `google-pubsub` flow (pubsub.py); to
            # any other flow it is a bearer like any, and refused as one below.
            access = await self.access.authorize(flow_id, None)
            signed = access.decision == "signature" and access.flow is not None
            if signed and header is not None:
                assert access.flow is not None and access.flow.signing is not None
                signed = access.flow.signing.mode == "google-pubsub"
            if signed:
                assert access.flow is not None
                return access.flow
            if header is None:
                raise Unauthorized(
                    "missing Authorization header; send 'Authorization: Bearer <token>'"
                )
        access = await self.access.authorize(flow_id, hash_token(bearer_from_header(header)))
        if access.decision == "unauthorized":
            raise Unauthorized("unknown, expired or revoked token")
        if access.decision == "forbidden":
            raise Forbidden(
                "this token needs the scope automation.webhook_run, automation.manage or automation"
            )
        if access.decision == "not_found" or access.flow is None:
            raise NotFound("no such flow")
        return access.flow

    async def _read_signed_body(
        self, request: web.Request, flow: FlowWebhookSettings, received_at: datetime
    ) -> bytes:
        """The body of an unauthenticated request to a signing flow, once its signature
        holds. Everything that can refuse it without the body does so first, so a flood
        of forged bodies costs no reads: the headers (401), the flow's budget of failed
        checks for a large body (429), its rate limit (429). A large body refused so is
        not drained either (`_RefusedUnread`). A 401 is recorded (`_record_refusal`)."""
        length = request.content_length
        # Chunked bodies (no length) count as large: their size shows only once read.
        large = request.body_exists and (length is None or length > self.small_body_bytes)
        # What the URL-signing modes sign: the method, and the path and query as received
        # (signing.py puts FLOWHOOKS_INGRESS_PUBLIC_URL before them).
        line = RequestLine(request.method, request.raw_path)
        try:
            await self.signatures.precheck(flow, request.headers, line)
            if large:
                self.bad_signatures.take(flow.flow_id)
            try:
                self.rate_limiter.check(flow.flow_id)
            except RateLimited:
                if large:
                    self.bad_signatures.refund(flow.flow_id)
                raise
        except (Unauthorized, RateLimited) as error:
            if isinstance(error, Unauthorized):
                self._record_refusal(request, flow, received_at, error, None)
            if large:
                raise _RefusedUnread(error) from None
            raise
        body = await self._read_body(request)
        try:
            await self.signatures.verify(
                flow, request.headers, body, self.parser, self.parse_inline_max_bytes, line
            )
        except Unauthorized as error:
            self._record_refusal(request, flow, received_at, error, body)
            raise
        if large:
            self.bad_signatures.refund(flow.flow_id)  # it holds: no failed check
        return body

    def _record_refusal(
        self,
        request: web.Request,
        flow: FlowWebhookSettings,
        received_at: datetime,
        error: Unauthorized,
        body: bytes | None,
    ) -> None:
        """A request refused by its signature, recorded as `rejected` with its body, or
        an empty one marked as not read (`body` None: refused on its headers). Bounded
        per flow and never awaited (refusals.py). Not for a paused flow: its requests
        are never stored (contract)."""
        if flow.status == "paused":
            return
        self.refusals.record(
            flow.flow_id,
            lambda: _without_secrets(self._normalise(request, flow, body or b"", received_at)),
            error,
            body_read=body is not None,
        )

    async def _read_body(self, request: web.Request) -> bytes:
        return await read_body(
            request, max_bytes=self.max_body_bytes, timeout_s=self.body_timeout_s
        )
