//! Applying a processor's webhook events to donations (the signature is checked by the
//! HTTP edge first).
//!
//! Every event is applied through an idempotent, forward-only store operation, so the
//! same final state comes out whatever the order and however often an event arrives:
//! - `payment_intent.succeeded`: settles the donation whose attempt key is in the
//!   intent's metadata (`narwhal_attempt`) if it is still processing (or a pledge),
//!   with the card as the processor's status query reports it.
//! - `payment_intent.payment_failed`: a processing donation is declined (room back).
//! - `charge.refunded`: the charge's cumulative `amount_refunded` is recorded as a
//!   refund of what we have not recorded yet, under the id `CHARGE@CUMULATIVE`, so a
//!   refund we made through the API and its webhook count once, and an older event
//!   arriving late changes nothing.
//! - `charge.dispute.created`: the donation becomes disputed, with a ledger entry.
//!
//! A refund or dispute of a donation we have not settled yet answers
//! [`Applied::NotReady`]: the processor redelivers it later, by which time the
//! settler (or the succeeded event) has recorded the charge.

use crate::processor::{CardSummary, Charged, LookupOutcome};
use crate::service::{charged_finish, DonationError, Donations};
use crate::stripe::ATTEMPT_METADATA_KEY;
use narwhal_store::donations::{Completion, DonationRow, Finish};
use serde_json::Value;

/// What an event did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The donation moved (or the refund or dispute was recorded).
    Changed,
    /// Nothing to do: the donation was already there, or the event was already applied.
    Unchanged,
    /// The event names no donation of ours, or is of a type we do not use.
    Ignored,
    /// The donation is not settled yet: ask the processor to deliver it again later.
    NotReady,
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

fn int_at(v: &Value, key: &str) -> i64 {
    v.get(key).and_then(Value::as_i64).unwrap_or(0)
}

/// The charge an intent object describes, from the event alone (when the processor
/// cannot be asked).
fn charged_from_intent(pi: &Value) -> Option<Charged> {
    let id = str_at(pi, &["id"])?.to_string();
    let amount = match int_at(pi, "amount_received") {
        0 => int_at(pi, "amount"),
        n => n,
    };
    let card = pi
        .get("latest_charge")
        .and_then(|c| c.get("payment_method_details"))
        .and_then(|d| d.get("card"))
        .map(|c| CardSummary {
            brand: str_at(c, &["brand"]).unwrap_or_default().to_string(),
            last4: str_at(c, &["last4"]).unwrap_or_default().to_string(),
            exp_month: u8::try_from(int_at(c, "exp_month")).unwrap_or(0),
            exp_year: u16::try_from(int_at(c, "exp_year")).unwrap_or(0),
            fingerprint: str_at(c, &["fingerprint"]).map(str::to_string),
        })
        .unwrap_or_default();
    Some(Charged {
        processor_ref: id,
        amount,
        card,
        fee: None,
        customer: str_at(pi, &["customer"]).map(str::to_string),
    })
}

impl Donations {
    /// Applies one verified event from the processor account `processor` (its
    /// configured name). `kind` is the event type, `object` its `data.object`.
    pub async fn apply_event(
        &self,
        processor: &str,
        kind: &str,
        object: &Value,
    ) -> Result<Applied, DonationError> {
        match kind {
            "payment_intent.succeeded" | "payment_intent.payment_failed" => {
                let Some(key) = str_at(object, &["metadata", ATTEMPT_METADATA_KEY]) else {
                    return Ok(Applied::Ignored);
                };
                let Some(d) = self.store.donation_by_attempt_key(key).await? else {
                    return Ok(Applied::Ignored);
                };
                if kind == "payment_intent.succeeded" {
                    self.settle_charged(processor, key, &d, object).await
                } else {
                    if d.state != "processing" {
                        return Ok(Applied::Unchanged);
                    }
                    let err = object.get("last_payment_error").unwrap_or(&Value::Null);
                    let code = str_at(err, &["decline_code"])
                        .or_else(|| str_at(err, &["code"]))
                        .unwrap_or("card_declined")
                        .to_string();
                    let message = str_at(err, &["message"])
                        .unwrap_or("Your card was declined.")
                        .to_string();
                    self.complete(d.id, key, Finish::Declined { code, message })
                        .await
                }
            }
            "charge.refunded" => {
                let Some(d) = self.donation_of_charge(object).await? else {
                    return Ok(Applied::NotReady);
                };
                let refunded = int_at(object, "amount_refunded");
                let delta = refunded - d.refunded_cents;
                if delta <= 0 {
                    return Ok(Applied::Unchanged);
                }
                let charge = str_at(object, &["id"]).unwrap_or("charge");
                let id = format!("{charge}@{refunded}");
                match self
                    .store
                    .record_refund(d.id, &id, delta, &self.config.limits)
                    .await
                {
                    Ok(Some(_)) => Ok(Applied::Changed),
                    Ok(None) => Ok(Applied::Unchanged),
                    // A disputed or otherwise final donation: the refund is not ours
                    // to apply; staff see it in reconciliation.
                    Err(narwhal_store::StoreError::Invalid(_)) => Ok(Applied::Unchanged),
                    Err(e) => Err(e.into()),
                }
            }
            "charge.dispute.created" => {
                let Some(d) = self.donation_of_charge(object).await? else {
                    return Ok(Applied::NotReady);
                };
                let id = str_at(object, &["id"]).unwrap_or_default();
                let amount = int_at(object, "amount");
                if id.is_empty() {
                    return Ok(Applied::Ignored);
                }
                Ok(if self.store.record_dispute(d.id, id, amount).await? {
                    Applied::Changed
                } else {
                    Applied::Unchanged
                })
            }
            _ => Ok(Applied::Ignored),
        }
    }

    /// The settled donation a charge (or dispute) object belongs to, by its intent.
    async fn donation_of_charge(
        &self,
        object: &Value,
    ) -> Result<Option<DonationRow>, DonationError> {
        let Some(pi) = str_at(object, &["payment_intent"]) else {
            return Ok(None);
        };
        Ok(self.store.donation_by_processor_ref(pi).await?)
    }

    async fn settle_charged(
        &self,
        processor: &str,
        key: &str,
        d: &DonationRow,
        object: &Value,
    ) -> Result<Applied, DonationError> {
        if !matches!(d.state.as_str(), "processing" | "pledged") {
            return Ok(Applied::Unchanged);
        }
        // The status query gives the card and fee; the event alone is the fallback.
        let asked = match self.router.by_name(processor) {
            Some((_, p)) => match p.lookup(key).await {
                LookupOutcome::Charged(c) => Some(c),
                _ => None,
            },
            None => None,
        };
        let Some(charged) = asked.or_else(|| charged_from_intent(object)) else {
            return Ok(Applied::Ignored);
        };
        self.complete(d.id, key, charged_finish(processor, charged))
            .await
    }

    async fn complete(&self, id: i64, key: &str, finish: Finish) -> Result<Applied, DonationError> {
        let changed = self
            .store
            .finish_donations(
                &[Completion {
                    donation_id: id,
                    attempt_key: Some(key.to_string()),
                    finish,
                }],
                &self.config.limits,
            )
            .await?;
        Ok(if changed.first().copied().unwrap_or(false) {
            Applied::Changed
        } else {
            Applied::Unchanged
        })
    }
}
