-- Which providers each live worker serves (names and default models, never keys). A
-- worker says it again while it runs; the api accepts a task only for a provider every
-- live worker serves, and so needs no key itself. Expired rows are swept.
CREATE TABLE worker_adverts (
    worker_id  UUID PRIMARY KEY,
    offers     JSONB NOT NULL,
    stopping   BOOLEAN NOT NULL DEFAULT FALSE,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX worker_adverts_by_expiry ON worker_adverts (expires_at);
