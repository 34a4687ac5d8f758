-- The page lists flows by name with their status (live/paused), from `flow.changed`
-- (and the runner's read-through answer). NULL until the next change of a flow
-- stored before this (the page shows its id then).
ALTER TABLE debugger.flows ADD COLUMN name text;
ALTER TABLE debugger.flows ADD COLUMN status text;
