-- Blasts, their per-recipient ledger, failures, provider accounts and the suppression list.
CREATE TABLE blasts (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    target TEXT NOT NULL,
    content TEXT NOT NULL,
    from_email TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'draft',
    state_reason TEXT,
    scheduled_at INTEGER,
    keep_message_ids INTEGER NOT NULL DEFAULT 1,
    materialized_at INTEGER,
    total INTEGER NOT NULL DEFAULT 0,
    sent INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0,
    ambiguous INTEGER NOT NULL DEFAULT 0,
    reclaimed INTEGER NOT NULL DEFAULT 0,
    throttled INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    finished_at INTEGER
);

-- The ledger: one row per recipient, keyed by (blast, person), no rowid, small
-- integers only. See crates/narwhal-store/src/blasts.rs for the byte budget.
CREATE TABLE blast_recipients (
    blast_id INTEGER NOT NULL,
    person_id INTEGER NOT NULL,
    state INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    account INTEGER,
    not_before INTEGER,
    PRIMARY KEY (blast_id, person_id)
) WITHOUT ROWID;

-- Provider message ids, compacted, only for blasts that keep them.
CREATE TABLE blast_message_ids (
    blast_id INTEGER NOT NULL,
    person_id INTEGER NOT NULL,
    message_id BLOB NOT NULL,
    PRIMARY KEY (blast_id, person_id)
) WITHOUT ROWID;

-- Why a recipient failed (rare rows, so the ledger itself stays small).
CREATE TABLE blast_failures (
    blast_id INTEGER NOT NULL,
    person_id INTEGER NOT NULL,
    reason TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (blast_id, person_id)
) WITHOUT ROWID;

-- Provider accounts by name, so the ledger stores a small integer.
CREATE TABLE mail_accounts (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);

CREATE TABLE suppressions (
    email TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    at INTEGER NOT NULL
) WITHOUT ROWID;
