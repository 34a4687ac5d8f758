-- Sources (one URL, many flows): each run a source's request was fanned out to names
-- that request, so the debugger links the two both ways (the request's `runs`).
ALTER TABLE debugger.requests ADD COLUMN source_request_id text;
CREATE INDEX requests_source_request ON debugger.requests (source_request_id)
    WHERE source_request_id IS NOT NULL;
