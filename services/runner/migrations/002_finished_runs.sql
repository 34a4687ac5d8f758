-- Requests whose outcome the runner has recorded (run.finished confirmed). A batch of
-- StartRuns that the broker delivers again (its runner died) runs only the requests
-- not in here. Kept for FLOWHOOKS_RUNNER_FINISHED_KEEP_S, then pruned.
CREATE TABLE runner.finished_runs (
    request_id text PRIMARY KEY,
    finished_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX finished_runs_age ON runner.finished_runs (finished_at);
