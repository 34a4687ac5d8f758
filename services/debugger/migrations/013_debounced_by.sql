-- A request not run because a later one of its burst ran in its place (outcome
-- `debounced`, webhook.debounce) names that request.
ALTER TABLE debugger.requests ADD COLUMN debounced_by text;
