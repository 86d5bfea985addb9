ALTER TABLE queue_jobs DROP COLUMN unique_key;
