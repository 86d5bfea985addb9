DROP INDEX queue_jobs_scheduled_idx;
DROP INDEX queue_jobs_ready_idx;
CREATE INDEX queue_jobs_claim_idx ON queue_jobs (queue, priority DESC, id) WHERE dead_at IS NULL;
ALTER TABLE queue_jobs DROP COLUMN scheduled;
