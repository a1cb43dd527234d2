-- Ledger postings are idempotent per donation: `(donation_id, txn, account)` instead of
-- `(txn, account)` (see the PostgreSQL migration of the same number for why). SQLite
-- cannot drop a table's UNIQUE constraint, so the table is rebuilt.
CREATE TABLE ledger_entries_new (
    id INTEGER PRIMARY KEY,
    txn TEXT NOT NULL,
    donation_id INTEGER NOT NULL,
    kind TEXT NOT NULL,
    account TEXT NOT NULL,
    amount_cents INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
INSERT INTO ledger_entries_new (id, txn, donation_id, kind, account, amount_cents, created_at)
    SELECT id, txn, donation_id, kind, account, amount_cents, created_at FROM ledger_entries;
DROP TABLE ledger_entries;
ALTER TABLE ledger_entries_new RENAME TO ledger_entries;
CREATE UNIQUE INDEX ledger_by_donation ON ledger_entries (donation_id, txn, account);
