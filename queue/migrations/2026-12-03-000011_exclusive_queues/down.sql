ALTER TABLE queue_runners DROP COLUMN standby;
ALTER TABLE queue_runners DROP COLUMN exclusive;
