-- A request not run because its dedup key was seen (outcome `duplicate`) names the
-- first request; the run's response headers, for the ingress's status URL.
ALTER TABLE debugger.requests ADD COLUMN duplicate_of text;
ALTER TABLE debugger.requests ADD COLUMN response_headers jsonb;
