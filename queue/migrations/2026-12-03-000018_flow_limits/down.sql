DROP FUNCTION IF EXISTS queue_claim_flow(text, integer, bigint[], text[], text);
DROP FUNCTION IF EXISTS queue_rate_open(text, text, integer, integer);
DROP FUNCTION IF EXISTS queue_rate_recount(bigint, timestamptz);
DROP FUNCTION IF EXISTS queue_rate_record(text, text, integer, timestamptz);
DROP FUNCTION IF EXISTS queue_rate_span(integer);
DROP TABLE IF EXISTS queue_rate_windows;
DROP TABLE IF EXISTS queue_limits;
ALTER TABLE queue_jobs DROP COLUMN IF EXISTS rate_period_ms;
ALTER TABLE queue_jobs DROP COLUMN IF EXISTS rate_limit;
