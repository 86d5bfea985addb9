-- Paused queues: no runner claims their jobs (jobs already running finish).
-- Kept here, not in runners, so a pause survives restarts and deploys.
CREATE TABLE queue_pauses (
    queue     TEXT        PRIMARY KEY CHECK (queue <> ''),
    paused_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
