-- What the usage page needs from the stats consumer: how many answered calls were the
-- simulated provider's estimates, reported no tokens (tokens are a floor) or had no
-- price (cost is a floor), and each call's time to its first token as a histogram.
--
-- Counts made before this migration lack these figures, so they are dropped with their
-- cursors and counted again from the logs: `troupe` (embedded) and `troupe stats` both
-- catch up from the store at start.

DELETE FROM stats_durations;
DELETE FROM stats_hourly;
DELETE FROM stats_cursors;

ALTER TABLE stats_hourly ADD COLUMN simulated_calls  BIGINT NOT NULL DEFAULT 0;
ALTER TABLE stats_hourly ADD COLUMN unreported_calls BIGINT NOT NULL DEFAULT 0;
ALTER TABLE stats_hourly ADD COLUMN unpriced_calls   BIGINT NOT NULL DEFAULT 0;

-- Answered calls' time to first token, by the same buckets as stats_durations; counted
-- under the model that answered, as calls are.
CREATE TABLE stats_first_tokens (
    owner_id UUID NOT NULL,
    hour     TIMESTAMPTZ NOT NULL,
    role     TEXT NOT NULL,
    provider TEXT NOT NULL,
    model    TEXT NOT NULL,
    bucket   INTEGER NOT NULL,
    count    BIGINT NOT NULL,
    PRIMARY KEY (owner_id, hour, role, provider, model, bucket)
);
