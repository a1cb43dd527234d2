-- Blasts, their per-recipient ledger, failures, provider accounts and the suppression list.
CREATE TABLE blasts (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    target TEXT NOT NULL,
    content TEXT NOT NULL,
    from_email TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'draft',
    state_reason TEXT,
    scheduled_at BIGINT,
    keep_message_ids BOOLEAN NOT NULL DEFAULT TRUE,
    materialized_at BIGINT,
    total BIGINT NOT NULL DEFAULT 0,
    sent BIGINT NOT NULL DEFAULT 0,
    failed BIGINT NOT NULL DEFAULT 0,
    skipped BIGINT NOT NULL DEFAULT 0,
    ambiguous BIGINT NOT NULL DEFAULT 0,
    reclaimed BIGINT NOT NULL DEFAULT 0,
    throttled BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    finished_at BIGINT
);

-- The ledger: one row per recipient, keyed by (blast, person). Columns ordered
-- widest first so that no alignment padding is stored.
CREATE TABLE blast_recipients (
    person_id BIGINT NOT NULL,
    not_before BIGINT,
    blast_id INTEGER NOT NULL,
    state SMALLINT NOT NULL DEFAULT 0,
    attempts SMALLINT NOT NULL DEFAULT 0,
    account SMALLINT,
    PRIMARY KEY (blast_id, person_id)
) WITH (fillfactor = 90);

CREATE TABLE blast_message_ids (
    blast_id INTEGER NOT NULL,
    person_id BIGINT NOT NULL,
    message_id BYTEA NOT NULL,
    PRIMARY KEY (blast_id, person_id)
);

CREATE TABLE blast_failures (
    blast_id INTEGER NOT NULL,
    person_id BIGINT NOT NULL,
    reason TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (blast_id, person_id)
);

CREATE TABLE mail_accounts (
    id SERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);

CREATE TABLE suppressions (
    email TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    at BIGINT NOT NULL
);
