ALTER INDEX IF EXISTS queue_jobs_ready_idx RENAME TO queue_jobs_ready_unkeyed_idx;
