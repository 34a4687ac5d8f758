"""The ingress's per-request messages encoded straight from the request: a `StartRun`
(ingress -> runner) and a `RunProgress` (`request.queued`), with orjson from the
request's fields, without building and serialising a pydantic model per request.

The bytes are what `StartRun(...).model_dump_json()` and `RunProgress(...)` give: the
same keys in the same order, datetimes in UTC with `Z`
(tests/unit/test_ingress_run_messages.py). A request orjson cannot encode (a value it
does not know) goes through the models instead, which also say why it cannot be sent
(`Unencodable`).

A sync run's reply is read as `RunAnswer`: the fields of its `RunResult` the sender's
answer is made of, typed as there; the rest (the step trace, the times) is the
debugger's, and not validated again here."""

from datetime import datetime
from typing import Any

import orjson
from pydantic import BaseModel

from shared.messaging.batching import Unencodable
from shared.schemas.runs import RunProgress, StartRun, WebhookRequest
from shared.schemas.vocabulary import Outcome

# The request's fields in their declared order: a request holding any other set (a
# field added to the schema and not seen here) is encoded by its model.
_REQUEST_FIELDS = tuple(WebhookRequest.model_fields)
_OPTIONS = orjson.OPT_UTC_Z


def _fields(request: WebhookRequest) -> dict[str, Any] | None:
    fields = request.__dict__
    return fields if tuple(fields) == _REQUEST_FIELDS else None


def start_run_json(
    request: WebhookRequest,
    flow_version: int,
    *,
    deadline: datetime | None = None,
    dedup_key: str | None = None,
    accept_on_timeout: bool = False,
    origin: str | None = None,
) -> bytes:
    """`StartRun(request=..., ...)`'s JSON, its other fields at their defaults."""
    fields = _fields(request)
    if fields is not None:
        try:
            return orjson.dumps(
                {
                    "request": fields,
                    "flow_version": flow_version,
                    "deadline": deadline,
                    "unless_paused": False,
                    "dedup_key": dedup_key,
                    "accept_on_timeout": accept_on_timeout,
                    "origin": origin,
                    "parked": 0,
                    "repeated": None,
                    "resume": None,
                },
                option=_OPTIONS,
            )
        except orjson.JSONEncodeError:
            pass
    start = StartRun(
        request=request,
        flow_version=flow_version,
        deadline=deadline,
        dedup_key=dedup_key,
        accept_on_timeout=accept_on_timeout,
        origin=origin,
    )
    return _by_model(start)


def run_progress_json(request: WebhookRequest, at: datetime) -> bytes:
    """`RunProgress(request=..., at=...)`'s JSON (`request.queued`)."""
    fields = _fields(request)
    if fields is not None:
        try:
            return orjson.dumps({"request": fields, "at": at, "resume_at": None}, option=_OPTIONS)
        except orjson.JSONEncodeError:
            pass
    return _by_model(RunProgress(request=request, at=at))


def _by_model(model: StartRun | RunProgress) -> bytes:
    try:
        return model.model_dump_json().encode()
    except ValueError as exc:  # pydantic's serialisation error is one
        raise Unencodable(f"the event cannot be encoded: {str(exc)[:300]}") from None


class RunAnswer(BaseModel):
    """What the ingress reads of a sync run's `RunResult` reply (its other fields are
    ignored): the answer to send, and its outcome for the metrics."""

    outcome: Outcome
    status_code: int
    content_type: str
    body: str
    headers: dict[str, str] = {}
