-- Donations: the donation row (the legal record of a gift, donor fields as given),
-- every try at a processor, the double-entry ledger, per-donor contribution totals,
-- processor webhook events, saved payment methods, recurring plans, one-click links
-- and stored idempotent responses of the vendor-compatible API.
-- No column ever holds a card number or security code: only a processor token,
-- brand, last 4, expiry and the processor's card fingerprint.

CREATE TABLE donations (
    id INTEGER PRIMARY KEY,
    public_id TEXT NOT NULL UNIQUE,
    idempotency_key TEXT NOT NULL UNIQUE,
    request_hash TEXT NOT NULL,
    person_id INTEGER NOT NULL,
    amount_cents INTEGER NOT NULL CHECK (amount_cents > 0),
    currency TEXT NOT NULL,
    state TEXT NOT NULL,
    channel TEXT NOT NULL,
    refcode TEXT,
    source TEXT,
    donor TEXT NOT NULL,
    employer TEXT,
    occupation TEXT,
    allocations TEXT NOT NULL,
    itemized INTEGER NOT NULL,
    needs_followup INTEGER NOT NULL,
    payment_method TEXT,
    save_method INTEGER NOT NULL DEFAULT 0,
    card_brand TEXT,
    card_last4 TEXT,
    card_exp TEXT,
    card_fingerprint TEXT,
    processor TEXT,
    processor_ref TEXT,
    fee_cents INTEGER,
    refunded_cents INTEGER NOT NULL DEFAULT 0,
    plan_id INTEGER,
    pledge_token_hash TEXT,
    error_code TEXT,
    error_message TEXT,
    client_ip TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX donations_created ON donations (created_at);
CREATE INDEX donations_person ON donations (person_id);
CREATE INDEX donations_open ON donations (state, updated_at) WHERE state IN ('processing', 'pledged');
CREATE UNIQUE INDEX donations_processor_ref ON donations (processor_ref) WHERE processor_ref IS NOT NULL;
CREATE INDEX donations_refcode ON donations (refcode, created_at) WHERE refcode IS NOT NULL;

CREATE TABLE donation_attempts (
    id INTEGER PRIMARY KEY,
    donation_id INTEGER NOT NULL REFERENCES donations (id),
    seq INTEGER NOT NULL,
    processor TEXT NOT NULL,
    attempt_key TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    processor_ref TEXT,
    detail TEXT,
    started_at INTEGER NOT NULL,
    finished_at INTEGER,
    UNIQUE (donation_id, seq)
);
CREATE INDEX donation_attempts_open ON donation_attempts (started_at) WHERE state IN ('started', 'ambiguous');

CREATE TABLE ledger_entries (
    id INTEGER PRIMARY KEY,
    txn TEXT NOT NULL,
    donation_id INTEGER,
    kind TEXT NOT NULL,
    account TEXT NOT NULL,
    amount_cents INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (txn, account)
);
CREATE INDEX ledger_donation ON ledger_entries (donation_id);

CREATE TABLE contribution_totals (
    person_id INTEGER NOT NULL,
    period TEXT NOT NULL,
    total_cents INTEGER NOT NULL,
    PRIMARY KEY (person_id, period)
) WITHOUT ROWID;

CREATE TABLE payment_events (
    event_id TEXT PRIMARY KEY,
    processor TEXT NOT NULL,
    type TEXT NOT NULL,
    object_ref TEXT,
    received_at INTEGER NOT NULL,
    payload TEXT NOT NULL
);

CREATE TABLE saved_payment_methods (
    id INTEGER PRIMARY KEY,
    person_id INTEGER NOT NULL,
    processor TEXT NOT NULL,
    customer_ref TEXT,
    payment_method TEXT NOT NULL,
    card_brand TEXT,
    card_last4 TEXT,
    card_exp TEXT,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX saved_payment_methods_person ON saved_payment_methods (person_id);

CREATE TABLE recurring_plans (
    id INTEGER PRIMARY KEY,
    public_id TEXT NOT NULL UNIQUE,
    person_id INTEGER NOT NULL,
    saved_method_id INTEGER NOT NULL,
    amount_cents INTEGER NOT NULL CHECK (amount_cents > 0),
    every TEXT NOT NULL,
    state TEXT NOT NULL,
    next_charge_at INTEGER NOT NULL,
    ends_at INTEGER,
    installments INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    donor TEXT NOT NULL,
    refcode TEXT,
    cancel_token_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX recurring_plans_due ON recurring_plans (next_charge_at) WHERE state = 'active';

CREATE TABLE one_click_links (
    token_hash TEXT PRIMARY KEY,
    person_id INTEGER NOT NULL,
    saved_method_id INTEGER NOT NULL,
    amount_cents INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER,
    donation_id INTEGER,
    created_at INTEGER NOT NULL
);

CREATE TABLE api_idempotency (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    state TEXT NOT NULL,
    status INTEGER,
    body TEXT,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
);
