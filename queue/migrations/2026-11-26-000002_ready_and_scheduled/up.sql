-- Jobs waiting for their run_at (delayed, or a retry after a backoff) are
-- kept apart from ready ones, so the claim's index holds only ready jobs:
-- its cost does not grow with the number of jobs scheduled for later.
-- A due scheduled job is promoted (scheduled = false) by the runners.
--
-- A column with a constant default is added without rewriting the table;
-- the backfill and the indexes follow in migrations of their own, so that
-- no statement holds the table's exclusive lock for longer than a moment
-- (see queue/src/migrate.rs).
ALTER TABLE queue_jobs ADD COLUMN scheduled BOOLEAN NOT NULL DEFAULT false;
