-- The debugger's own copy of which workspace owns each flow (from flow.changed), so
-- that another workspace's flow answers 404 even before it has requests.
CREATE TABLE debugger.flows (
    flow_id uuid PRIMARY KEY,
    workspace_id uuid NOT NULL,
    version integer NOT NULL,
    deleted boolean NOT NULL DEFAULT false
);

-- A replayed request points at the one it replays.
ALTER TABLE debugger.requests ADD COLUMN replay_of text;

-- Retention by age scans this index instead of the table.
CREATE INDEX requests_received_at ON debugger.requests (received_at);
