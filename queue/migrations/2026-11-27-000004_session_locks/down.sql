ALTER TABLE queue_jobs DROP COLUMN running_by;
DROP TABLE queue_claims;
