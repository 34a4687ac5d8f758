-- The runner owns flow definitions. The webhook token is never stored: it is derived
-- from FLOWHOOKS_RUNNER_TOKEN_KEY and token_nonce (see flow_tokens.py).
CREATE TABLE runner.flows (
    id uuid PRIMARY KEY,
    workspace_id uuid NOT NULL,
    name text NOT NULL,
    status text NOT NULL CHECK (status IN ('draft', 'live', 'paused')),
    definition jsonb NOT NULL,
    version integer NOT NULL DEFAULT 1,
    token_nonce text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX flows_workspace ON runner.flows (workspace_id, id);
