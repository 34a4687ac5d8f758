"""Builders of message schemas for tests: a valid value, in which a test gives only the
fields it is about."""

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

from shared.schemas.runs import WebhookRequest


def webhook_request(body: Any = None, **fields: Any) -> WebhookRequest:
    """A normalised POST with `body` as its JSON input (`{}` without one); fresh ids."""
    body = {} if body is None else body
    values: dict[str, Any] = {
        "request_id": uuid.uuid4().hex,
        "flow_id": str(uuid.uuid4()),
        "workspace_id": str(uuid.uuid4()),
        "received_at": datetime.now(UTC),
        "method": "POST",
        "path": "/",
        "query": {},
        "headers": {},
        "content_type": "application/json",
        "raw_body": orjson.dumps(body).decode(),
        "input": body,
    }
    return WebhookRequest(**{**values, **fields})
