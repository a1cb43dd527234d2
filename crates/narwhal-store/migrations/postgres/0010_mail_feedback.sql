-- Bounces, complaints and deliveries reported after a send (SES through SNS, DSNs).
-- Every payload is stored first, deduplicated by its source's own id (the SNS
-- MessageId, a DSN's Message-ID), then processed; its effects are one row each in
-- mail_feedback_events, unique per (address, kind, event key), so a replay changes nothing.
CREATE TABLE mail_feedback (
    id BIGSERIAL PRIMARY KEY,
    source TEXT NOT NULL,
    dedup_key TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'received',
    note TEXT,
    received_at BIGINT NOT NULL,
    processed_at BIGINT,
    UNIQUE (source, dedup_key)
);
CREATE INDEX mail_feedback_received ON mail_feedback (id) WHERE state = 'received';

CREATE TABLE mail_feedback_events (
    id BIGSERIAL PRIMARY KEY,
    feedback_id BIGINT NOT NULL,
    email TEXT NOT NULL,
    kind TEXT NOT NULL,
    event_key TEXT NOT NULL,
    at BIGINT NOT NULL,
    blast_id BIGINT,
    person_id BIGINT,
    detail TEXT,
    UNIQUE (email, kind, event_key)
);
CREATE INDEX mail_feedback_events_blast ON mail_feedback_events (blast_id, kind) WHERE blast_id IS NOT NULL;

-- Finding the ledger row a provider's message id belongs to.
CREATE INDEX blast_message_ids_message ON blast_message_ids (message_id);
