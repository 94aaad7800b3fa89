-- Usage per task, kept on the task row: every append adds the agent_usage events of its
-- batch, in the same statement as the fence, so the history lists what each task cost
-- without reading its log. Tasks from before this migration get their sums from their logs.
--
-- The partial index finds the few events the usage page aggregates (one agent_usage and
-- one ending per agent attempt) among a task's many agent_token events. Queries repeat its
-- predicate word for word (store::AGENT_OUTCOMES) so that both databases can use it.

ALTER TABLE tasks
    ADD COLUMN usage_input_tokens        BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN usage_output_tokens       BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN usage_cost_usd            DOUBLE PRECISION NOT NULL DEFAULT 0,
    ADD COLUMN usage_unreported_attempts BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN usage_unpriced_attempts   BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN usage_simulated_attempts  BIGINT NOT NULL DEFAULT 0;

CREATE INDEX task_events_agent_outcomes ON task_events (task_id)
    WHERE type IN ('agent_usage', 'agent_complete', 'agent_error', 'agent_cancelled');

UPDATE tasks t SET
    usage_input_tokens        = u.input_tokens,
    usage_output_tokens       = u.output_tokens,
    usage_cost_usd            = u.cost_usd,
    usage_unreported_attempts = u.unreported,
    usage_unpriced_attempts   = u.unpriced,
    usage_simulated_attempts  = u.simulated
FROM (
    SELECT task_id,
           COALESCE(sum(CAST(data->>'inputTokens' AS BIGINT)), 0) AS input_tokens,
           COALESCE(sum(CAST(data->>'outputTokens' AS BIGINT)), 0) AS output_tokens,
           COALESCE(sum(CAST(data->>'costUsd' AS DOUBLE PRECISION)), 0) AS cost_usd,
           count(*) FILTER (WHERE data->>'inputTokens' IS NULL AND data->>'outputTokens' IS NULL) AS unreported,
           count(*) FILTER (WHERE data->>'costUsd' IS NULL) AS unpriced,
           count(*) FILTER (WHERE data->>'source' = 'simulated') AS simulated
    FROM task_events
    WHERE type IN ('agent_usage', 'agent_complete', 'agent_error', 'agent_cancelled')
      AND type = 'agent_usage'
    GROUP BY task_id
) u
WHERE u.task_id = t.id;
