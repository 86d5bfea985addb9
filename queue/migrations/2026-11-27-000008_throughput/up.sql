-- Jobs ended per minute and queue, added up by the runners (each adds what
-- it ran since its last report, every poll interval), for the dashboard's
-- throughput chart. Rows older than a day are deleted by the runners.
CREATE TABLE queue_throughput (
    minute    TIMESTAMPTZ NOT NULL,
    queue     TEXT        NOT NULL,
    completed BIGINT      NOT NULL DEFAULT 0,
    failed    BIGINT      NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, queue)
);
