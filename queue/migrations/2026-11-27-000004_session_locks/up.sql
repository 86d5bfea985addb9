-- Workers hold each claimed job under a session-level advisory lock (not a
-- row lock in an open transaction), so completions commit every few
-- milliseconds without releasing the rest of a batch. What survives a worker
-- that dies tells the next claimer what happened:

-- Each lock session's latest claim: the jobs it took. A job that another
-- worker then gets the lock of while it is listed here was abandoned (its
-- holder died or lost its session holding it), so it runs carefully.
-- Released jobs are taken off the list; completed ones are deleted anyway.
CREATE TABLE queue_claims (
    holder     TEXT        PRIMARY KEY,
    jobs       BIGINT[]    NOT NULL,
    claimed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Set just before a careful run starts (a retry, or an abandoned job), and
-- cleared when the run's outcome is recorded. Set on a free job: the worker
-- running it died, and that counts as a failed attempt.
ALTER TABLE queue_jobs ADD COLUMN running_by TEXT;
