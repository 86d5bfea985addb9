DROP FUNCTION IF EXISTS queue_claim_keyed(text, integer, bigint[], text[], text);
ALTER TABLE queue_jobs DROP COLUMN IF EXISTS max_concurrent;
ALTER TABLE queue_jobs DROP COLUMN IF EXISTS concurrency_key;
