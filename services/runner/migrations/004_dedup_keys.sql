-- Deduplication keys (`webhook.dedup`): the first request of each (flow, key) within
-- the window, and its answer once its run is done, for the duplicates. The runner owns
-- it because the ingress keeps no database and the runner writes the result anyway;
-- the primary key decides the first atomically across every replica.
CREATE TABLE runner.dedup_keys (
    flow_id text NOT NULL,
    key text NOT NULL,
    first_request_id text NOT NULL,
    state text NOT NULL CHECK (state IN ('pending', 'done')),
    status_code integer,
    content_type text,
    body text,
    headers jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    -- A pending first that has no result by then lost its run (a sync message that
    -- expired unread): a later request takes the key over. NULL: never (async).
    lease_until timestamptz,
    PRIMARY KEY (flow_id, key)
);
CREATE INDEX dedup_keys_expiry ON runner.dedup_keys (expires_at);
