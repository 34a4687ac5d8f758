-- The flow-token key ring (issue 11).
-- The key that was current when the flow's nonce was picked: the tokens of that key and
-- of the keys current since then are the ones that may have been shown. NULL: picked
-- before the ring existed (every key of the ring counts).
ALTER TABLE runner.flows ADD COLUMN token_key_id text;

-- The ring the runners announced last (its fingerprint, never a key). A runner starting
-- with another ring bumps the generation and republishes every flow's hashes; until
-- that is done `announced` stays false, so a runner that died half-way is followed by
-- one that does it again.
CREATE TABLE runner.token_ring (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    fingerprint text NOT NULL,
    generation bigint NOT NULL,
    announced boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT now()
);
