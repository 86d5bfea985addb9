DROP INDEX queue_jobs_unique_idx;
ALTER TABLE queue_jobs DROP COLUMN unique_key;
