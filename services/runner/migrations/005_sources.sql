-- Sources (one URL, many flows): a URL with its own verification that routes each
-- request to the flows subscribed to it. `definition` holds `auth` (signing secrets
-- sealed, as a flow's) and `dedup`; the bearer token is derived from token_nonce like a
-- flow's (flow_tokens.py), never stored.
CREATE TABLE runner.sources (
    id uuid PRIMARY KEY,
    workspace_id uuid NOT NULL,
    name text NOT NULL,
    definition jsonb NOT NULL,
    version integer NOT NULL DEFAULT 1,
    token_nonce text NOT NULL,
    token_key_id text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sources_workspace ON runner.sources (workspace_id, id);

-- A subscribed flow and its filter (NULL: every request). A flow deleted leaves its
-- route in place, unused (the lookup joins runner.flows), until the route is removed.
CREATE TABLE runner.source_routes (
    source_id uuid NOT NULL REFERENCES runner.sources (id) ON DELETE CASCADE,
    flow_id uuid NOT NULL,
    filter jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source_id, flow_id)
);
CREATE INDEX source_routes_flow ON runner.source_routes (flow_id);
