CREATE INDEX CONCURRENTLY IF NOT EXISTS queue_jobs_failed_idx ON queue_jobs (last_failed_at)
    WHERE attempts > 0 OR dead_at IS NOT NULL
