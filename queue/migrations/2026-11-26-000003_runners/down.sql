DROP TABLE queue_runners;
