-- One row per job that has not completed yet. A completed job is deleted.
CREATE TABLE queue_jobs (
    id              BIGSERIAL PRIMARY KEY,
    -- The stable name of the job type (`Job::JOB_TYPE`), the key to its handler.
    job_type        TEXT        NOT NULL CHECK (job_type <> ''),
    queue           TEXT        NOT NULL DEFAULT 'default' CHECK (queue <> ''),
    -- Higher runs first.
    priority        SMALLINT    NOT NULL DEFAULT 0,
    payload         JSONB       NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The job is not claimed before this time (a delay, or the next retry).
    run_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Failed attempts so far (a crash mid-job is not counted: nothing recorded it).
    attempts        INTEGER     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    first_failed_at TIMESTAMPTZ,
    last_failed_at  TIMESTAMPTZ,
    last_error      TEXT,
    -- Set when the job is dead: kept for an operator, never claimed again.
    dead_at         TIMESTAMPTZ
);

-- The claim path: live jobs of one queue in claim order.
CREATE INDEX queue_jobs_claim_idx ON queue_jobs (queue, priority DESC, id)
    WHERE dead_at IS NULL;

-- Operators list failing and dead jobs.
CREATE INDEX queue_jobs_failed_idx ON queue_jobs (last_failed_at)
    WHERE attempts > 0 OR dead_at IS NOT NULL;
