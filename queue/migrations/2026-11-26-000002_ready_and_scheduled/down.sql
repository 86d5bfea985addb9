ALTER TABLE queue_jobs DROP COLUMN scheduled;
