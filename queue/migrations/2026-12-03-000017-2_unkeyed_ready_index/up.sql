-- The ready index without the jobs that have a concurrency key (those are
-- in the keyed index): a claim of jobs without a key never walks a
-- tenant's backlog of keyed ones. Built beside the old one, which the
-- next migration drops; the one after names it as the old one was named.
CREATE INDEX CONCURRENTLY IF NOT EXISTS queue_jobs_ready_unkeyed_idx
    ON queue_jobs (queue, priority DESC, id)
    WHERE dead_at IS NULL AND NOT scheduled AND concurrency_key IS NULL
