-- The same change as migrations/postgres/0004_usage.sql: usage per task on the task row,
-- summed by every append, and the partial index of the events the usage page reads.

ALTER TABLE tasks ADD COLUMN usage_input_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN usage_output_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN usage_cost_usd REAL NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN usage_unreported_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN usage_unpriced_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN usage_simulated_attempts INTEGER NOT NULL DEFAULT 0;

CREATE INDEX task_events_agent_outcomes ON task_events (task_id)
    WHERE type IN ('agent_usage', 'agent_complete', 'agent_error', 'agent_cancelled');

UPDATE tasks SET
    usage_input_tokens        = u.input_tokens,
    usage_output_tokens       = u.output_tokens,
    usage_cost_usd            = u.cost_usd,
    usage_unreported_attempts = u.unreported,
    usage_unpriced_attempts   = u.unpriced,
    usage_simulated_attempts  = u.simulated
FROM (
    SELECT task_id,
           COALESCE(sum(data ->> 'inputTokens'), 0) AS input_tokens,
           COALESCE(sum(data ->> 'outputTokens'), 0) AS output_tokens,
           COALESCE(sum(data ->> 'costUsd'), 0.0) AS cost_usd,
           sum(CASE WHEN data ->> 'inputTokens' IS NULL AND data ->> 'outputTokens' IS NULL THEN 1 ELSE 0 END) AS unreported,
           sum(CASE WHEN data ->> 'costUsd' IS NULL THEN 1 ELSE 0 END) AS unpriced,
           sum(CASE WHEN data ->> 'source' = 'simulated' THEN 1 ELSE 0 END) AS simulated
    FROM task_events
    WHERE type IN ('agent_usage', 'agent_complete', 'agent_error', 'agent_cancelled')
      AND type = 'agent_usage'
    GROUP BY task_id
) AS u
WHERE u.task_id = tasks.id;
