-- Jobs enqueued for later before the `scheduled` column existed. Row locks
-- only: enqueues and claims go on meanwhile. (Run again on a schema that
-- had it already, it finds only jobs whose time has not come.)
UPDATE queue_jobs SET scheduled = true
WHERE run_at > now() AND dead_at IS NULL AND NOT scheduled;
