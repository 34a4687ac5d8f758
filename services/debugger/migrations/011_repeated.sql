-- Why a run was run again (its worker process, or its runner, stopped while it ran, so
-- its side effects may have happened twice); NULL: it ran once. From RunResult.repeated.
ALTER TABLE debugger.requests ADD COLUMN repeated text;
