DROP TABLE IF EXISTS queue_dashboard_sessions;
