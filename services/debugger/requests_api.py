"""The ops API: a flow's requests (newest first, filters, keyset cursor) and one
request in full. Personal tokens with `automation` or `automation.manage`; only the
caller's workspace is ever read."""

import base64
import uuid
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from services.debugger.store import RequestStore
from shared.api_auth import require_scope
from shared.errors import BadRequest, NotFound
from shared.messaging.rpc import RpcClient
from shared.web import json_response

MAX_LIMIT = 500
OUTCOMES = frozenset({"queued", "running", "succeeded", "failed", "timeout", "expired", "rejected"})


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
    def __init__(self, store: RequestStore, rpc: RpcClient) -> None:
        self.store = store
        self.rpc = rpc

    async def list(self, request: web.Request) -> web.Response:
        caller = await require_scope(self.rpc, request)
        try:
            flow_id = uuid.UUID(request.match_info["flow_id"])
        except ValueError:
            raise NotFound("no such flow") from None
        query = request.query
        try:
            limit = max(1, min(int(query.get("limit", "50")), MAX_LIMIT))
        except ValueError:
            raise BadRequest("limit must be a whole number", data={"field": "limit"}) from None
        outcome = query.get("outcome")
        if outcome is not None and outcome not in OUTCOMES:
            raise BadRequest(
                f"outcome must be one of {', '.join(sorted(OUTCOMES))}", data={"field": "outcome"}
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
