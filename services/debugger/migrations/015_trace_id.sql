-- The OpenTelemetry trace of the request (shared/tracing.py), and the W3C `traceparent`
-- it reached the debugger with (the span that handed it on: the debugger's write and a
-- replay's trace link to it); NULL when traces were off.
ALTER TABLE debugger.requests ADD COLUMN trace_id text;
ALTER TABLE debugger.requests ADD COLUMN trace_parent text;
