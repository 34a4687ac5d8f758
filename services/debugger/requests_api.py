"""The ops API: a flow's requests (newest first, filters, search, keyset cursor) and one
request in full. Personal tokens with `debugger.read` (or a scope that includes it:
`DEBUGGER_READ_SCOPES`); only the caller's workspace is ever read.

Fair share of the database: listings, searches and stats take a slot of the caller's
workspace (`WorkspaceLimiter`: past its share, a short wait, then 429) and run on the
API's own pool under its `statement_timeout`. A search (`match`, `header`) that runs
past that bound is answered 400 naming it, and so are stats over a `window_s` too
long: their cost is what the caller chose (a match that the index cannot narrow, a long
range), and a 503 would invite the same query again and again, each costing the whole
bound. Any other statement past it is 503 `unavailable` with Retry-After (shared/web.py):
a listing is an index range scan whatever the caller asks, so the database itself is
too busy."""

import asyncio
import base64
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from services.debugger.callbacks import CallbackAttempts
from services.debugger.replay_jobs import replays_of
from services.debugger.search import parse_headers, parse_match
from services.debugger.store import FlowRow, RequestStore
from services.debugger.tail import LiveTail, sse
from services.debugger.workspace_limiter import WorkspaceLimiter
from shared.api_auth import DEBUGGER_READ_SCOPES, require_scope
from shared.errors import BadRequest, NotFound, Timeout, Unavailable
from shared.messaging.contracts import GET_FLOW_OWNER
from shared.messaging.rpc import RpcClient
from shared.schemas.access import FlowOwnerQuery
from shared.schemas.vocabulary import RECORDED_OUTCOMES, RunMode
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
    try:
        # Sent in UTC: before year 1 or past 9999 there, asyncpg cannot encode it.
        parsed.astimezone(UTC)
    except OverflowError:
        raise BadRequest(f"{name} is out of range", data={"field": name}) from None
    return parsed


def seconds_after(milliseconds: int) -> int:
    """A Retry-After (whole seconds, at least 1) no sooner than `milliseconds`."""
    return max(1, -(-milliseconds // 1000))


def _duration_ms(started: datetime | None, finished: datetime | None) -> float | None:
    if started is None or finished is None:
        return None
    return round((finished - started).total_seconds() * 1000, 3)


class RequestsApi:
    def __init__(
        self,
        store: RequestStore,
        rpc: RpcClient,
        tail: LiveTail,
        heartbeat_s: float = 15.0,
        *,
        limiter: WorkspaceLimiter,
        statement_timeout_ms: int,
    ) -> None:
        self.store = store
        self.rpc = rpc
        self.tail = tail
        self.heartbeat_s = heartbeat_s
        self.limiter = limiter
        self.statement_timeout_ms = statement_timeout_ms

    def _too_long(self, chosen: str | None, narrow: str = "") -> BadRequest | Unavailable:
        """The answer to a statement cancelled by the API pool's statement_timeout:
        `chosen` names the parameter whose cost the caller chose (None: none did)."""
        bound = self.statement_timeout_ms
        if chosen is not None:
            return BadRequest(
                f"the query ran longer than {bound} ms"
                f" (FLOWHOOKS_DEBUGGER_API_STATEMENT_TIMEOUT_MS) and was stopped; {narrow}",
                data={"field": chosen, "statement_timeout_ms": bound},
            )
        error = Unavailable(f"the database did not answer within {bound} ms; try again")
        error.retry_after_s = seconds_after(bound)
        return error

    async def _visible_flow(self, request: web.Request, workspace_id: str) -> uuid.UUID:
        try:
            flow_id = uuid.UUID(request.match_info["flow_id"])
        except ValueError:
            raise NotFound("no such flow") from None
        owner = await self.store.flow_owner(flow_id)
        if owner is None:
            owner = await self._ask_runner(flow_id)
        if owner is None or owner[1] or owner[0] != workspace_id:
            raise NotFound("no such flow")
        return flow_id

    async def _ask_runner(self, flow_id: uuid.UUID) -> tuple[str, bool] | None:
        """Read-through for a flow whose `flow.changed` the debugger has not consumed
        yet (it arrives asynchronously, after the flows API has answered): the runner
        says who owns it, and the answer joins `debugger.flows` under the version rule
        (a later event, a deletion included, still wins). None: unknown or deleted."""
        try:
            owner = await self.rpc.call(GET_FLOW_OWNER, FlowOwnerQuery(flow_id=str(flow_id)))
        except Timeout:
            raise Unavailable("the runner did not answer") from None
        if not owner.found or owner.workspace_id is None or owner.version is None:
            return None
        await self.store.remember_flow(
            FlowRow(flow_id, uuid.UUID(owner.workspace_id), owner.version, False)
        )
        # Read back: a deletion stored meanwhile with a higher version is the answer.
        return await self.store.flow_owner(flow_id)

    async def list(self, request: web.Request) -> web.Response:
        caller = await require_scope(self.rpc, request, DEBUGGER_READ_SCOPES)
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
        if mode is not None and mode not in tuple(RunMode):
            raise BadRequest(f"mode must be {' or '.join(RunMode)}", data={"field": "mode"})
        cursor = query.get("cursor")
        input_match = parse_match(query.get("match"))
        headers_match = parse_headers(query.getall("header", []))
        before = decode_cursor(cursor) if cursor else None
        since, until = _time(query, "since"), _time(query, "until")
        search_field = (
            "match" if input_match is not None else "header" if headers_match is not None else None
        )
        try:
            async with self.limiter.slot(caller.workspace_id):
                rows = await self.store.list_for_flow(
                    flow_id,
                    caller.workspace_id,
                    limit=limit,
                    before=before,
                    outcome=outcome,
                    mode=mode,
                    since=since,
                    until=until,
                    input_match=input_match,
                    headers_match=headers_match,
                )
        except asyncpg.QueryCanceledError:
            raise self._too_long(
                search_field, "narrow the search with since/until or a more specific match"
            ) from None
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
        caller = await require_scope(self.rpc, request, DEBUGGER_READ_SCOPES)
        row = await self.store.get(request.match_info["request_id"], caller.workspace_id)
        if row is None:
            raise NotFound("no such request")
        response = {
            "status_code": row.pop("status_code"),
            "content_type": row.pop("response_content_type"),
            "body": row.pop("response_body"),
        }
        headers = row.pop("response_headers")
        if headers:  # left out while none, so records read as before
            response["headers"] = headers
        row["replays"] = await replays_of(self.store.pool, row["id"], caller.workspace_id)
        callback = await CallbackAttempts(self.store.pool).of_request(
            row["id"], caller.workspace_id
        )
        if callback is not None:  # left out for requests without a completion callback
            row["callback"] = callback
        return json_response({**row, "response": response})

    async def stats(self, request: web.Request) -> web.Response:
        """Counts by outcome and latency percentiles over `?window_s=` (default 3600)."""
        caller = await require_scope(self.rpc, request, DEBUGGER_READ_SCOPES)
        flow_id = await self._visible_flow(request, caller.workspace_id)
        try:
            window_s = float(request.query.get("window_s", "3600"))
        except ValueError:
            raise BadRequest("window_s must be a number", data={"field": "window_s"}) from None
        if not 0 < window_s <= 90 * 86400:
            raise BadRequest("window_s must be between 0 and 90 days", data={"field": "window_s"})
        try:
            async with self.limiter.slot(caller.workspace_id):
                stats = await self.store.stats(flow_id, caller.workspace_id, window_s)
        except asyncpg.QueryCanceledError:
            # The window is the caller's choice, as a search is.
            raise self._too_long("window_s", "ask for a shorter window_s") from None
        return json_response({"flow_id": str(flow_id), "window_s": window_s, **stats})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: one `request` event per new request of the flow."""
        caller = await require_scope(self.rpc, request, DEBUGGER_READ_SCOPES)
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
