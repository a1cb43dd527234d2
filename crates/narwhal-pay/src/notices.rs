//! Emails to donors: a receipt for every gift that succeeded; for a pledge taken
//! while every processor was down, a payment link once processing is back; and for a
//! recurring gift's declined installment, when the next try is (with a cancel link) or
//! that the plan stopped.
//!
//! Sent by [`Notices::run_once`] (the serving node's settler calls it every few
//! seconds) from the donation rows themselves (see `narwhal_store::donations::
//! notices`): a claim with a lease, the send through the campaign's mail accounts in
//! order (the next one when an account throttles or is down), then the mark. Nothing
//! here holds card data: a receipt names the brand and the last 4 digits only.
//!
//! A pledge's completion token is stored only as a hash, so the email carries a new
//! token, stored before the email goes out (the link in the donor's hand always works;
//! an older link stops working).

use crate::service::{new_token, Donor};
use narwhal_domain::money::format_dollars;
use narwhal_domain::Email;
use narwhal_mail::provider::{Content, MessageKey, Provider, RejectScope};
use narwhal_mail::{OutgoingMessage, SendOutcome};
use narwhal_store::donations::{DonationRow, NoticeKind};
use narwhal_store::giving::Plan;
use narwhal_store::{Store, StoreError};
use std::sync::Arc;
use std::time::Duration;

/// Who the emails come from and where their links point.
#[derive(Debug, Clone)]
pub struct NoticeConfig {
    /// The sender (a verified identity at the mail provider).
    pub from: Email,
    /// The committee's name, as it signs its emails.
    pub committee: String,
    /// Its postal address, in every email's footer.
    pub postal_address: String,
    /// The public base URL of the donation pages (`https://act.example.org`).
    pub base_url: String,
    /// How long a node holds a claimed donation before another may send it.
    pub lease: Duration,
}

/// What one [`Notices::run_once`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoticesRun {
    pub receipts: u32,
    pub pledge_links: u32,
    /// Notices of a declined recurring installment.
    pub installment_notices: u32,
    /// Emails no account took this time (claimed; sent again after the lease).
    pub deferred: u32,
}

/// Sends donor emails through the campaign's mail accounts.
#[derive(Clone)]
pub struct Notices {
    store: Store,
    router: Arc<crate::router::Router>,
    accounts: Arc<Vec<Arc<dyn Provider>>>,
    config: Arc<NoticeConfig>,
}

impl std::fmt::Debug for Notices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notices")
            .field("accounts", &self.accounts.len())
            .field("from", &self.config.from)
            .finish_non_exhaustive()
    }
}

/// The most donations one run claims per kind.
const PER_RUN: i64 = 200;

impl Notices {
    /// Over the donation service's store and router, sending through `accounts` (tried
    /// in order).
    pub fn new(
        donations: &crate::service::Donations,
        accounts: Vec<Arc<dyn Provider>>,
        config: NoticeConfig,
    ) -> Self {
        Self {
            store: donations.store.clone(),
            router: donations.router.clone(),
            accounts: Arc::new(accounts),
            config: Arc::new(config),
        }
    }

    /// Sends the receipts that are due, and the pledge links when a processor can take
    /// the payment. A storage failure stops the run (the rest wait for the next).
    pub async fn run_once(&self) -> Result<NoticesRun, StoreError> {
        let mut run = NoticesRun::default();
        if self.accounts.is_empty() {
            return Ok(run);
        }
        let lease = i64::try_from(self.config.lease.as_millis()).unwrap_or(60_000);
        for d in self
            .store
            .claim_donor_notices(NoticeKind::Receipt, PER_RUN, lease)
            .await?
        {
            match self.send(&d, Mail::Receipt).await {
                true => {
                    self.store
                        .donor_notice_sent(d.id, NoticeKind::Receipt)
                        .await?;
                    run.receipts += 1;
                }
                false => run.deferred += 1,
            }
        }
        self.installment_notices(lease, &mut run).await?;
        let pledges = self
            .store
            .claim_donor_notices(NoticeKind::PledgeLink, PER_RUN, lease)
            .await?;
        // A payment link is worth sending only when a processor can take it: asked
        // now, not guessed from breakers that may not have seen the outage yet. If
        // none answers, the claims lapse and the next run after the lease asks again.
        if !pledges.is_empty() && !self.some_processor_answers().await {
            run.deferred += u32::try_from(pledges.len()).unwrap_or(u32::MAX);
            return Ok(run);
        }
        for d in pledges {
            let (token, hash) = new_token();
            if !self.store.reissue_pledge_token(d.id, &hash).await? {
                // Completed or canceled meanwhile: nothing to ask for.
                self.store
                    .donor_notice_sent(d.id, NoticeKind::PledgeLink)
                    .await?;
                continue;
            }
            match self.send(&d, Mail::PledgeLink(&token)).await {
                true => {
                    self.store
                        .donor_notice_sent(d.id, NoticeKind::PledgeLink)
                        .await?;
                    run.pledge_links += 1;
                }
                false => run.deferred += 1,
            }
        }
        if run != NoticesRun::default() {
            tracing::info!(
                receipts = run.receipts,
                pledge_links = run.pledge_links,
                installment_notices = run.installment_notices,
                deferred = run.deferred,
                "donations: donor emails"
            );
        }
        Ok(run)
    }

    /// Tells donors whose recurring installment was declined when the next try is (with
    /// a cancel link of its own), or that the plan stopped after its last try.
    async fn installment_notices(
        &self,
        lease: i64,
        run: &mut NoticesRun,
    ) -> Result<(), StoreError> {
        let kind = NoticeKind::InstallmentFailed;
        let claimed = self.store.claim_donor_notices(kind, PER_RUN, lease).await?;
        // Several declines of one plan waiting at once (mail was down): one email, about
        // the newest.
        let mut newest = std::collections::HashMap::new();
        for d in &claimed {
            let e = newest.entry(d.plan_id).or_insert(d.id);
            *e = (*e).max(d.id);
        }
        for d in claimed {
            if newest.get(&d.plan_id) != Some(&d.id) {
                self.store.donor_notice_sent(d.id, kind).await?;
                continue;
            }
            let plan = match d.plan_id {
                Some(id) => self.store.plan(id).await?,
                None => None,
            };
            let due = plan.filter(|p| match p.state.as_str() {
                // Retried and charged since, or canceled or completed: nothing to say.
                "active" => p.failures > 0,
                "failed" => true,
                _ => false,
            });
            let Some(plan) = due else {
                self.store.donor_notice_sent(d.id, kind).await?;
                continue;
            };
            if plan.state == "active" && plan.next_charge_at <= d.updated_at {
                // The plan's run has not recorded the decline yet: next time.
                self.store.release_donor_notice(d.id).await?;
                continue;
            }
            let cancel = if plan.state == "active" {
                let (token, hash) = new_token();
                self.store.add_plan_cancel_link(plan.id, &hash).await?;
                Some(token)
            } else {
                None
            };
            match self
                .send(&d, Mail::InstallmentFailed(&plan, cancel.as_deref()))
                .await
            {
                true => {
                    self.store.donor_notice_sent(d.id, kind).await?;
                    run.installment_notices += 1;
                }
                false => run.deferred += 1,
            }
        }
        Ok(())
    }

    /// Whether a processor passes its health check now (due pledges only: one
    /// cheap call per run).
    async fn some_processor_answers(&self) -> bool {
        for i in 0..self.router.len() {
            if self.router.processor(i).health().await.is_ok() {
                return true;
            }
        }
        false
    }

    /// Sends one email through the first account that takes it. `true` when it is
    /// done with (taken, or refused for good: retrying would not help).
    async fn send(&self, d: &DonationRow, what: Mail<'_>) -> bool {
        let Ok(donor) = serde_json::from_str::<Donor>(&d.donor_json) else {
            tracing::warn!(donation = %d.public_id, "donor fields unreadable; no email");
            return true;
        };
        let Ok(to) = Email::parse(&donor.email) else {
            tracing::warn!(donation = %d.public_id, "donor address not valid; no email");
            return true;
        };
        let (subject, text) = match what {
            Mail::PledgeLink(t) => self.pledge_link(d, &donor, t),
            Mail::Receipt => self.receipt(d, &donor),
            Mail::InstallmentFailed(plan, cancel) => {
                self.installment_failed(d, &donor, plan, cancel)
            }
        };
        let message = OutgoingMessage {
            key: MessageKey(u64::try_from(d.id).unwrap_or(0)),
            from: self.config.from.clone(),
            to,
            content: Content::Simple {
                subject,
                text: Some(text),
                html: None,
                headers: Vec::new(),
            },
        };
        for account in self.accounts.iter() {
            let outcome = account
                .send_batch(std::slice::from_ref(&message))
                .await
                .into_iter()
                .next();
            match outcome {
                Some(SendOutcome::Accepted { .. }) => return true,
                // Sent or maybe sent: not again (a duplicate receipt is worse than none
                // only for a pledge link, and its old token is already replaced).
                Some(SendOutcome::Ambiguous { .. }) => return true,
                Some(SendOutcome::Rejected {
                    scope: RejectScope::Message,
                    reason,
                }) => {
                    tracing::warn!(donation = %d.public_id, reason = %reason, "donor email refused");
                    return true;
                }
                other => {
                    tracing::debug!(account = account.name(), outcome = ?other.as_ref().map(SendOutcome::label), "donor email not taken; next account");
                }
            }
        }
        false
    }

    fn footer(&self) -> String {
        format!(
            "\n\n--\nPaid for by {}.\n{}\nContributions are not deductible as charitable contributions for federal income tax purposes.\n",
            self.config.committee, self.config.postal_address
        )
    }

    fn receipt(&self, d: &DonationRow, donor: &Donor) -> (String, String) {
        let card = match (&d.card_brand, &d.card_last4) {
            (Some(b), Some(l)) => format!(", charged to your {b} card ending in {l}"),
            _ => String::new(),
        };
        let subject = format!(
            "Your receipt: {} to {}",
            format_dollars(d.amount_cents),
            self.config.committee
        );
        let text = format!(
            "Thank you, {}!\n\nWe received your contribution of {} on {}{card}.\nReceipt number: {}\n\nKeep this email for your records.{}",
            donor.first_name.trim(),
            format_dollars(d.amount_cents),
            date_of(d.created_at),
            d.public_id,
            self.footer()
        );
        (subject, text)
    }

    fn installment_failed(
        &self,
        d: &DonationRow,
        donor: &Donor,
        plan: &Plan,
        cancel: Option<&str>,
    ) -> (String, String) {
        let every = if plan.every == "week" {
            "weekly"
        } else {
            "monthly"
        };
        let amount = format_dollars(d.amount_cents);
        let subject = format!("Your {every} gift of {amount} did not go through");
        let what_next = match cancel {
            Some(token) => format!(
                "We will try your card again on {}. If your card has changed, simply start a new gift on our donation page; to stop this recurring gift, use this link:\n\n{}/donate/recurring/cancel/{token}",
                date_of(plan.next_charge_at),
                self.config.base_url.trim_end_matches('/')
            ),
            None => format!(
                "After {} tries we have stopped this recurring gift: nothing more will be charged. You can start a new gift on our donation page at any time.",
                plan.failures
            ),
        };
        let text = format!(
            "{},\n\nYour {every} contribution of {amount} on {} was declined by your card's bank, so nothing was charged.\n\n{what_next}{}",
            donor.first_name.trim(),
            date_of(d.created_at),
            self.footer()
        );
        (subject, text)
    }

    fn pledge_link(&self, d: &DonationRow, donor: &Donor, token: &str) -> (String, String) {
        let subject = format!(
            "Complete your {} pledge to {}",
            format_dollars(d.amount_cents),
            self.config.committee
        );
        let link = format!(
            "{}/donate/pledge/{token}",
            self.config.base_url.trim_end_matches('/')
        );
        let text = format!(
            "{},\n\nOn {} you pledged {} while our payment processor was unavailable, so no card was charged. Processing is back: you can complete your gift here:\n\n{link}\n\nThe link works once. If you would rather not give now, simply ignore this email.{}",
            donor.first_name.trim(),
            date_of(d.created_at),
            format_dollars(d.amount_cents),
            self.footer()
        );
        (subject, text)
    }
}

/// Which email [`Notices::send`] writes.
enum Mail<'a> {
    Receipt,
    /// With the pledge's new completion token.
    PledgeLink(&'a str),
    /// With the plan, and a new cancel token while the plan is active.
    InstallmentFailed(&'a Plan, Option<&'a str>),
}

/// `YYYY-MM-DD` (UTC) of a time in ms.
fn date_of(ms: i64) -> String {
    let (y, m, d) = narwhal_domain::civil::civil_from_days(ms.div_euclid(86_400_000));
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_days() {
        assert_eq!(date_of(0), "1970-01-01");
        // 2026-11-03 12:00 UTC.
        assert_eq!(date_of(1_793_707_200_000), "2026-11-03");
    }
}
