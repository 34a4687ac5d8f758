-- The raw body byte for byte (issue 12): `raw_body` holds the body's UTF-8 text, or,
-- with 'base64', its bytes in base64 (a body that is not UTF-8, or holds NUL, which a
-- text column cannot). Rows from before were decoded with replacement: 'utf-8'.
ALTER TABLE debugger.requests
    ADD COLUMN raw_body_encoding text NOT NULL DEFAULT 'utf-8'
    CHECK (raw_body_encoding IN ('utf-8', 'base64'));
