-- A recurring gift's installment that was declined owes the donor an email: when the
-- next try is, or that the plan stopped, with a link to cancel. The donation row is
-- the outbox, as for receipts (0015). A cancel link sent in such an email has a token
-- of its own, so that the link the donor got first keeps working too.
ALTER TABLE donations ADD COLUMN failure_notice_sent_at BIGINT;
UPDATE donations SET failure_notice_sent_at = 0 WHERE plan_id IS NOT NULL;
CREATE INDEX donations_failure_notice_due ON donations (id)
    WHERE failure_notice_sent_at IS NULL AND plan_id IS NOT NULL AND state IN ('declined', 'failed');
CREATE TABLE plan_cancel_links (
    token_hash TEXT PRIMARY KEY,
    plan_id BIGINT NOT NULL REFERENCES recurring_plans (id),
    created_at BIGINT NOT NULL
);
