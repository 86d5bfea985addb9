ALTER TABLE queue_jobs RESET (fillfactor);
ALTER TABLE queue_jobs DROP COLUMN running_by, DROP COLUMN locked_by;
