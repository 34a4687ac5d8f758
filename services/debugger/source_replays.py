"""Replaying a source's request: routed again with the source's routes of today (not
those it had), each matching route its own async run, all in one confirmed message as
at the ingress (none or all). The new source request is stored at once, `routed` with
its runs linked (`source_request_id`), or `filtered`; it points at the original
(`replay_of`). Not verified again (a replay never is) and not deduplicated."""

from datetime import UTC, datetime

import orjson

from services.debugger.records import Redaction, finished_row
from services.debugger.store import RequestStore
from shared.errors import NotFound, Timeout, Unavailable
from shared.filters import FilterTooCostly, matches, request_document
from shared.messaging import topology
from shared.messaging.connection import Broker
from shared.messaging.contracts import GET_SOURCE
from shared.messaging.rpc import RpcClient
from shared.schemas.runs import RunFinished, RunResult, StartRun, StartRuns, WebhookRequest
from shared.schemas.sources import GetSource, SourceAccess, source_answer
from shared.schemas.vocabulary import JSON, Outcome, RunMode


class SourceReplays:
    def __init__(
        self,
        rpc: RpcClient,
        broker: Broker,
        store: RequestStore,
        redaction: Redaction,
        filter_budget: int,
    ) -> None:
        self.rpc = rpc
        self.broker = broker
        self.store = store
        self.redaction = redaction
        self.filter_budget = filter_budget

    async def source_of(self, flow_id: str, workspace_id: str) -> SourceAccess | None:
        """The source a stored request was sent to, if its `flow_id` names one of the
        workspace's sources (None: a flow's request)."""
        try:
            source = await self.rpc.call(GET_SOURCE, GetSource(source_id=flow_id))
        except Timeout:
            raise Unavailable("the runner did not answer") from None
        if not source.found:
            return None
        if source.workspace_id != workspace_id:
            raise NotFound("no such request")
        return source

    async def replay(self, source: SourceAccess, request: WebhookRequest) -> RunResult:
        document = request_document(request.input, request.headers, request.query, request.path)
        running = [
            route
            for route in source.routes
            if not route.paused and self._matches(route.filter, document)
        ]
        starts = [
            StartRun(
                request=request.model_copy(
                    update={
                        "request_id": f"{request.request_id}-{index + 1}",
                        "flow_id": route.flow_id,
                        "mode": RunMode.ASYNC,
                        "source_request_id": request.request_id,
                    }
                ),
                flow_version=route.flow_version,
            )
            for index, route in enumerate(running)
        ]
        if starts:
            await self.broker.publish(
                orjson.dumps(StartRuns(items=starts).model_dump(mode="json")),
                routing_key=topology.ASYNC_RUNS.name,
                message_type=StartRuns.__name__,
            )
        outcome = Outcome.ROUTED if starts else Outcome.FILTERED
        body = source_answer(request.request_id, len(starts))
        now = datetime.now(UTC)
        result = RunResult(
            request_id=request.request_id,
            outcome=outcome,
            status_code=200,
            content_type=JSON,
            body=orjson.dumps(body).decode(),
            started_at=now,
            finished_at=now,
        )
        await self.store.write(
            [finished_row(RunFinished(request=request, result=result), self.redaction)]
        )
        return result

    def _matches(self, filter_: dict[str, object] | None, document: dict[str, object]) -> bool:
        if filter_ is None:
            return True
        try:
            return matches(filter_, document, self.filter_budget)
        except FilterTooCostly:
            return False
