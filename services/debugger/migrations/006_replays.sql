-- A request's replays (GET /v1/requests/{id} lists them; a bulk job counts them).
CREATE INDEX requests_replay_of ON debugger.requests (replay_of) WHERE replay_of IS NOT NULL;

-- Bulk replay jobs (POST /v1/flows/{id}/replays). The debugger owns them: any replica
-- may create one; one replica at a time works it, holding the lease (lease_owner,
-- lease_until, renewed by a heartbeat; taken over once it lapses), so a job survives
-- a restart of the debugger that worked it.
CREATE TABLE debugger.replay_jobs (
    id uuid PRIMARY KEY,
    flow_id uuid NOT NULL,
    workspace_id uuid NOT NULL,
    filter jsonb NOT NULL,
    force boolean NOT NULL,
    -- running, finished, cancelled
    status text NOT NULL,
    -- Why a job stopped before its end (cancelled by a caller, the flow paused).
    reason text,
    total integer NOT NULL,
    done integer NOT NULL DEFAULT 0,
    succeeded integer NOT NULL DEFAULT 0,
    failed integer NOT NULL DEFAULT 0,
    -- Originals that could not be replayed (deleted by retention, rejected, truncated).
    skipped integer NOT NULL DEFAULT 0,
    -- Every item up to this seq is settled: where a resumed job starts looking.
    cursor integer NOT NULL DEFAULT 0,
    lease_owner text,
    lease_until timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
-- At most one running job per flow, enforced by the database (two replicas creating
-- at once: one gets a unique violation, answered 409).
CREATE UNIQUE INDEX replay_jobs_one_running ON debugger.replay_jobs (flow_id)
    WHERE status = 'running';
CREATE INDEX replay_jobs_running ON debugger.replay_jobs (created_at) WHERE status = 'running';

-- What a job replays, fixed when it is created (its replays, newer and matching the
-- same filter, are never picked up again), in arrival order. `outcome` is NULL until
-- the item is settled: the replay's outcome, or `skipped`. The replay's request id is
-- derived from (job, original), so an item sent twice is still one record.
CREATE TABLE debugger.replay_items (
    job_id uuid NOT NULL REFERENCES debugger.replay_jobs (id) ON DELETE CASCADE,
    seq integer NOT NULL,
    request_id text NOT NULL,
    outcome text,
    PRIMARY KEY (job_id, seq)
);
