ALTER TABLE queue_runners DROP COLUMN schedules;
DROP TABLE queue_schedules;
