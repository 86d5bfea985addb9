-- Periodic jobs: one row per schedule any runner has declared. A tick is
-- enqueued by the runner whose transaction moves `last_tick` past it (and
-- inserts the job in the same transaction), so each tick is enqueued once
-- across every runner and host, and only once the job is stored.
CREATE TABLE queue_schedules (
    name       TEXT        PRIMARY KEY CHECK (name <> ''),
    cron       TEXT        NOT NULL,
    time_zone  TEXT        NOT NULL,
    -- The latest tick enqueued (or skipped, for a schedule that skips missed ticks).
    last_tick  TIMESTAMPTZ,
    -- The next tick, as the runner that last wrote the row computed it.
    next_tick  TIMESTAMPTZ,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- The schedules each runner declares, so status can tell a schedule no
-- live runner declares any more (removed from the code: it has stopped).
ALTER TABLE queue_runners ADD COLUMN schedules TEXT[] NOT NULL DEFAULT '{}';
