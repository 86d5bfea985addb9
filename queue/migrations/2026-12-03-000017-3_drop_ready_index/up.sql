-- The ready index that held every ready job. Runners of earlier versions
-- claimed through it: from here on they read their queue in another order
-- and sort it, so replace them promptly (see the README's upgrade notes).
DROP INDEX CONCURRENTLY IF EXISTS queue_jobs_ready_idx
