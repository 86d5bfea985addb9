ALTER TABLE queue_runners DROP COLUMN poll_interval_ms;
DROP SEQUENCE queue_lock_releases;
ALTER TABLE queue_jobs DROP COLUMN running_by, DROP COLUMN suspect;
DROP TABLE queue_claims;
DROP SEQUENCE queue_lock_sessions;
