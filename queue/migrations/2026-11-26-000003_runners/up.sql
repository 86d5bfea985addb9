-- Runners announce themselves here (the wake-up thread, every poll
-- interval), with the jobs they are running, so operators and monitors can
-- tell running jobs from waiting ones and notice when no worker is alive.
CREATE TABLE queue_runners (
    id           TEXT        PRIMARY KEY,
    hostname     TEXT        NOT NULL,
    pid          INTEGER     NOT NULL,
    queues       TEXT[]      NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    running      BIGINT[]    NOT NULL DEFAULT '{}'
);
