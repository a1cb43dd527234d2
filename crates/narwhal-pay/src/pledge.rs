//! Completing a pledge: the donor comes back through the payment link with a new card
//! token, and the pledge is charged like a gift (attempt rows first, fail over only when
//! known not charged, ambiguous attempts settled before anything else).
//!
//! Two completions of one pledge at once cannot both charge: each opens the next
//! attempt under the key `PUBLIC_ID-N`, and the attempt key is unique, so the second
//! is refused as in flight before it calls a processor.

use crate::processor::{ChargeOutcome, ChargeRequest, LookupOutcome};
use crate::service::{
    charged_finish, outcome_of, token_hash, DonationError, Donations, Outcome, Taken,
};
use narwhal_domain::card::contains_card_number;
use narwhal_store::donations::{attempt, Completion, DonationRow, Finish};
use narwhal_store::StoreError;

fn not_found() -> DonationError {
    DonationError::Invalid {
        field: "token",
        code: "pledge_not_found",
        message: "this payment link is unknown or was already used".into(),
    }
}

impl Donations {
    /// The pledge a payment link's token names, while it waits to be completed.
    pub async fn pledge_by_token(&self, token: &str) -> Result<Option<DonationRow>, DonationError> {
        if token.is_empty() || token.len() > 128 {
            return Ok(None);
        }
        let row = self
            .store
            .donation_by_pledge_token_hash(&token_hash(token))
            .await?;
        Ok(row.filter(|d| d.state == "pledged"))
    }

    /// Charges a waiting pledge with a new processor token (`pm_...`). A decline keeps
    /// the pledge waiting (the donor may try another card); with every processor down
    /// it stays a pledge.
    pub async fn complete_pledge(
        &self,
        token: &str,
        payment_method: &str,
    ) -> Result<Taken, DonationError> {
        if contains_card_number(payment_method)
            || payment_method.is_empty()
            || payment_method.len() > 255
            || !payment_method
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(DonationError::Invalid {
                field: "payment_method",
                code: "invalid_payment_method",
                message: "the payment method must be the processor's token (pm_...)".into(),
            });
        }
        let d = self.pledge_by_token(token).await?.ok_or_else(not_found)?;
        let done = |outcome: Outcome, donation: DonationRow| Taken {
            outcome,
            donation,
            pledge_token: None,
            replayed: false,
            saved_method_id: None,
            plan_cancel_token: None,
        };
        for i in self.router.candidates() {
            let processor = self.router.processor(i).clone();
            let seq = self.store.donation_attempts(d.id).await?.len() + 1;
            let key = format!("{}-{seq}", d.public_id);
            match self.store.start_attempt(d.id, processor.name(), &key).await {
                Ok(_) => {}
                Err(StoreError::Conflict(_)) => return Err(DonationError::InFlight),
                Err(e) => return Err(e.into()),
            }
            let request = ChargeRequest {
                idempotency_key: key.clone(),
                amount: d.amount_cents,
                currency: self.config.currency.clone(),
                payment_method: payment_method.to_string(),
                customer: None,
                save_method: false,
                metadata: vec![("narwhal_donation".into(), d.public_id.clone())],
                description: None,
            };
            let mut outcome = processor.charge(&request).await;
            if let ChargeOutcome::Ambiguous { reason } = &outcome {
                self.store
                    .mark_attempt(&key, attempt::AMBIGUOUS, reason)
                    .await?;
                outcome = match self.settle(i, &key).await {
                    LookupOutcome::Charged(c) => ChargeOutcome::Succeeded(c),
                    LookupOutcome::NotCharged => ChargeOutcome::Unavailable {
                        reason: "a status query showed no charge".into(),
                        retry_after: None,
                    },
                    LookupOutcome::Unknown { .. } => {
                        // The settler finishes it; nothing else happens meanwhile.
                        return Ok(done(Outcome::Processing, d));
                    }
                };
            }
            let (finish, told) = match outcome {
                ChargeOutcome::Succeeded(c) => {
                    self.router.up(i);
                    (charged_finish(processor.name(), c), None)
                }
                ChargeOutcome::Declined { code, message } => {
                    self.router.up(i);
                    (Finish::Declined { code, message }, Some(Outcome::Declined))
                }
                ChargeOutcome::Invalid { code, message, .. } => {
                    self.router.up(i);
                    (Finish::Failed { code, message }, Some(Outcome::Failed))
                }
                ChargeOutcome::Unavailable { reason, .. } => {
                    self.router.down(i);
                    self.store
                        .mark_attempt(&key, attempt::UNAVAILABLE, &reason)
                        .await?;
                    continue;
                }
                ChargeOutcome::Ambiguous { .. } => continue,
            };
            self.store
                .finish_donations(
                    &[Completion {
                        donation_id: d.id,
                        attempt_key: Some(key),
                        finish,
                    }],
                    &self.config.limits,
                )
                .await?;
            let row = self
                .store
                .donation_by_id(d.id)
                .await?
                .ok_or(DonationError::Store(StoreError::NotFound("donation")))?;
            let outcome = told.unwrap_or_else(|| outcome_of(&row.state));
            return Ok(done(outcome, row));
        }
        Ok(done(Outcome::Pledged, d))
    }
}
