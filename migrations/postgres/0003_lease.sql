-- Who runs a task right now: the worker instance, the queue message it runs it for, and
-- until when (the database's clock, so workers' clocks never matter). A second delivery
-- of the same message (JetStream redelivers it when heartbeats could not reach NATS)
-- must leave that message alone, or the task would be lost with its only job.
ALTER TABLE tasks
    ADD COLUMN holder      UUID,
    ADD COLUMN holder_job  BIGINT,
    ADD COLUMN lease_until TIMESTAMPTZ;
