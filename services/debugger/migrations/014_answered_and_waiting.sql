-- When a `respond` step answered the sender before the run ended (RunResult.answered_at;
-- NULL: answered at the end), and when a run stored by a `delay` step resumes (outcome
-- `waiting`; NULL otherwise).
ALTER TABLE debugger.requests ADD COLUMN answered_at timestamptz;
ALTER TABLE debugger.requests ADD COLUMN resume_at timestamptz;
