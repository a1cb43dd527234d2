-- Reconciliation runs (`narwhal donations reconcile`): each run's counts and every
-- payment it classified, so the console can show the latest. And the PaymentIntents
-- of the Stripe-compatible API (`/v1/payment_intents`): an intent exists before it
-- is confirmed; each confirmation is a donation (`donations.idempotency_key` is
-- `compat:{intent}:{n}`), so an intent can never be charged twice; the webhook sweep
-- finds that API's donations by when they last moved.

CREATE TABLE reconciliation_runs (
    id BIGSERIAL PRIMARY KEY,
    since_ms BIGINT NOT NULL,
    processors TEXT NOT NULL,
    matched BIGINT NOT NULL,
    mismatched BIGINT NOT NULL,
    missing BIGINT NOT NULL,
    duplicate BIGINT NOT NULL,
    errors TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    finished_at BIGINT NOT NULL
);

CREATE TABLE reconciliation_items (
    id BIGSERIAL PRIMARY KEY,
    run_id BIGINT NOT NULL REFERENCES reconciliation_runs (id),
    class TEXT NOT NULL,
    processor TEXT NOT NULL,
    processor_ref TEXT,
    donation TEXT,
    our_cents BIGINT,
    their_cents BIGINT,
    our_state TEXT,
    their_status TEXT,
    detail TEXT NOT NULL
);
CREATE INDEX reconciliation_items_run ON reconciliation_items (run_id, class);

CREATE TABLE compat_intents (
    id TEXT PRIMARY KEY,
    scope TEXT NOT NULL,
    amount_cents BIGINT NOT NULL CHECK (amount_cents > 0),
    currency TEXT NOT NULL,
    params TEXT NOT NULL,
    confirmations BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX donations_compat_moved ON donations (updated_at) WHERE channel = 'compat';
