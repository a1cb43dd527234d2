//! A donation request from a donor who gives every field the law asks for.

use narwhal_pay::service::{Attestations, DonationRequest, Donor};

/// `cents` from `email` with idempotency key `key`, paid with token `pm`.
pub fn gift(key: &str, email: &str, cents: i64, pm: &str) -> DonationRequest {
    DonationRequest {
        idempotency_key: key.into(),
        amount_cents: cents,
        donor: Donor {
            first_name: "Ada".into(),
            last_name: "Lovelace".into(),
            email: email.into(),
            phone: None,
            address1: "1 Main St".into(),
            address2: None,
            city: "Columbus".into(),
            state: "OH".into(),
            zip: "43215".into(),
            employer: Some("Acme".into()),
            occupation: Some("Engineer".into()),
        },
        attestations: Attestations {
            own_funds: true,
            citizen_or_resident: true,
            not_contractor: true,
            personal_card: true,
        },
        payment_method: Some(pm.into()),
        save_method: false,
        refcode: Some("email-0601".into()),
        source: None,
        channel: "api".into(),
        client_ip: None,
        plan_id: None,
        recurring: None,
        customer: None,
        processor: None,
    }
}
