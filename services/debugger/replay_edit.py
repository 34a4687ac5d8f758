"""What one replay sends: the stored request, edited if asked (`replay_request`),
and how it is sent (`Replayer`). Used by `POST /v1/requests/{id}/replay` and by bulk
replay jobs; the rules are in `replays.py`'s docstring."""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from shared import tracing
from shared.errors import BadRequest
from shared.messaging.runner_client import RunnerClient
from shared.redaction import REDACTED
from shared.schemas.runs import CURRENT_VERSION, RunResult, StartRun, WebhookRequest
from shared.schemas.vocabulary import Outcome

_NO_BODY = object()


@dataclass(frozen=True)
class Edit:
    """What a replay changes (`body` is `_NO_BODY` when not given: null is a body)."""

    body: Any = _NO_BODY
    headers: dict[str, str | None] | None = None
    force: bool = False


def replay_options(document: Any, fields: frozenset[str]) -> tuple[dict[str, Any], bool]:
    """A replay call's JSON body (absent: no options) as an object of `fields` only, and
    its `force` flag."""
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise BadRequest("the body must be a JSON object")
    unknown = set(document) - fields - {"force"}
    if unknown:
        field = sorted(unknown)[0]
        raise BadRequest(f"unknown field {field!r}", data={"field": field})
    force = document.get("force", False)
    if not isinstance(force, bool):
        raise BadRequest("force must be true or false", data={"field": "force"})
    return document, force


def parse_edit(document: Any) -> Edit:
    document, force = replay_options(document, frozenset({"body", "headers"}))
    headers = document.get("headers")
    if headers is not None:
        if not isinstance(headers, dict) or not all(
            isinstance(value, str) or value is None for value in headers.values()
        ):
            raise BadRequest(
                "headers must be an object of names to text (or null to remove one)",
                data={"field": "headers"},
            )
        if any(name.lower() == "authorization" for name in headers):
            # The runner never sees a sender's Authorization; a replay cannot add one.
            raise BadRequest(
                "the authorization header cannot be replayed", data={"field": "headers"}
            )
    return Edit(document.get("body", _NO_BODY), headers, force)


def decode_json(raw: bytes) -> Any:
    """A replay call's JSON body; None when there is none."""
    if not raw.strip():
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("the body is not valid JSON") from None


def _unredacted(values: dict[str, Any]) -> dict[str, Any]:
    """The stored headers or query without the values the debugger redacted."""
    kept: dict[str, Any] = {}
    for name, value in values.items():
        if isinstance(value, list):
            value = [item for item in value if item != REDACTED]
            if value:
                kept[name] = value
        elif value != REDACTED:
            kept[name] = value
    return kept


def replay_request(
    row: dict[str, Any], edit: Edit, request_id: str, received_at: datetime
) -> WebhookRequest:
    """The request a replay sends: the stored one, with the edit applied. BadRequest
    when the stored request cannot be replayed as it is."""
    edited_body = edit.body is not _NO_BODY
    truncated = row.get("truncated") or {}
    if not edited_body:
        if row["outcome"] == Outcome.REJECTED:
            raise BadRequest(
                "a rejected request has no parsed input: give the input to replay as `body`",
                data={"field": "body"},
            )
        if truncated.get("reduced"):
            raise BadRequest(
                "the request was not stored in full (not storable): give its input as `body`",
                data={"field": "body"},
            )
        if "input" in truncated:
            raise BadRequest(
                f"the request's input ({truncated['input']} bytes) was stored truncated,"
                " beyond FLOWHOOKS_DEBUGGER_MAX_INPUT_BYTES: give its input as `body`",
                data={"field": "body"},
            )
    query = _unredacted(row["query"] or {})
    headers: dict[str, str] = _unredacted(row["headers"] or {})
    content_type = row["content_type"]
    if edited_body:
        parsed: Any = edit.body
        raw_body = orjson.dumps(edit.body).decode()
        content_type = "application/json"
        headers["content-type"] = content_type
        headers.pop("content-length", None)  # the original's length, not this body's
    else:
        parsed = row["input"]
        raw_body = row["raw_body"]
        if row["method"] == "GET" and parsed == row["query"]:
            parsed = query  # a GET's input is its query: the same redacted values
    for name, value in (edit.headers or {}).items():
        if value is None:
            headers.pop(name.lower(), None)
        else:
            headers[name.lower()] = value
    return WebhookRequest(
        request_id=request_id,
        flow_id=row["flow_id"],
        workspace_id=row["workspace_id"],
        received_at=received_at,
        method=row["method"],
        path=row["path"],
        query=query,
        headers=headers,
        content_type=headers.get("content-type", content_type),
        raw_body=raw_body,
        # The stored body byte for byte (base64 when it was not UTF-8); an edit is JSON.
        raw_body_encoding="utf-8" if edited_body else row.get("raw_body_encoding") or "utf-8",
        input=parsed,
        mode=row["mode"],
        replay_of=row["id"],
    )


class Replayer:
    """Sends one replay and waits for its outcome (shared by the endpoint and the jobs)."""

    def __init__(self, runner: RunnerClient, timeout_s: float) -> None:
        self.runner = runner
        self.timeout_s = timeout_s

    async def run(
        self, request: WebhookRequest, *, force: bool, original_trace: str | None = None
    ) -> RunResult:
        """Raises `Conflict` (the flow is paused and `force` is false), `Timeout`,
        `Unavailable`. `original_trace`: the stored `traceparent` of the original, which
        the replay's own new trace links to."""
        with tracing.span(
            "replay",
            parent={},
            links=[tracing.link_to({"traceparent": original_trace or ""})],
            attributes={
                "flowhooks.request_id": request.request_id,
                "flowhooks.replay_of": request.replay_of or "",
            },
        ):
            start = StartRun(
                request=tracing.handed_on(request),
                flow_version=CURRENT_VERSION,
                # From now, not from received_at: a bulk replay sent again keeps the time
                # of its first attempt (replay_jobs.py).
                deadline=datetime.now(UTC) + timedelta(seconds=self.timeout_s),
                unless_paused=not force,
            )
            return await self.runner.run(start, self.timeout_s)
