-- Jobs waiting for their run_at (delayed, or a retry after a backoff) are
-- kept apart from ready ones, so the claim's index holds only ready jobs:
-- its cost does not grow with the number of jobs scheduled for later.
-- A due scheduled job is promoted (scheduled = false) by the runners.
ALTER TABLE queue_jobs ADD COLUMN scheduled BOOLEAN NOT NULL DEFAULT false;
UPDATE queue_jobs SET scheduled = true WHERE run_at > now() AND dead_at IS NULL;

DROP INDEX queue_jobs_claim_idx;
CREATE INDEX queue_jobs_ready_idx ON queue_jobs (queue, priority DESC, id)
    WHERE dead_at IS NULL AND NOT scheduled;
CREATE INDEX queue_jobs_scheduled_idx ON queue_jobs (run_at)
    WHERE dead_at IS NULL AND scheduled;
