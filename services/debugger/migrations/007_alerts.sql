-- One alert per flow: where to POST, the threshold, and the gates that make each kind
-- of notice fire at most once per window (set in the transaction that queues the notice).
CREATE TABLE debugger.alerts (
    flow_id uuid PRIMARY KEY,
    workspace_id uuid NOT NULL,
    url text NOT NULL,
    failure_rate double precision NOT NULL CHECK (failure_rate > 0 AND failure_rate <= 1),
    window_s integer NOT NULL CHECK (window_s > 0),
    min_requests integer NOT NULL CHECK (min_requests >= 1),
    -- whsec_<base64>: needed in clear to sign; never shown again after it is set.
    secret text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    rate_fired_at timestamptz,
    dead_letter_fired_at timestamptz,
    -- Dead-lettered rows stored up to this time have been told about (or predate the alert).
    dead_letter_seen_until timestamptz NOT NULL DEFAULT now()
);
-- The outbox: a notice is a row before it is a request, so that a restart or another
-- replica delivers it (retries keep its id, the receivers' idempotency key).
CREATE TABLE debugger.alert_notices (
    id text PRIMARY KEY,
    flow_id uuid NOT NULL REFERENCES debugger.alerts (flow_id) ON DELETE CASCADE,
    type text NOT NULL,
    body text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- A sender holds a notice until then while its request is in flight; past it (the
    -- sender died) another sender takes it.
    claimed_until timestamptz,
    delivered_at timestamptz,
    given_up_at timestamptz,
    last_status integer,
    last_error text
);
CREATE INDEX alert_notices_due ON debugger.alert_notices (next_attempt_at)
    WHERE delivered_at IS NULL AND given_up_at IS NULL;
CREATE INDEX alert_notices_flow ON debugger.alert_notices (flow_id, created_at DESC);
-- Dead-lettered runs (rank 2, failed) of a flow by time stored: few rows, so a small
-- index, and the dead-letter check never scans a flow's other requests.
CREATE INDEX requests_dead_lettered ON debugger.requests (flow_id, stored_at)
    WHERE source_rank = 2 AND outcome = 'failed';
