-- The ready jobs that have a concurrency key, by queue and key, each key's
-- in claim order: the keyed claim (`queue_claim_keyed`) walks the keys of
-- a queue by skipping from one to the next, and takes each key's head.
CREATE INDEX CONCURRENTLY IF NOT EXISTS queue_jobs_keyed_ready_idx
    ON queue_jobs (queue, concurrency_key, priority DESC, id)
    WHERE dead_at IS NULL AND NOT scheduled AND concurrency_key IS NOT NULL
