"""Completion callbacks of async runs (`webhook.callback`): the runner's own work queue
(`CallbackRequested` on `flowhooks.runner.callbacks`, parked in the wait ladder between
attempts) and what the debugger stores of each attempt (`callback.attempted`). See
services/runner/callbacks.py."""

from datetime import datetime

from pydantic import BaseModel

from shared.schemas.vocabulary import CallbackState


class CallbackRequested(BaseModel):
    """One callback on its way: everything an attempt needs, so that no attempt reads
    the database. The state of the retries lives in the body (validated like every
    message), not in headers: the runner publishes the message again at each step."""

    # The Standard Webhooks `webhook-id`: the same for every attempt (and for a callback
    # enqueued twice after a runner crash), the receiver's idempotency key.
    webhook_id: str
    request_id: str
    flow_id: str
    workspace_id: str
    url: str
    # The flow's callback secret, sealed (shared/secret_box.py, AAD = the workspace id):
    # only a holder of FLOWHOOKS_WEBHOOK_SECRETS_KEY (the runner) can sign with it.
    sealed_secret: str
    # The JSON body POSTed, built once: every attempt sends the same bytes.
    payload: str
    # The attempt this message is for (1 for the first).
    attempt: int = 1
    # When the callback was enqueued: no attempt starts later than `give_up` after it.
    first_at: datetime
    # Not attempted before this time: a message back from a wait step before it is
    # parked again (services/runner/callbacks.py, "the ladder").
    due_at: datetime
    # The run's W3C trace context (shared/tracing.py): each attempt is a span of the
    # run's trace, and the receiver gets its `traceparent`.
    trace: dict[str, str] = {}


class CallbackAttempted(BaseModel):
    """runner -> debugger (`callback.attempted`): one delivery attempt and what follows."""

    # This attempt's own id (the debugger's row id: a redelivered event is stored once).
    id: str
    webhook_id: str
    request_id: str
    flow_id: str
    workspace_id: str
    attempt: int
    at: datetime
    status_code: int | None = None
    error: str | None = None
    # None: no further attempt (delivered, stopped by 410 Gone, or given up).
    next_attempt_at: datetime | None = None
    state: CallbackState
