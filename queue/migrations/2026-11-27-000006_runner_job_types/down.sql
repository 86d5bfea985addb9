ALTER TABLE queue_runners DROP COLUMN job_types;
