-- Unique jobs: at most one job per key waits to run. The key is given at
-- enqueue (or derived from the job type and payload for a
-- `#[background_job(unique)]` type); a job gives its key up when a worker
-- claims it, so an identical job enqueued while it runs is stored and runs
-- after it (the running one may have read what the new one must see).
-- Enqueue inserts with ON CONFLICT against the index that the next
-- migration builds: race-free however many enqueue at once.
ALTER TABLE queue_jobs ADD COLUMN unique_key TEXT;
