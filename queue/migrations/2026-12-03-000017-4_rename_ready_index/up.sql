-- The ready index (of jobs without a key) under the name it always had,
-- which the runners, `skiplock reindex` and operators' dashboards know.
-- A rename takes a brief lock that waits on no reader or writer of the
-- table (PostgreSQL 12 and later).
ALTER INDEX IF EXISTS queue_jobs_ready_unkeyed_idx RENAME TO queue_jobs_ready_idx;
