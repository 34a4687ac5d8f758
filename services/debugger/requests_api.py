"""The ops API: a flow's requests (newest first, filters, keyset cursor) and one
request in full. Personal tokens with `automation` or `automation.manage`; only the
caller's workspace is ever read."""

import asyncio
import base64
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web

from services.debugger.store import RequestStore
from services.debugger.tail import LiveTail, sse
from shared.api_auth import require_scope
from shared.errors import BadRequest, NotFound
from shared.messaging.rpc import RpcClient
from shared.messaging.runner_client import RunnerClient
from shared.schemas.runs import CURRENT_VERSION, RECORDED_OUTCOMES, StartRun, WebhookRequest
from shared.web import json_response

MAX_LIMIT = 500


def encode_cursor(received_at: datetime, request_id: str) -> str:
    raw = orjson.dumps([received_at.isoformat(), request_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        received_at, request_id = orjson.loads(raw)
        return datetime.fromisoformat(received_at), str(request_id)
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise BadRequest("invalid cursor", data={"field": "cursor"}) from None


def _time(query: Any, name: str) -> datetime | None:
    value = query.get(name)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"{name} must be an ISO 8601 time", data={"field": name}) from None
    if parsed.tzinfo is None:
        raise BadRequest(f"{name} needs a time zone, e.g. Z", data={"field": name})
    return parsed


def _duration_ms(started: datetime | None, finished: datetime | None) -> float | None:
    if started is None or finished is None:
        return None
    return round((finished - started).total_seconds() * 1000, 3)


class RequestsApi:
    def __init__(
        self,
        store: RequestStore,
        rpc: RpcClient,
        runner: RunnerClient,
        tail: LiveTail,
        replay_timeout_s: float,
        heartbeat_s: float = 15.0,
    ) -> None:
        self.store = store
        self.rpc = rpc
        self.runner = runner
        self.tail = tail
        self.replay_timeout_s = replay_timeout_s
        self.heartbeat_s = heartbeat_s

    async def _visible_flow(self, request: web.Request, workspace_id: str) -> uuid.UUID:
        try:
            flow_id = uuid.UUID(request.match_info["flow_id"])
        except ValueError:
            raise NotFound("no such flow") from None
        if not await self.store.flow_visible(flow_id, workspace_id):
            raise NotFound("no such flow")
        return flow_id

    async def list(self, request: web.Request) -> web.Response:
        caller = await require_scope(self.rpc, request)
        flow_id = await self._visible_flow(request, caller.workspace_id)
        query = request.query
        try:
            limit = max(1, min(int(query.get("limit", "50")), MAX_LIMIT))
        except ValueError:
            raise BadRequest("limit must be a whole number", data={"field": "limit"}) from None
        outcome = query.get("outcome")
        if outcome is not None and outcome not in RECORDED_OUTCOMES:
            raise BadRequest(
                f"outcome must be one of {', '.join(sorted(RECORDED_OUTCOMES))}",
                data={"field": "outcome"},
            )
        mode = query.get("mode")
        if mode is not None and mode not in ("sync", "async"):
            raise BadRequest("mode must be sync or async", data={"field": "mode"})
        cursor = query.get("cursor")
        rows = await self.store.list_for_flow(
            flow_id,
            caller.workspace_id,
            limit=limit,
            before=decode_cursor(cursor) if cursor else None,
            outcome=outcome,
            mode=mode,
            since=_time(query, "since"),
            until=_time(query, "until"),
        )
        items = [
            {
                "id": row["id"],
                "flow_id": row["flow_id"],
                "received_at": row["received_at"],
                "method": row["method"],
                "mode": row["mode"],
                "outcome": row["outcome"],
                "status_code": row["status_code"],
                "duration_ms": _duration_ms(row["received_at"], row["finished_at"]),
            }
            for row in rows
        ]
        next_cursor = (
            encode_cursor(rows[-1]["received_at"], rows[-1]["id"]) if len(rows) == limit else None
        )
        return json_response({"items": items, "next_cursor": next_cursor})

    async def get(self, request: web.Request) -> web.Response:
        caller = await require_scope(self.rpc, request)
        row = await self.store.get(request.match_info["request_id"], caller.workspace_id)
        if row is None:
            raise NotFound("no such request")
        response = {
            "status_code": row.pop("status_code"),
            "content_type": row.pop("response_content_type"),
            "body": row.pop("response_body"),
        }
        return json_response({**row, "response": response})

    async def stats(self, request: web.Request) -> web.Response:
        """Counts by outcome and latency percentiles over `?window_s=` (default 3600)."""
        caller = await require_scope(self.rpc, request)
        flow_id = await self._visible_flow(request, caller.workspace_id)
        try:
            window_s = float(request.query.get("window_s", "3600"))
        except ValueError:
            raise BadRequest("window_s must be a number", data={"field": "window_s"}) from None
        if not 0 < window_s <= 90 * 86400:
            raise BadRequest("window_s must be between 0 and 90 days", data={"field": "window_s"})
        stats = await self.store.stats(flow_id, caller.workspace_id, window_s)
        return json_response({"flow_id": str(flow_id), "window_s": window_s, **stats})

    async def replay(self, request: web.Request) -> web.Response:
        """The stored input through the normal run path again, as a new request that
        points at the original (`replay_of`)."""
        caller = await require_scope(self.rpc, request)
        row = await self.store.get(request.match_info["request_id"], caller.workspace_id)
        if row is None:
            raise NotFound("no such request")
        if row["outcome"] == "rejected":
            raise BadRequest("a request whose body could not be parsed cannot be replayed")
        truncated = row.get("truncated") or {}
        if truncated.get("reduced"):
            raise BadRequest(
                "the request was not stored in full (not storable): it cannot be replayed"
            )
        if "input" in truncated:
            raise BadRequest(
                f"the request's input ({truncated['input']} bytes) was stored truncated,"
                " beyond FLOWHOOKS_DEBUGGER_MAX_INPUT_BYTES: it cannot be replayed"
            )
        now = datetime.now(UTC)
        replayed = WebhookRequest(
            request_id=uuid.uuid4().hex,
            flow_id=row["flow_id"],
            workspace_id=row["workspace_id"],
            received_at=now,
            method=row["method"],
            path=row["path"],
            query=row["query"],
            headers=row["headers"],
            content_type=row["content_type"],
            raw_body=row["raw_body"],
            input=row["input"],
            mode=row["mode"],
            replay_of=row["id"],
        )
        if row["mode"] == "async":
            await self.runner.schedule(StartRun(request=replayed, flow_version=CURRENT_VERSION))
            return json_response(
                {"request_id": replayed.request_id, "replay_of": row["id"], "outcome": "queued"},
                status=202,
            )
        start = StartRun(
            request=replayed,
            flow_version=CURRENT_VERSION,
            deadline=now + timedelta(seconds=self.replay_timeout_s),
        )
        result = await self.runner.run(start, self.replay_timeout_s)
        return json_response(
            {
                "request_id": replayed.request_id,
                "replay_of": row["id"],
                "outcome": result.outcome,
                "response": {
                    "status_code": result.status_code,
                    "content_type": result.content_type,
                    "body": result.body,
                },
            }
        )

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: one `request` event per new request of the flow."""
        caller = await require_scope(self.rpc, request)
        flow_id = str(await self._visible_flow(request, caller.workspace_id))
        queue = await self.tail.subscribe(flow_id, caller.workspace_id)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        try:
            await response.prepare(request)
            await response.write(b": tailing\n\n")
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), self.heartbeat_s)
                except TimeoutError:
                    await response.write(b": ping\n\n")
                    continue
                await response.write(sse("request", item))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.tail.unsubscribe(flow_id, caller.workspace_id, queue)
        return response
