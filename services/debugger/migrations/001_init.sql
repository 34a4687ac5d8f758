-- Every request to a non-paused flow, with its run. One row per request id: events
-- are upserted, so redeliveries never duplicate.
CREATE TABLE debugger.requests (
    id text PRIMARY KEY,
    flow_id uuid NOT NULL,
    workspace_id uuid NOT NULL,
    received_at timestamptz NOT NULL,
    method text NOT NULL,
    path text NOT NULL,
    query jsonb NOT NULL,
    headers jsonb NOT NULL,
    content_type text,
    raw_body text NOT NULL,
    raw_body_truncated boolean NOT NULL DEFAULT false,
    input jsonb,
    mode text NOT NULL,
    outcome text NOT NULL,
    status_code integer,
    response_content_type text,
    response_body text,
    error text,
    steps jsonb NOT NULL DEFAULT '[]',
    started_at timestamptz,
    finished_at timestamptz,
    -- Which kind of event wrote the row: a run's own outcome (3) wins over what the
    -- broker dead-lettered (2), which wins over progress (running 1, queued 0), whatever
    -- order they arrive in.
    source_rank smallint NOT NULL,
    stored_at timestamptz NOT NULL DEFAULT now()
);
-- The listing: a flow's requests newest first, keyset-paginated on (received_at, id).
CREATE INDEX requests_flow_listing ON debugger.requests (flow_id, received_at DESC, id DESC);
