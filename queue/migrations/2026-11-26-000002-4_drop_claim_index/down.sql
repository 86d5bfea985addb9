CREATE INDEX CONCURRENTLY IF NOT EXISTS queue_jobs_claim_idx ON queue_jobs (queue, priority DESC, id)
    WHERE dead_at IS NULL
