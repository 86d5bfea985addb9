-- The job types each runner registers: a runner claims only those, so
-- during a rolling deploy an old binary leaves a new type's jobs to the
-- new one, and `skiplock status` can say when no live runner knows a type.
ALTER TABLE queue_runners ADD COLUMN job_types TEXT[] NOT NULL DEFAULT '{}';
