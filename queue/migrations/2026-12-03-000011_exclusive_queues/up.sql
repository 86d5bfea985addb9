-- The queues each runner serves with one worker across all runners
-- (`RunnerBuilder::exclusive_queue`), and those of them another runner's
-- worker has, so that this runner's stands by: `skiplock status` shows
-- who runs such a queue and who waits. A small table; constant defaults
-- add the columns without rewriting it.
ALTER TABLE queue_runners ADD COLUMN exclusive TEXT[] NOT NULL DEFAULT '{}';
ALTER TABLE queue_runners ADD COLUMN standby TEXT[] NOT NULL DEFAULT '{}';
