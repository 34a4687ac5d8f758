"""Every message flowhooks sends, declared once: where it goes and what it carries.
Producers and consumers import these objects; nobody spells a queue, a routing key, a
method name or a schema again at a call site.

- `Rpc[Request, Response]`: a method served from a queue.
  `await rpc_client.call(AUTHORIZE_WEBHOOK, AuthorizeWebhook(...))` returns a
  `WebhookAccess` (checked by mypy); `RpcServer.register(AUTHORIZE_WEBHOOK, handler)`.
- `Event[T]`: a routing key on the events exchange and its body.
  `broker.publish_event(FLOW_CHANGED, FlowChanged(...))`; consumers dispatch with
  `EventHandlers`.
- `Command[T]`: work on a durable queue (`StartRuns`, batched by `RunnerClient`).
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from pydantic import BaseModel

from shared.messaging import naming, topology
from shared.messaging.topology import QueueSpec
from shared.schemas.access import (
    AccessTokenRevoked,
    AuthorizeWebhook,
    FlowAccessChanged,
    FlowAccessPage,
    FlowChanged,
    FlowOwner,
    FlowOwnerQuery,
    IdentifyToken,
    ListFlowAccess,
    TokenIdentity,
    WebhookAccess,
)
from shared.schemas.backlog import RunsDrained
from shared.schemas.callbacks import CallbackAttempted, CallbackRequested
from shared.schemas.dedup import ClaimDedupKey, DedupClaim, GetRunStatus, RunStatus
from shared.schemas.learned_secrets import LearnWebhookSecret, WebhookSecretLearned
from shared.schemas.runs import RunsFinished, RunsProgressed, StartRuns
from shared.schemas.sources import (
    GetSource,
    ListedSources,
    ListSources,
    SourceAccess,
    SourceChanged,
)

Request = TypeVar("Request", bound=BaseModel)
Response = TypeVar("Response", bound=BaseModel)
Body = TypeVar("Body", bound=BaseModel)


@dataclass(frozen=True)
class Rpc(Generic[Request, Response]):
    method: str
    queue: QueueSpec
    request: type[Request]
    response: type[Response]


@dataclass(frozen=True)
class Event(Generic[Body]):
    routing_key: str
    body: type[Body]


@dataclass(frozen=True)
class Command(Generic[Body]):
    queue: QueueSpec
    body: type[Body]
    # How a consumer reads a message; the schema's JSON validation unless a command
    # reads its items one by one (so that one unreadable item costs no other).
    reader: Callable[[bytes], Body] | None = None

    def decode(self, message: bytes) -> Body:
        """Raises ValueError (pydantic's ValidationError is one) for an unreadable body."""
        if self.reader is not None:
            return self.reader(message)
        return self.body.model_validate_json(message)


# RPCs: the method name (the message's `type`), the queue its servers consume, the
# request and response models.
AUTHORIZE_WEBHOOK: Rpc[AuthorizeWebhook, WebhookAccess] = Rpc(
    "auth.authorize_webhook", topology.AUTH_RPC, AuthorizeWebhook, WebhookAccess
)
IDENTIFY_TOKEN: Rpc[IdentifyToken, TokenIdentity] = Rpc(
    "auth.identify_token", topology.AUTH_RPC, IdentifyToken, TokenIdentity
)
LIST_FLOW_ACCESS: Rpc[ListFlowAccess, FlowAccessPage] = Rpc(
    "runner.list_flow_access", topology.RUNNER_RPC, ListFlowAccess, FlowAccessPage
)
# The debugger's read-through when its copy of flow ownership has not heard of a flow.
GET_FLOW_OWNER: Rpc[FlowOwnerQuery, FlowOwner] = Rpc(
    "runner.get_flow_owner", topology.RUNNER_RPC, FlowOwnerQuery, FlowOwner
)
# The ingress, for flows with `webhook.dedup` only: is this request the first of its key?
CLAIM_DEDUP_KEY: Rpc[ClaimDedupKey, DedupClaim] = Rpc(
    "runner.claim_dedup_key", topology.RUNNER_RPC, ClaimDedupKey, DedupClaim
)
# The ingress, for an asana flow's handshake: keep the secret it gives, if the flow holds
# none (the runner owns flows; a conditional update, so that one handshake wins).
LEARN_WEBHOOK_SECRET: Rpc[LearnWebhookSecret, WebhookSecretLearned] = Rpc(
    "runner.learn_webhook_secret", topology.RUNNER_RPC, LearnWebhookSecret, WebhookSecretLearned
)
# The ingress, for `/v1/source-webhook/{source_id}` (cached, evicted by `source.changed`).
GET_SOURCE: Rpc[GetSource, SourceAccess] = Rpc(
    "runner.get_source", topology.RUNNER_RPC, GetSource, SourceAccess
)
# The debugger page's sources and their routes (`GET /v1/debugger/sources`): the
# sources live in the runner, the page talks to the debugger only.
LIST_SOURCES: Rpc[ListSources, ListedSources] = Rpc(
    "runner.list_sources", topology.RUNNER_RPC, ListSources, ListedSources
)
# The ingress's status URL (`/v1/flow-webhook/{flow_id}/runs/{request_id}`).
GET_RUN_STATUS: Rpc[GetRunStatus, RunStatus] = Rpc(
    "debugger.get_run_status", topology.DEBUGGER_RPC, GetRunStatus, RunStatus
)

# Commands: webhook requests for the runners, many to a message.
SYNC_RUNS: Command[StartRuns] = Command(topology.SYNC_RUNS, StartRuns, StartRuns.read)
ASYNC_RUNS: Command[StartRuns] = Command(topology.ASYNC_RUNS, StartRuns, StartRuns.read)
# Async runs a runner parked while their workspace was at its share (services/runner/runs.py);
# the broker sends them back to ASYNC_RUNS after the wait queue's TTL. Nobody consumes it.
PARKED_RUNS: Command[StartRuns] = Command(topology.ASYNC_RUNS_WAIT, StartRuns, StartRuns.read)
# Completion callbacks of async runs, for the runner's sender (services/runner/callbacks.py).
CALLBACKS: Command[CallbackRequested] = Command(topology.CALLBACKS, CallbackRequested)

# Events.
FLOW_CHANGED: Event[FlowChanged] = Event(naming.FLOW_CHANGED, FlowChanged)
FLOW_ACCESS_CHANGED: Event[FlowAccessChanged] = Event(naming.FLOW_ACCESS_CHANGED, FlowAccessChanged)
ACCESS_TOKEN_REVOKED: Event[AccessTokenRevoked] = Event(
    naming.ACCESS_TOKEN_REVOKED, AccessTokenRevoked
)
RUN_FINISHED: Event[RunsFinished] = Event(naming.RUN_FINISHED, RunsFinished)
REQUEST_REJECTED: Event[RunsFinished] = Event(naming.REQUEST_REJECTED, RunsFinished)
REQUEST_DEDUPLICATED: Event[RunsFinished] = Event(naming.REQUEST_DEDUPLICATED, RunsFinished)
REQUEST_HANDSHAKE: Event[RunsFinished] = Event(naming.REQUEST_HANDSHAKE, RunsFinished)
REQUEST_FILTERED: Event[RunsFinished] = Event(naming.REQUEST_FILTERED, RunsFinished)
REQUEST_ROUTED: Event[RunsFinished] = Event(naming.REQUEST_ROUTED, RunsFinished)
SOURCE_CHANGED: Event[SourceChanged] = Event(naming.SOURCE_CHANGED, SourceChanged)
REQUEST_QUEUED: Event[RunsProgressed] = Event(naming.REQUEST_QUEUED, RunsProgressed)
RUN_STARTED: Event[RunsProgressed] = Event(naming.RUN_STARTED, RunsProgressed)
RUN_WAITING: Event[RunsProgressed] = Event(naming.RUN_WAITING, RunsProgressed)
# Dead-lettered by the broker: the StartRuns (or a single StartRun) it gave up on.
RUN_EXPIRED: Event[StartRuns] = Event(naming.RUN_EXPIRED, StartRuns)
RUN_DEAD_LETTERED: Event[StartRuns] = Event(naming.RUN_DEAD_LETTERED, StartRuns)
CALLBACK_ATTEMPTED: Event[CallbackAttempted] = Event(naming.CALLBACK_ATTEMPTED, CallbackAttempted)
# runner -> the ingress that queued the runs: which finished (its per-workspace queued
# bounds, services/ingress/backlog.py). Published as `runs_drained_key(<ingress
# instance>)`, which only that ingress's own queue binds; best effort.
RUNS_DRAINED: Event[RunsDrained] = Event(naming.RUNS_DRAINED, RunsDrained)
