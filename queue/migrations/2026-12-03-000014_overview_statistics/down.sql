DROP STATISTICS IF EXISTS queue_jobs_overview_stats;
