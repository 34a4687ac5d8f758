-- Completion callbacks of async runs: one row per delivery attempt, from the runner's
-- `callback.attempted` events (services/debugger/callbacks.py). No foreign key to
-- requests: the attempts travel on their own queue and may be stored before the run.
CREATE TABLE debugger.callback_attempts (
    -- The attempt event's id: a redelivered event is stored once.
    id text PRIMARY KEY,
    request_id text NOT NULL,
    webhook_id text NOT NULL,
    flow_id uuid NOT NULL,
    workspace_id uuid NOT NULL,
    attempt integer NOT NULL CHECK (attempt >= 1),
    at timestamptz NOT NULL,
    status_code integer,
    error text,
    next_attempt_at timestamptz,
    state text NOT NULL CHECK (state IN ('delivering', 'delivered', 'failed'))
);
CREATE INDEX callback_attempts_request ON debugger.callback_attempts (request_id, at, attempt);
CREATE INDEX callback_attempts_age ON debugger.callback_attempts (at);
