-- auth owns workspaces, personal access tokens, and its own copy of every flow's
-- access state (filled from the runner's flow.changed events).
CREATE TABLE auth.workspaces (
    id uuid PRIMARY KEY,
    name text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE auth.access_tokens (
    id uuid PRIMARY KEY,
    workspace_id uuid NOT NULL REFERENCES auth.workspaces (id),
    name text NOT NULL,
    -- SHA-256 of the secret; the secret itself is shown once and never stored.
    token_hash text NOT NULL UNIQUE,
    -- The first characters of the secret, so a user can tell tokens apart.
    display_prefix text NOT NULL,
    scopes text[] NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    revoked_at timestamptz
);
CREATE INDEX access_tokens_workspace ON auth.access_tokens (workspace_id, created_at);

CREATE TABLE auth.flow_access (
    flow_id uuid PRIMARY KEY,
    workspace_id uuid NOT NULL,
    version integer NOT NULL,
    token_hash text NOT NULL,
    settings jsonb NOT NULL,
    -- A deleted flow keeps a row (a tombstone) so an older event cannot revive it.
    deleted boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()
);
