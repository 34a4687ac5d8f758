"""Deduplication (`runner.claim_dedup_key`, ingress -> runner) and run status
(`debugger.get_run_status`, ingress -> debugger)."""

from typing import Literal

from pydantic import BaseModel


class ClaimDedupKey(BaseModel):
    """Is `request_id` the first request of `key` for the flow within the window?
    Asked again (same request id) by a sync duplicate that waits for the first."""

    flow_id: str
    key: str
    request_id: str
    window_s: int
    # How long the first may hold the key without a result before a later request takes
    # it over (its run was lost: a sync message that expired unread). None: never (async
    # runs are never lost).
    lease_s: float | None


class StoredResult(BaseModel):
    """The first request's answer, as the sender got it."""

    status_code: int
    content_type: str
    body: str
    headers: dict[str, str] = {}


class DedupClaim(BaseModel):
    """`first`: run it. `pending`: a duplicate of `first_request_id`, whose run has not
    finished. `done`: a duplicate, with the first's `result`."""

    state: Literal["first", "pending", "done"]
    first_request_id: str
    result: StoredResult | None = None


class GetRunStatus(BaseModel):
    flow_id: str
    request_id: str


class RunStatus(BaseModel):
    """`unknown`: no such request of this flow (yet). `pending`: queued or running.
    `done`: finished, with its stored answer; `body_truncated` when the debugger kept
    only part of the body (FLOWHOOKS_DEBUGGER_MAX_RESPONSE_BODY_BYTES)."""

    state: Literal["unknown", "pending", "done"]
    outcome: str | None = None
    result: StoredResult | None = None
    body_truncated: bool = False
    body_size: int | None = None
