-- Runs stopped in a `delay` step (services/runner/delays.py): the StartRun to publish
-- again when `resume_at` comes, carrying the run's state (context, step position,
-- trace). Claimed by any runner with FOR UPDATE SKIP LOCKED, deleted in the transaction
-- that saw the republished copy confirmed by the broker.
CREATE TABLE runner.waiting_runs (
    request_id text PRIMARY KEY,
    workspace_id text NOT NULL,
    resume_at timestamptz NOT NULL,
    start bytea NOT NULL,
    state_bytes integer NOT NULL,
    stored_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX waiting_runs_due ON runner.waiting_runs (resume_at);

-- Per workspace: its waiting runs and their stored bytes, against the bounds
-- (FLOWHOOKS_RUNNER_DELAY_MAX_WAITING_RUNS, FLOWHOOKS_RUNNER_DELAY_MAX_STATE_BYTES).
-- Kept in step with waiting_runs in the same transactions; its row lock also orders a
-- workspace's concurrent stores against its bounds.
CREATE TABLE runner.waiting_totals (
    workspace_id text PRIMARY KEY,
    runs integer NOT NULL,
    state_bytes bigint NOT NULL
);
