-- Emails to donors, sent from the donation row's own state (an outbox in place):
-- a receipt once a gift succeeded, and a payment link once processing is back for a
-- pledge. `notice_claim` is a sending node's lease (ms); the `*_sent_at` columns say
-- it went out. Gifts from before this migration are marked as receipted, so that
-- turning notices on does not mail every past donor.
ALTER TABLE donations ADD COLUMN receipt_sent_at BIGINT;
ALTER TABLE donations ADD COLUMN pledge_link_sent_at BIGINT;
ALTER TABLE donations ADD COLUMN notice_claim BIGINT;
UPDATE donations SET receipt_sent_at = 0, pledge_link_sent_at = 0;
CREATE INDEX donations_receipt_due ON donations (id) WHERE receipt_sent_at IS NULL AND state = 'succeeded';
CREATE INDEX donations_pledge_link_due ON donations (id) WHERE pledge_link_sent_at IS NULL AND state = 'pledged';
