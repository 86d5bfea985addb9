CREATE INDEX CONCURRENTLY IF NOT EXISTS queue_jobs_ready_idx ON queue_jobs (queue, priority DESC, id)
    WHERE dead_at IS NULL AND NOT scheduled
