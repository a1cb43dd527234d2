//! Emails to donors, driven by the donation row itself: a receipt once a gift has
//! succeeded, a payment link for a pledge once processing is back, and a notice when a
//! recurring gift's installment was declined.
//!
//! The row is the outbox: `receipt_sent_at` / `pledge_link_sent_at` say the email went
//! out, and `notice_claim` is a sending node's lease, so that several nodes can send
//! without two mailing the same donor at once. A node that dies after sending and
//! before marking leaves the lease to expire and the email is sent again: donors may
//! rarely get a receipt twice, never none.

use super::{DonationRow, DONATION_COLUMNS};
use crate::error::Result;
use crate::{now_ms, Store};
use sqlx::Row;

/// Which email a donation is owed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    /// The receipt of a succeeded gift.
    Receipt,
    /// The link that completes a pledge.
    PledgeLink,
    /// A recurring gift's declined installment: the next try, or that the plan stopped.
    InstallmentFailed,
}

impl NoticeKind {
    /// The column that records the sending, and what makes a donation owe the email.
    fn column_and_condition(self) -> (&'static str, &'static str) {
        match self {
            NoticeKind::Receipt => ("receipt_sent_at", "state = 'succeeded'"),
            NoticeKind::PledgeLink => ("pledge_link_sent_at", "state = 'pledged'"),
            NoticeKind::InstallmentFailed => (
                "failure_notice_sent_at",
                "plan_id IS NOT NULL AND state IN ('declined', 'failed')",
            ),
        }
    }
}

impl Store {
    /// Claims up to `limit` donations owed a `kind` email for `lease_ms` (oldest
    /// first), skipping ones another node holds.
    pub async fn claim_donor_notices(
        &self,
        kind: NoticeKind,
        limit: i64,
        lease_ms: i64,
    ) -> Result<Vec<DonationRow>> {
        let (col, owed) = kind.column_and_condition();
        let now = now_ms();
        // The condition is repeated outside the subquery so that, on PostgreSQL, a row
        // another node claimed meanwhile is re-checked after its lock and skipped.
        let due =
            format!("{col} IS NULL AND {owed} AND (notice_claim IS NULL OR notice_claim < $2)");
        let sql = format!(
            "UPDATE donations SET notice_claim = $1 WHERE id IN (SELECT id FROM donations WHERE {due} ORDER BY id LIMIT $3) AND {due} \
             RETURNING {DONATION_COLUMNS}"
        );
        on_write!(self, p => {
            let rows = sqlx::query(&sql)
                .bind(now + lease_ms)
                .bind(now)
                .bind(limit.clamp(1, 1000))
                .fetch_all(p)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push(donation_from_row!(r));
            }
            out.sort_by_key(|d| d.id);
            Ok(out)
        })
    }

    /// Records that the `kind` email of a donation went out.
    pub async fn donor_notice_sent(&self, donation_id: i64, kind: NoticeKind) -> Result<()> {
        let (col, _) = kind.column_and_condition();
        let sql = format!("UPDATE donations SET {col} = $1, notice_claim = NULL WHERE id = $2");
        on_write!(self, p => sqlx::query(&sql).bind(now_ms()).bind(donation_id).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Replaces a pledge's completion token (only its hash is stored, so a link sent
    /// later needs a new one); the old link stops working. `false` when the donation
    /// is no longer a pledge.
    pub async fn reissue_pledge_token(&self, donation_id: i64, token_hash: &str) -> Result<bool> {
        let n = on_write!(self, p => sqlx::query("UPDATE donations SET pledge_token_hash = $1, updated_at = $2 WHERE id = $3 AND state = 'pledged'")
            .bind(token_hash).bind(now_ms()).bind(donation_id).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }

    /// Gives a claimed donation back without sending (its email is not due yet): the
    /// next run takes it again.
    pub async fn release_donor_notice(&self, donation_id: i64) -> Result<()> {
        on_write!(self, p => sqlx::query("UPDATE donations SET notice_claim = NULL WHERE id = $1")
            .bind(donation_id).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// When the `kind` email of a donation went out (ms), if it did.
    pub async fn donor_notice_sent_at(
        &self,
        donation_id: i64,
        kind: NoticeKind,
    ) -> Result<Option<i64>> {
        let (col, _) = kind.column_and_condition();
        let sql = format!("SELECT {col} AS at FROM donations WHERE id = $1");
        on_read!(self, p => {
            let r = sqlx::query(&sql).bind(donation_id).fetch_optional(p).await?;
            match r {
                Some(r) => Ok(r.try_get("at")?),
                None => Ok(None),
            }
        })
    }
}
