-- The flow-token key ring (issue 11): a flow's token is accepted under every key of the
-- runner's ring, so auth keeps one hash per key id, and the ring itself (key ids and
-- end times, never a key) to know which of them still count.
ALTER TABLE auth.flow_access ADD COLUMN token_hashes jsonb NOT NULL DEFAULT '{}'::jsonb;
-- Hashes from before the ring have no key id; they count until a ring is known (the
-- first runner with a ring republishes every flow under its key ids first).
UPDATE auth.flow_access SET token_hashes = jsonb_build_object('', token_hash);

CREATE TABLE auth.token_ring (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    generation bigint NOT NULL,
    -- [{"key_id": ..., "not_after": ... | null}, ...], the current key first.
    keys jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
