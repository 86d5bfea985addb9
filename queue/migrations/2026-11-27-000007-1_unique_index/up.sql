CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS queue_jobs_unique_idx ON queue_jobs (unique_key)
    WHERE unique_key IS NOT NULL
