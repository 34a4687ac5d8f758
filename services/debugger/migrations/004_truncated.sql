-- What was cut to the debugger's size caps, with the original sizes in bytes
-- ({"response_body": 10485760, ...}); {"reduced": true, ...} for a row PostgreSQL
-- refused and that is stored without its contents. NULL when everything is whole.
ALTER TABLE debugger.requests ADD COLUMN truncated jsonb;
