-- Statistics of how often each queue, job type and state occur together,
-- which ANALYZE (and autovacuum's) keeps: the dashboard's overview reads
-- its counts of ready jobs from them once a queue holds more than it
-- counts exactly (a `count(*)` of millions of rows takes seconds). Taking
-- it waits on no writer (a SHARE UPDATE EXCLUSIVE lock) and rewrites
-- nothing. Expressions in statistics need PostgreSQL 14.
CREATE STATISTICS IF NOT EXISTS queue_jobs_overview_stats (mcv)
    ON queue, job_type, scheduled, (dead_at IS NULL) FROM queue_jobs;
