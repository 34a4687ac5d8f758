"""Turn an incoming webhook into a `WebhookRequest`: the parsed body as JSON, the query,
and the headers (names lower-cased; `authorization` never passes)."""

from collections.abc import Iterable
from datetime import datetime
from typing import Any

import orjson
from multidict import MultiMapping

from shared.errors import BadRequest
from shared.schemas.runs import WebhookRequest

# Never handed to flows, the runner or the debugger.
DROPPED_HEADERS = frozenset({"authorization"})


def parse_json(body: bytes) -> Any:
    """The body as JSON; `{}` for an empty body; `BadRequest` saying what and where."""
    if not body.strip():
        return {}
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # orjson's message names line and column: "... line 1 column 9 (char 8)".
        raise BadRequest(f"the body is not valid JSON: {exc}") from None


def parse_body(content_type: str | None, body: bytes) -> Any:
    return parse_json(body)


def multi_dict(items: Iterable[tuple[str, str]]) -> dict[str, str | list[str]]:
    """Repeated keys become lists, in order."""
    result: dict[str, str | list[str]] = {}
    for key, value in items:
        if key not in result:
            result[key] = value
        else:
            existing = result[key]
            result[key] = [*existing, value] if isinstance(existing, list) else [existing, value]
    return result


def clean_headers(headers: MultiMapping[str]) -> dict[str, str]:
    cleaned: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower in DROPPED_HEADERS:
            continue
        cleaned[lower] = f"{cleaned[lower]}, {value}" if lower in cleaned else value
    return cleaned


def webhook_request(
    *,
    request_id: str,
    flow_id: str,
    workspace_id: str,
    received_at: datetime,
    method: str,
    path: str,
    query: Iterable[tuple[str, str]],
    headers: MultiMapping[str],
    content_type: str | None,
    body: bytes,
    mode: str,
) -> WebhookRequest:
    query_dict = multi_dict(query)
    # GET has no body: its query is the input.
    parsed = query_dict if method == "GET" else parse_body(content_type, body)
    return WebhookRequest(
        request_id=request_id,
        flow_id=flow_id,
        workspace_id=workspace_id,
        received_at=received_at,
        method=method,
        path=path,
        query=query_dict,
        headers=clean_headers(headers),
        content_type=content_type,
        raw_body=body.decode("utf-8", errors="replace"),
        input=parsed,
        mode="async" if mode == "async" else "sync",
    )
