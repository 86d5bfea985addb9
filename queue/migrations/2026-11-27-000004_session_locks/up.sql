-- Workers hold each claimed job under a session-level advisory lock (not a
-- row lock in an open transaction), so completions commit every few
-- milliseconds without releasing the rest of a batch. Two columns survive a
-- worker that dies, so the next claimer knows what happened:
--   locked_by:  the worker that claimed the job and has not released it
--               cleanly. Set on a free job: its worker died (or lost its
--               session) holding it, so it is run carefully (running_by).
--   running_by: set just before a careful run starts (a retry, or a job
--               whose worker died). Set on a free job: the worker running it
--               died, and that counts as a failed attempt.
ALTER TABLE queue_jobs ADD COLUMN locked_by TEXT, ADD COLUMN running_by TEXT;

-- Room on every page, so the claim's write of `locked_by` is a HOT update
-- that touches no index.
ALTER TABLE queue_jobs SET (fillfactor = 80);
