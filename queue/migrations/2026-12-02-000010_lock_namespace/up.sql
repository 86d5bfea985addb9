-- The advisory locks of jobs and lock sessions are per database, while the
-- tables follow search_path: two applications using the queue in two
-- schemas of one database would share lock keys (holder numbers and job
-- ids start at 1 in each). Each installation mixes this number into its
-- keys (see `job_lock!` in queue/src/storage/mod.rs).
--
-- 0 (the keys every runner used before this migration, so that old and new
-- runners agree during a rolling deploy) unless another schema of this
-- database already holds the queue's tables: then a random number. (Two
-- installations that shared a database before this migration get random
-- numbers too: stop their old runners before starting new ones.)
CREATE TABLE queue_installation (
    one       BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
    lock_salt BIGINT  NOT NULL
);
INSERT INTO queue_installation (lock_salt)
SELECT CASE
    WHEN EXISTS (
        SELECT 1 FROM pg_class c
        WHERE c.relname = 'queue_jobs' AND c.relkind IN ('r', 'p')
          AND c.oid <> 'queue_jobs'::regclass)
    THEN ('x' || md5(random()::text || clock_timestamp()::text || pg_backend_pid()::text))::bit(64)::int8
    ELSE 0
END;
