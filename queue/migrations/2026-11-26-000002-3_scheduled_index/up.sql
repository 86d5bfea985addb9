CREATE INDEX CONCURRENTLY IF NOT EXISTS queue_jobs_scheduled_idx ON queue_jobs (run_at)
    WHERE dead_at IS NULL AND scheduled
