-- Ops filter a flow's requests by outcome ("show me the failures"): without this index
-- such a filter scans all of the flow's rows (150 ms at 200,000 rows; bench.debugger).
CREATE INDEX requests_flow_outcome
    ON debugger.requests (flow_id, outcome, received_at DESC, id DESC);
