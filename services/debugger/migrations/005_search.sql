-- Search over the parsed input (`?match=`, jsonb containment `input @> $match`).
-- jsonb_path_ops: smaller and faster than the default operator class, and `@>` is the
-- only operator the search uses. Built in the migration's transaction (it blocks writes
-- to the table while it builds: seconds per million rows on this machine).
CREATE INDEX requests_input_search ON debugger.requests USING gin (input jsonb_path_ops);
