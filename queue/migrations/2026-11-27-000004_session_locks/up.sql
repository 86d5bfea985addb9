-- Workers hold each claimed job under a session-level advisory lock (not a
-- row lock in an open transaction), so completions commit every few
-- milliseconds without releasing the rest of a batch. What survives a
-- worker that dies tells the others what happened.

-- Each worker's lock session has a number, and holds an advisory lock on it
-- for its whole life: a session whose number can be locked by another has
-- ended.
CREATE SEQUENCE queue_lock_sessions AS integer CYCLE;

-- Each lock session's latest claim: the jobs it took. When the session has
-- ended, a runner's reaper marks those still there `suspect` and deletes the
-- row. Released jobs are taken off the list; completed ones are gone anyway.
-- Unlogged: written at every claim, and needed only across the death of a
-- worker, not of the server (which ends every session and empties it; the
-- next death of a job that kills its worker is then charged one later).
CREATE UNLOGGED TABLE queue_claims (
    holder     INTEGER     PRIMARY KEY,
    jobs       BIGINT[]    NOT NULL,
    claimed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A suspect job was held by a session that ended without releasing it: its
-- worker may have died running it. It runs carefully: `running_by` names
-- its worker before it starts, and is cleared when the run's outcome is
-- recorded. A free job with `running_by` set killed (or lost) its worker,
-- and that counts as a failed attempt. Jobs that have failed before run
-- carefully too.
ALTER TABLE queue_jobs
    ADD COLUMN suspect BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN running_by TEXT;

-- Bumped by every worker after a write that ends a claim has committed and
-- before it releases the job's lock. A claim that sees it unchanged across
-- its lock scan knows no job it locked was completed or failed meanwhile.
CREATE SEQUENCE queue_lock_releases;

-- Each runner's poll interval: a runner not seen for three of its intervals
-- (and at least 2 s) has died, and the living remove its row.
ALTER TABLE queue_runners ADD COLUMN poll_interval_ms INTEGER NOT NULL DEFAULT 1000;
