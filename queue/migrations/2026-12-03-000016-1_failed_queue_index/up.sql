-- The failed jobs of one queue in the lists' order, as the type's index
-- before it (the name's first 200 characters): the lists, the bulk
-- confirmation's count and bulk changes of one queue read only that
-- queue's failed jobs.
CREATE INDEX CONCURRENTLY IF NOT EXISTS queue_jobs_failed_queue_idx
    ON queue_jobs (left(queue, 200), last_failed_at DESC NULLS LAST, id DESC) INCLUDE (dead_at)
    WHERE attempts > 0 OR dead_at IS NOT NULL
