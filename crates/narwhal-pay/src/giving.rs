//! Repeat giving on top of [`Donations::take`]: one-click links and recurring plans.
//!
//! Both charge a saved method (a processor customer and token, never card data) at
//! the processor account that saved it, and both derive the gift's idempotency key from
//! what makes it unique, so that no retry, double tap or second node can charge twice:
//! - a one-click gift's key is the link's token hash (a link is also single-use);
//! - a recurring installment's key is the plan, the installment number and the try.

use crate::service::{
    new_token, token_hash, Attestations, DonationError, DonationRequest, Donations, Donor, Outcome,
    Recurrence, Taken,
};
use narwhal_domain::PersonId;
use narwhal_store::giving::{LinkProblem, NewPlan, Plan};
use narwhal_store::{now_ms, StoreError};

use narwhal_domain::civil::{civil_from_days, days_from_civil, DAY_MS};

/// Waits before retrying a failed installment: 1, 3, then 7 days; then the plan fails.
pub const RETRY_AFTER_DAYS: [i64; 3] = [1, 3, 7];

/// What a run of due plans did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanRun {
    pub charged: usize,
    pub failed: usize,
    /// Failures that will be retried; the donor gets a notice for each.
    pub retrying: usize,
    /// Plans ended: completed (past their end) or failed (out of retries).
    pub ended: usize,
}

/// Adds one interval (`week` or `month`, keeping the day of the month where it exists)
/// to a time in ms.
pub fn next_time(from_ms: i64, every: &str) -> i64 {
    if every == "week" {
        return from_ms + 7 * DAY_MS;
    }
    let days = from_ms.div_euclid(DAY_MS);
    let rest = from_ms.rem_euclid(DAY_MS);
    let (y, m, d) = civil_from_days(days);
    let (y2, m2) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    let d2 = d.min(days_in_month(y2, m2));
    days_from_civil(y2, m2, d2) * DAY_MS + rest
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ => {
            if is_leap(y) {
                29
            } else {
                28
            }
        }
    }
}

/// A one-click link as shown on its confirm page.
#[derive(Clone, Debug)]
pub struct OneClickOffer {
    pub amount_cents: i64,
    pub card_brand: Option<String>,
    pub card_last4: Option<String>,
}

impl Donations {
    /// Starts a recurring plan after its first gift succeeded.
    pub(crate) async fn start_plan(
        &self,
        req: &DonationRequest,
        r: &Recurrence,
        person_id: PersonId,
        saved_method_id: i64,
    ) -> Result<(i64, String), DonationError> {
        let (cancel_token, cancel_hash) = new_token();
        let (public, _) = new_token();
        let id = self
            .store
            .create_plan(&NewPlan {
                public_id: format!("plan_{}", &public[..24]),
                person_id,
                saved_method_id,
                amount_cents: req.amount_cents,
                every: r.every.clone(),
                first_charge_at: next_time(now_ms(), &r.every),
                ends_at: r.ends_at,
                donor_json: serde_json::to_string(&req.donor)
                    .map_err(|e| DonationError::People(e.to_string()))?,
                refcode: req.refcode.clone(),
                cancel_token_hash: cancel_hash,
            })
            .await?;
        Ok((id, cancel_token))
    }

    /// Issues a signed (random, stored as a hash), expiring, single-use one-click link
    /// for a donor with a saved method; returns the token to put in the URL.
    pub async fn issue_one_click_link(
        &self,
        person_id: PersonId,
        saved_method_id: i64,
        amount_cents: i64,
        valid_for_ms: i64,
    ) -> Result<String, DonationError> {
        let method =
            self.store
                .saved_method(saved_method_id)
                .await?
                .ok_or(DonationError::Store(StoreError::NotFound(
                    "saved payment method",
                )))?;
        if method.person_id != person_id.0 {
            return Err(DonationError::Store(StoreError::NotFound(
                "saved payment method",
            )));
        }
        let (token, hash) = new_token();
        self.store
            .create_one_click_link(
                &hash,
                person_id,
                saved_method_id,
                amount_cents,
                now_ms() + valid_for_ms,
            )
            .await?;
        Ok(token)
    }

    /// What a link offers, for its confirm page.
    pub async fn one_click_offer(&self, token: &str) -> Result<OneClickOffer, DonationError> {
        match self.store.peek_one_click_link(&token_hash(token)).await? {
            Ok(link) => Ok(OneClickOffer {
                amount_cents: link.amount_cents,
                card_brand: link.method.card_brand,
                card_last4: link.method.card_last4,
            }),
            Err(p) => Err(link_error(p)),
        }
    }

    /// Gives through a one-click link: marks it used, then charges the saved method
    /// with the donor's last recorded details. The gift's key is the link's hash, so a
    /// double tap that races past the single-use mark is still one donation.
    pub async fn give_one_click(
        &self,
        token: &str,
        client_ip: Option<String>,
    ) -> Result<Taken, DonationError> {
        let hash = token_hash(token);
        let key = format!("oneclick_{}", &hash[..40]);
        // A second tap after the first finished answers with the same donation.
        if let Some(row) = self.store.donation_by_idempotency_key(&key).await? {
            if row.state != "processing" {
                return Ok(Taken {
                    outcome: crate::service::outcome_of(&row.state),
                    donation: row,
                    pledge_token: None,
                    replayed: true,
                    saved_method_id: None,
                    plan_cancel_token: None,
                });
            }
            return Err(DonationError::InFlight);
        }
        let link = match self.store.use_one_click_link(&hash).await? {
            Ok(l) => l,
            Err(p) => return Err(link_error(p)),
        };
        let donor = self.last_donor(link.person_id).await?;
        let req = DonationRequest {
            idempotency_key: key,
            amount_cents: link.amount_cents,
            donor,
            attestations: confirmed_attestations(),
            payment_method: Some(link.method.payment_method.clone()),
            save_method: false,
            refcode: Some("one-click".into()),
            source: None,
            channel: "one_click".into(),
            recurring: None,
            client_ip,
            plan_id: None,
            customer: link.method.customer_ref.clone(),
            processor: Some(link.method.processor.clone()),
        };
        let taken = self.take(req).await?;
        self.store.link_donation(&hash, taken.donation.id).await?;
        Ok(taken)
    }

    /// Remembers the device of a donor who saved a card, for one-tap gifts; returns the
    /// token for its cookie (stored only as a hash).
    pub async fn remember_device(
        &self,
        person_id: i64,
        saved_method_id: i64,
        valid_for_ms: i64,
    ) -> Result<String, DonationError> {
        let (token, hash) = new_token();
        self.store
            .create_donor_device(&hash, person_id, saved_method_id, now_ms() + valid_for_ms)
            .await?;
        Ok(token)
    }

    /// The saved card a remembered device gives with, and the donor's first name.
    pub async fn device_offer(
        &self,
        device_token: &str,
    ) -> Result<Option<(narwhal_store::giving::SavedMethod, Donor)>, DonationError> {
        let Some(method) = self.store.donor_device(&token_hash(device_token)).await? else {
            return Ok(None);
        };
        let donor = self.last_donor(method.person_id).await?;
        Ok(Some((method, donor)))
    }

    /// Forgets a remembered device (the card stays saved for links and plans).
    pub async fn forget_device(&self, device_token: &str) -> Result<(), DonationError> {
        Ok(self
            .store
            .forget_donor_device(&token_hash(device_token))
            .await?)
    }

    /// A one-tap gift from a remembered device: the saved card, the donor's last
    /// recorded details, and the page's own idempotency key (a double tap is one gift).
    /// `None` when the device is not (or no longer) remembered.
    pub async fn give_from_device(
        &self,
        device_token: &str,
        amount_cents: i64,
        idempotency_key: String,
        client_ip: Option<String>,
    ) -> Result<Option<Taken>, DonationError> {
        let Some((method, donor)) = self.device_offer(device_token).await? else {
            return Ok(None);
        };
        let req = DonationRequest {
            idempotency_key,
            amount_cents,
            donor,
            attestations: confirmed_attestations(),
            payment_method: Some(method.payment_method.clone()),
            save_method: false,
            refcode: Some("one-tap".into()),
            source: None,
            channel: "one_click".into(),
            recurring: None,
            client_ip,
            plan_id: None,
            customer: method.customer_ref.clone(),
            processor: Some(method.processor.clone()),
        };
        self.take(req).await.map(Some)
    }

    async fn last_donor(&self, person_id: i64) -> Result<Donor, DonationError> {
        let json = self
            .store
            .last_donor_json(person_id)
            .await?
            .ok_or(DonationError::Store(StoreError::NotFound("donor details")))?;
        serde_json::from_str(&json).map_err(|e| DonationError::People(e.to_string()))
    }

    /// Charges every plan due at `now`: each installment is its own donation with its
    /// own key. A decline is retried after 1, 3 and 7 days with a notice each time,
    /// then the plan fails; a plan past its end date completes.
    pub async fn run_due_plans(&self, now: i64) -> Result<PlanRun, DonationError> {
        let mut run = PlanRun::default();
        loop {
            let plans = self.store.claim_due_plans(now, 10 * 60_000, 100).await?;
            if plans.is_empty() {
                return Ok(run);
            }
            for plan in plans {
                self.run_plan(&plan, now, &mut run).await?;
            }
        }
    }

    async fn run_plan(
        &self,
        plan: &Plan,
        now: i64,
        run: &mut PlanRun,
    ) -> Result<(), DonationError> {
        if plan.ends_at.is_some_and(|end| now > end) {
            self.store
                .record_plan_run(plan.id, plan.installments, plan.failures, now, "completed")
                .await?;
            run.ended += 1;
            return Ok(());
        }
        let method = self.store.saved_method(plan.saved_method_id).await?;
        let Some(method) = method else {
            self.store
                .record_plan_run(plan.id, plan.installments, plan.failures, now, "failed")
                .await?;
            run.ended += 1;
            return Ok(());
        };
        // The first gift was installment 1.
        let number = plan.installments + 2;
        let donor: Donor = serde_json::from_str(&plan.donor_json)
            .map_err(|e| DonationError::People(e.to_string()))?;
        let req = DonationRequest {
            // One key per installment and try: a retry after a decline is a new
            // gift, while a rerun of the same try (a crash mid-run) is the same one.
            idempotency_key: format!("{}_{number}_{}", plan.public_id, plan.failures),
            amount_cents: plan.amount_cents,
            donor,
            attestations: confirmed_attestations(),
            payment_method: Some(method.payment_method.clone()),
            save_method: false,
            refcode: plan.refcode.clone(),
            source: Some("recurring".into()),
            channel: "recurring".into(),
            recurring: None,
            client_ip: None,
            plan_id: Some(plan.id),
            customer: method.customer_ref.clone(),
            processor: Some(method.processor.clone()),
        };
        let scheduled = plan.next_charge_at.min(now);
        let outcome = match self.take(req).await {
            Ok(t) => t.outcome,
            Err(DonationError::OverLimit(_)) => {
                // The donor reached the legal limit: the plan ends, nothing is taken.
                self.store
                    .record_plan_run(plan.id, plan.installments, plan.failures, now, "completed")
                    .await?;
                run.ended += 1;
                return Ok(());
            }
            Err(DonationError::Invalid { .. }) | Err(DonationError::KeyReused) => Outcome::Failed,
            Err(e) => return Err(e),
        };
        match outcome {
            Outcome::Succeeded => {
                let next = next_time(scheduled, &plan.every);
                let ended = plan.ends_at.is_some_and(|end| next > end);
                self.store
                    .record_plan_run(
                        plan.id,
                        plan.installments + 1,
                        0,
                        next,
                        if ended { "completed" } else { "active" },
                    )
                    .await?;
                run.charged += 1;
                if ended {
                    run.ended += 1;
                }
            }
            Outcome::Declined | Outcome::Failed => {
                run.failed += 1;
                let failures = plan.failures + 1;
                match RETRY_AFTER_DAYS.get(usize::try_from(plan.failures).unwrap_or(usize::MAX)) {
                    Some(days) => {
                        tracing::info!(
                            plan = plan.id,
                            failures,
                            "recurring gift failed; the donor is told, and it is retried"
                        );
                        self.store
                            .record_plan_run(
                                plan.id,
                                plan.installments,
                                failures,
                                now + days * DAY_MS,
                                "active",
                            )
                            .await?;
                        run.retrying += 1;
                    }
                    None => {
                        tracing::info!(
                            plan = plan.id,
                            failures,
                            "recurring gift failed for good; plan ended"
                        );
                        self.store
                            .record_plan_run(plan.id, plan.installments, failures, now, "failed")
                            .await?;
                        run.ended += 1;
                    }
                }
            }
            // Being settled, or a pledge while processors are down: the same
            // installment key is tried again in an hour, never charged twice.
            Outcome::Processing | Outcome::Pledged => {
                self.store
                    .record_plan_run(
                        plan.id,
                        plan.installments,
                        plan.failures,
                        now + 3_600_000,
                        "active",
                    )
                    .await?;
            }
        }
        Ok(())
    }

    /// The plan a cancel link stops, for its confirm page.
    pub async fn plan_by_cancel_token(
        &self,
        cancel_token: &str,
    ) -> Result<Option<Plan>, DonationError> {
        Ok(self
            .store
            .plan_by_cancel_token(&token_hash(cancel_token))
            .await?)
    }

    /// Cancels a plan from the donor's cancel link; `false` if the link is unknown or
    /// the plan already ended.
    pub async fn cancel_plan(&self, cancel_token: &str) -> Result<bool, DonationError> {
        Ok(self
            .store
            .cancel_plan(&token_hash(cancel_token))
            .await?
            .is_some())
    }
}

fn confirmed_attestations() -> Attestations {
    // The confirm page and the plan's sign-up page show the statements; giving there
    // makes them again.
    Attestations {
        own_funds: true,
        citizen_or_resident: true,
        not_contractor: true,
        personal_card: true,
    }
}

fn link_error(p: LinkProblem) -> DonationError {
    let (code, message) = match p {
        LinkProblem::Unknown => ("unknown_link", "This giving link is not valid."),
        LinkProblem::Expired => (
            "expired_link",
            "This giving link has expired; please use the donation page.",
        ),
        LinkProblem::AlreadyUsed => ("used_link", "This giving link was already used. Thank you!"),
    };
    DonationError::Invalid {
        field: "link",
        code,
        message: message.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_keep_the_day_or_clamp_it() {
        // 2026-01-31 12:00 UTC -> 2026-02-28 12:00 UTC -> 2026-03-28.
        let jan31 = days_from_civil(2026, 1, 31) * DAY_MS + 12 * 3_600_000;
        let feb = next_time(jan31, "month");
        assert_eq!(civil_from_days(feb.div_euclid(DAY_MS)), (2026, 2, 28));
        assert_eq!(feb.rem_euclid(DAY_MS), 12 * 3_600_000);
        let dec15 = days_from_civil(2026, 12, 15) * DAY_MS;
        assert_eq!(
            civil_from_days(next_time(dec15, "month") / DAY_MS),
            (2027, 1, 15)
        );
        assert_eq!(next_time(dec15, "week") - dec15, 7 * DAY_MS);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2024, 2, 29), civil_days_check(2024, 2, 29));
    }

    fn civil_days_check(y: i64, m: u32, d: u32) -> i64 {
        // Round trip through civil_from_days.
        let n = days_from_civil(y, m, d);
        assert_eq!(civil_from_days(n), (y, m, d));
        n
    }
}
