//! What the donation tests share: a donor request with every field the law asks for,
//! and a router over a primary and a backup fake Stripe.

use narwhal_fakes::stripe::{FakeStripe, DEFAULT_KEY};
use narwhal_mail::Secret;
use narwhal_pay::router::{BreakerConfig, Router};
use narwhal_pay::service::{Attestations, DonationRequest, Donor};
use narwhal_pay::stripe::{StripeConfig, StripeProcessor};
use narwhal_pay::Processor;
use std::sync::Arc;
use std::time::Duration;

/// `stripe-primary` then `stripe-backup`, answering within 700 ms, with rate limits
/// out of the way.
pub fn two_stripes(primary: &FakeStripe, backup: &FakeStripe) -> Router {
    let processor = |name: &str, url: String| -> Arc<dyn Processor> {
        let mut cfg = StripeConfig::new(name, Secret::new(DEFAULT_KEY.to_string())).base_url(url);
        cfg.request_timeout = Duration::from_millis(700);
        cfg.max_requests_per_second = 1000;
        cfg.burst = 100;
        Arc::new(StripeProcessor::new(cfg).unwrap())
    };
    Router::new(
        vec![
            processor("stripe-primary", primary.url()),
            processor("stripe-backup", backup.url()),
        ],
        BreakerConfig::default(),
    )
}

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
