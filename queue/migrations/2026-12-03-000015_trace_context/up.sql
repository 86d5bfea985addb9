-- The W3C trace context (`traceparent`) of the span that enqueued a job,
-- when the application traces with OpenTelemetry (feature
-- `opentelemetry`): the job's runs continue that trace. A column without
-- a default: added to the catalog only, no row rewritten.
ALTER TABLE queue_jobs ADD COLUMN IF NOT EXISTS traceparent TEXT;
