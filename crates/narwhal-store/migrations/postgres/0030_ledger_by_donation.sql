-- Ledger postings are idempotent per donation: `(donation_id, txn, account)` instead of
-- `(txn, account)`. Every posting belongs to a donation, and every lookup by
-- transaction already knows which one (a refund's or dispute's txn names it; a charge's
-- names the processor's payment, which one donation holds).
--
-- The old key began with the processor's payment id, random text, so each gift's four
-- postings landed at random places in a 131-byte-per-entry index that grew to 63 MB
-- over a 60 s donations bench: more than the server's 128 MB of shared buffers held
-- beside the other tables, and PostgreSQL evicted (and wrote back) pages to make room
-- on every batch. Led by the donation id, postings land at the index's right edge,
-- and the same index answers "this donation's postings", so `ledger_donation` goes.
ALTER TABLE ledger_entries ALTER COLUMN donation_id SET NOT NULL;
CREATE UNIQUE INDEX ledger_by_donation ON ledger_entries (donation_id, txn, account);
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_txn_account_key;
DROP INDEX ledger_donation;
