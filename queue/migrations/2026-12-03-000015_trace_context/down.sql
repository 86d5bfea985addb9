ALTER TABLE queue_jobs DROP COLUMN IF EXISTS traceparent;
