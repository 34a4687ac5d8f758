"""Deduplication (`runner.claim_dedup_key`, ingress -> runner) and run status
(`debugger.get_run_status`, ingress -> debugger)."""

from datetime import datetime
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel

from shared.schemas.vocabulary import error_answer

if TYPE_CHECKING:
    from shared.errors import ApiError


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
    # `claim`: take the key if it is free. `wait`: a sync duplicate waiting for the first
    # asks again; read only, it never takes the key. `release`: the first was refused
    # before it reached a runner (503, 429): it lets go of the key (contract: a first
    # that failed does not hold its key). A runner that predates `mode` claims.
    mode: Literal["claim", "wait", "release"] = "claim"


class StoredResult(BaseModel):
    """The first request's answer, as the sender got it."""

    status_code: int
    content_type: str
    body: str
    headers: dict[str, str] = {}

    @classmethod
    def of_error(cls, error: "ApiError") -> "StoredResult":
        """An answer that is an error: its envelope (`error_answer`) and headers."""
        status_code, content_type, body = error_answer(error)
        return cls(
            status_code=status_code, content_type=content_type, body=body, headers=error.headers()
        )


class DedupClaim(BaseModel):
    """`first`: run it. `pending`: a duplicate of `first_request_id`, whose run has not
    finished. `done`: a duplicate, with the first's `result`. `released` (to `wait` and
    `release`): nobody holds the key: its first failed, and a failure is never replayed."""

    state: Literal["first", "pending", "done", "released"]
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
    # A `waiting` run's resume time (a `delay` step).
    resume_at: datetime | None = None
