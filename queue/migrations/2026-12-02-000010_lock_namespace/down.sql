DROP TABLE queue_installation;
