-- Reconciliation runs (`narwhal donations reconcile`): each run's counts and every
-- payment it classified, so the console can show the latest. And the PaymentIntents
-- of the Stripe-compatible API (`/v1/payment_intents`): an intent exists before it
-- is confirmed; each confirmation is a donation (`donations.idempotency_key` is
-- `compat:{intent}:{n}`), so an intent can never be charged twice; the webhook sweep
-- finds that API's donations by when they last moved.

CREATE TABLE reconciliation_runs (
    id INTEGER PRIMARY KEY,
    since_ms INTEGER NOT NULL,
    processors TEXT NOT NULL,
    matched INTEGER NOT NULL,
    mismatched INTEGER NOT NULL,
    missing INTEGER NOT NULL,
    duplicate INTEGER NOT NULL,
    errors TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    finished_at INTEGER NOT NULL
);

CREATE TABLE reconciliation_items (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES reconciliation_runs (id),
    class TEXT NOT NULL,
    processor TEXT NOT NULL,
    processor_ref TEXT,
    donation TEXT,
    our_cents INTEGER,
    their_cents INTEGER,
    our_state TEXT,
    their_status TEXT,
    detail TEXT NOT NULL
);
CREATE INDEX reconciliation_items_run ON reconciliation_items (run_id, class);

CREATE TABLE compat_intents (
    id TEXT PRIMARY KEY,
    scope TEXT NOT NULL,
    amount_cents INTEGER NOT NULL CHECK (amount_cents > 0),
    currency TEXT NOT NULL,
    params TEXT NOT NULL,
    confirmations INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX donations_compat_moved ON donations (updated_at) WHERE channel = 'compat';
