-- Async runs of paced flows (webhook.ordering, concurrency, debounce, throttle, delay_s)
-- waiting for their turn, and those running (leased by one runner replica until
-- `lease_until`; a replica that dies lets its lease lapse and another takes the run
-- over). Every replica's dispatcher claims from here (services/runner/paced_runs.py).
CREATE TABLE runner.paced_runs (
    request_id text PRIMARY KEY,
    seq bigserial NOT NULL,  -- ties of received_at: insertion order
    flow_id text COLLATE "C" NOT NULL,
    workspace_id text COLLATE "C" NOT NULL,
    received_at timestamptz NOT NULL,  -- acceptance at the ingress: the arrival order
    not_before timestamptz NOT NULL,
    order_key text COLLATE "C",
    order_limit integer,
    flow_limit integer,
    throttle_key text COLLATE "C",
    throttle_limit integer,
    throttle_period_s double precision,
    debounce_key text COLLATE "C",
    debounce_period_s double precision,
    debounce_max_s double precision,
    start bytea NOT NULL,  -- the StartRun, as JSON
    lease_until timestamptz,  -- NULL: waiting, never claimed
    leased_by text,
    claims integer NOT NULL DEFAULT 0,
    -- Set on the earlier requests of a debounced burst when its last one is claimed:
    -- they are recorded `debounced`, linked to it, then deleted.
    debounced_by text,
    -- What fair turns are taken between: a run's key (one lane per flow without keys).
    lane text COLLATE "C" GENERATED ALWAYS AS (coalesce(order_key, throttle_key, debounce_key, '')) STORED
);
CREATE INDEX paced_runs_lanes ON runner.paced_runs (flow_id, order_key, received_at, seq);
CREATE INDEX paced_runs_leased_by ON runner.paced_runs (leased_by);
-- Recent starts of throttled keys (webhook.throttle), pruned past their period.
CREATE TABLE runner.paced_starts (
    flow_id text COLLATE "C" NOT NULL,
    throttle_key text COLLATE "C" NOT NULL,
    -- The start counts against its key until then (started_at + period_s).
    counts_until timestamptz NOT NULL
);
CREATE INDEX paced_starts_key ON runner.paced_starts (flow_id, throttle_key, counts_until);
-- When each lane of a flow last had a run claimed: the least recently served lane goes
-- first, so a hot key takes turns with the others instead of going first by arrival.
-- Pruned when idle (forgetting only resets whose turn it is).
CREATE TABLE runner.paced_lanes (
    flow_id text COLLATE "C" NOT NULL,
    lane text COLLATE "C" NOT NULL,
    served_at timestamptz NOT NULL,
    PRIMARY KEY (flow_id, lane)
);
