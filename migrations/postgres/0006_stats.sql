-- The reference analytics consumer (`troupe stats`, stats/): per owner, hour, agent role
-- and model, what agent attempts did. It reads the event stream and counts each event
-- once: `stats_cursors` holds, per task, the seq up to which the task's log is counted,
-- moved in the same transaction as the counts it adds.

CREATE TABLE stats_cursors (
    task_id  UUID PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
    owner_id UUID NOT NULL,
    -- The route the task asked for (task_created): attempts are counted under it.
    provider TEXT NOT NULL,
    model    TEXT NOT NULL,
    seq      BIGINT NOT NULL CHECK (seq >= 0)
);

-- `model` is the model's name, or '' for the provider's default. Attempts, outcomes and
-- durations count under the route the task asked for; calls, tokens and cost under the
-- model that answered (they differ only after a failover).
CREATE TABLE stats_hourly (
    owner_id      UUID NOT NULL,
    hour          TIMESTAMPTZ NOT NULL,
    role          TEXT NOT NULL,
    provider      TEXT NOT NULL,
    model         TEXT NOT NULL,
    attempts      BIGINT NOT NULL DEFAULT 0,
    successes     BIGINT NOT NULL DEFAULT 0,
    failures      BIGINT NOT NULL DEFAULT 0,
    cancellations BIGINT NOT NULL DEFAULT 0,
    duration_ms   BIGINT NOT NULL DEFAULT 0,
    calls         BIGINT NOT NULL DEFAULT 0,
    input_tokens  BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    cost_usd      DOUBLE PRECISION NOT NULL DEFAULT 0,
    PRIMARY KEY (owner_id, hour, role, provider, model)
);

-- Attempt durations as a histogram (bucket: see stats/src/fold.rs), for percentiles.
CREATE TABLE stats_durations (
    owner_id UUID NOT NULL,
    hour     TIMESTAMPTZ NOT NULL,
    role     TEXT NOT NULL,
    provider TEXT NOT NULL,
    model    TEXT NOT NULL,
    bucket   INTEGER NOT NULL,
    count    BIGINT NOT NULL,
    PRIMARY KEY (owner_id, hour, role, provider, model, bucket)
);
