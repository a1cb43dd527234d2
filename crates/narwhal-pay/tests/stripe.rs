#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The Stripe adapter against the fake Stripe: every outcome class, lookups, refunds,
//! pagination, idempotent replay and outbound queueing.

use narwhal_fakes::stripe::{
    CardBehavior, FakeStripe, FakeStripeConfig, Fault, TestCard, DEFAULT_KEY,
};
use narwhal_mail::Secret;
use narwhal_pay::processor::{
    ChargeOutcome, ChargeRequest, LookupOutcome, Processor, RefundOutcome,
};
use narwhal_pay::stripe::{StripeConfig, StripeProcessor};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn config(fake: &FakeStripe) -> StripeConfig {
    let mut c =
        StripeConfig::new("stripe-test", Secret::new(DEFAULT_KEY.to_string())).base_url(fake.url());
    c.request_timeout = Duration::from_millis(700);
    c.max_requests_per_second = 1000;
    c.burst = 1000;
    c
}

fn processor(fake: &FakeStripe) -> StripeProcessor {
    StripeProcessor::new(config(fake)).unwrap()
}

fn request(key: &str, amount: i64, pm: &str) -> ChargeRequest {
    ChargeRequest {
        idempotency_key: key.to_string(),
        amount,
        currency: "usd".to_string(),
        payment_method: pm.to_string(),
        customer: None,
        save_method: false,
        metadata: vec![("donation".to_string(), format!("don-{key}"))],
        description: None,
    }
}

async fn fake() -> FakeStripe {
    FakeStripe::start(FakeStripeConfig::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_charge_succeeds_with_card_fee_and_ledger_entry() {
    let fake = fake().await;
    let p = processor(&fake);
    let ChargeOutcome::Succeeded(c) = p.charge(&request("att-1", 5500, "pm_card_visa")).await
    else {
        panic!("expected success");
    };
    assert!(c.processor_ref.starts_with("pi_"));
    assert_eq!(c.amount, 5500);
    assert_eq!(
        (
            c.card.brand.as_str(),
            c.card.last4.as_str(),
            c.card.exp_year
        ),
        ("visa", "4242", 2034)
    );
    assert_eq!(c.card.fingerprint.as_deref(), Some("fpVisa4242"));
    // 2.9% + 30 cents.
    assert_eq!(c.fee, Some(190));
    let ledger = fake.ledger();
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].payment_intent, c.processor_ref);
    assert_eq!(ledger[0].attempt_key.as_deref(), Some("att-1"));
    assert_eq!(ledger[0].idempotency_key.as_deref(), Some("att-1"));
    assert_eq!(ledger[0].metadata["donation"], "don-att-1");
}

#[tokio::test]
async fn declines_are_declined_with_the_decline_code() {
    let fake = fake().await;
    let p = processor(&fake);
    for (pm, code) in [
        ("pm_card_chargeDeclined", "generic_decline"),
        (
            "pm_card_chargeDeclinedInsufficientFunds",
            "insufficient_funds",
        ),
    ] {
        match p.charge(&request(pm, 2500, pm)).await {
            ChargeOutcome::Declined { code: got, message } => {
                assert_eq!(got, code);
                assert!(!message.is_empty());
            }
            other => panic!("{pm}: {other:?}"),
        }
    }
    fake.set_fault(Fault::DeclineAll);
    assert!(matches!(
        p.charge(&request("att-all", 2500, "pm_card_visa")).await,
        ChargeOutcome::Declined { .. }
    ));
    assert!(fake.ledger().is_empty());
}

#[tokio::test]
async fn authentication_required_is_not_a_success_and_the_intent_is_canceled() {
    let fake = fake().await;
    let p = processor(&fake);
    let outcome = p
        .charge(&request("att-3ds", 2500, "pm_card_authenticationRequired"))
        .await;
    assert!(
        matches!(&outcome, ChargeOutcome::Declined { code, .. } if code == "authentication_required"),
        "{outcome:?}"
    );
    assert!(fake.ledger().is_empty());
    assert_eq!(p.lookup("att-3ds").await, LookupOutcome::NotCharged);
    // The intent was canceled, so nobody can complete it later.
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(narwhal_mail::tls::client_config(None).unwrap())
        .build()
        .unwrap();
    let list: serde_json::Value = http
        .get(format!("{}/v1/payment_intents", fake.url()))
        .bearer_auth(DEFAULT_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"][0]["status"], "canceled");
}

#[tokio::test]
async fn bad_requests_are_invalid() {
    let fake = fake().await;
    let p = processor(&fake);
    match p.charge(&request("att-small", 10, "pm_card_visa")).await {
        ChargeOutcome::Invalid { status, code, .. } => {
            assert_eq!((status, code.as_str()), (400, "amount_too_small"));
        }
        other => panic!("{other:?}"),
    }
    match p.charge(&request("att-pm", 5000, "pm_nonexistent")).await {
        ChargeOutcome::Invalid { status, code, .. } => {
            assert_eq!((status, code.as_str()), (404, "resource_missing"));
        }
        other => panic!("{other:?}"),
    }
    let mut wrong_key = config(&fake);
    wrong_key.secret_key = Secret::new("sk_test_wrong".to_string());
    let p = StripeProcessor::new(wrong_key).unwrap();
    assert!(matches!(
        p.charge(&request("att-key", 5000, "pm_card_visa")).await,
        ChargeOutcome::Invalid { status: 401, .. }
    ));
    assert!(p.health().await.is_err());
    assert!(fake.ledger().is_empty());
}

#[tokio::test]
async fn down_and_rate_limited_are_unavailable_and_charge_nothing() {
    let fake = fake().await;
    let p = processor(&fake);
    fake.set_fault(Fault::Down);
    assert!(matches!(
        p.charge(&request("att-down", 5000, "pm_card_visa")).await,
        ChargeOutcome::Unavailable { .. }
    ));
    assert!(p.health().await.is_err());
    fake.set_fault(Fault::RateLimited);
    assert!(matches!(
        p.charge(&request("att-429", 5000, "pm_card_visa")).await,
        ChargeOutcome::Unavailable { .. }
    ));
    assert!(fake.ledger().is_empty());
    // Neither answer was saved under the key: the same attempt goes through later.
    fake.set_fault(Fault::None);
    assert!(p.health().await.is_ok());
    assert!(matches!(
        p.charge(&request("att-down", 5000, "pm_card_visa")).await,
        ChargeOutcome::Succeeded(_)
    ));
}

#[tokio::test]
async fn a_refused_connection_is_unavailable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let c = StripeConfig::new("closed", Secret::new(DEFAULT_KEY.to_string())).base_url(url);
    let p = StripeProcessor::new(c).unwrap();
    assert!(matches!(
        p.charge(&request("att-closed", 5000, "pm_card_visa")).await,
        ChargeOutcome::Unavailable { .. }
    ));
    assert!(matches!(
        p.lookup("att-closed").await,
        LookupOutcome::Unknown { .. }
    ));
    assert!(matches!(
        p.refund("pi_x", 100, "r-1").await,
        RefundOutcome::Failed { .. }
    ));
}

#[tokio::test]
async fn a_500_is_ambiguous_and_lookup_settles_it_as_not_charged() {
    let fake = fake().await;
    let p = processor(&fake);
    fake.set_fault(Fault::Error500);
    assert!(matches!(
        p.charge(&request("att-500", 5000, "pm_card_visa")).await,
        ChargeOutcome::Ambiguous { .. }
    ));
    fake.set_fault(Fault::None);
    assert_eq!(p.lookup("att-500").await, LookupOutcome::NotCharged);
    assert!(fake.ledger().is_empty());
}

#[tokio::test]
async fn an_ambiguous_timeout_is_settled_by_lookup_finding_the_charge() {
    let fake = FakeStripe::start(FakeStripeConfig {
        ambiguous_hold: Duration::from_secs(3),
        ..FakeStripeConfig::default()
    })
    .await
    .unwrap();
    let p = processor(&fake);
    fake.set_fault(Fault::Ambiguous);
    let started = Instant::now();
    let outcome = p.charge(&request("att-amb", 4200, "pm_card_visa")).await;
    assert!(
        matches!(outcome, ChargeOutcome::Ambiguous { .. }),
        "{outcome:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    // The fake did charge, although the client never heard.
    assert_eq!(fake.ledger().len(), 1);
    // Reads answer even under the fault: the status query settles it at once.
    let LookupOutcome::Charged(c) = p.lookup("att-amb").await else {
        panic!("expected the charge to be found");
    };
    assert_eq!(c.amount, 4200);
    assert_eq!(c.processor_ref, fake.ledger()[0].payment_intent);
    assert_eq!(c.card.last4, "4242");
    assert_eq!(c.fee, Some(152));
    // Retrying the same attempt replays the saved success: still one charge.
    fake.set_fault(Fault::None);
    let ChargeOutcome::Succeeded(again) = p.charge(&request("att-amb", 4200, "pm_card_visa")).await
    else {
        panic!("expected the replayed success");
    };
    assert_eq!(again.processor_ref, c.processor_ref);
    assert_eq!(fake.ledger().len(), 1);
}

#[tokio::test]
async fn lookup_of_an_unknown_key_is_not_charged_and_of_a_decline_too() {
    let fake = fake().await;
    let p = processor(&fake);
    assert_eq!(p.lookup("never-sent").await, LookupOutcome::NotCharged);
    p.charge(&request("att-dec", 5000, "pm_card_chargeDeclined"))
        .await;
    assert_eq!(p.lookup("att-dec").await, LookupOutcome::NotCharged);
    // A key with quotes in it is still found exactly.
    let odd = "it's a \\ key";
    assert!(matches!(
        p.charge(&request(odd, 5000, "pm_card_visa")).await,
        ChargeOutcome::Succeeded(_)
    ));
    assert!(matches!(p.lookup(odd).await, LookupOutcome::Charged(_)));
    fake.set_fault(Fault::Down);
    assert!(matches!(p.lookup(odd).await, LookupOutcome::Unknown { .. }));
}

#[tokio::test]
async fn the_same_attempt_twice_is_one_charge() {
    let fake = fake().await;
    let p = processor(&fake);
    let r = request("att-twice", 3000, "pm_card_mastercard");
    let (a, b) = tokio::join!(p.charge(&r), async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        p.charge(&r).await
    });
    // One of them may meet the other in flight (409: ambiguous); never two charges.
    let refs: Vec<String> = [a, b]
        .into_iter()
        .filter_map(|o| match o {
            ChargeOutcome::Succeeded(c) => Some(c.processor_ref),
            ChargeOutcome::Ambiguous { .. } => None,
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(!refs.is_empty());
    let ChargeOutcome::Succeeded(third) = p.charge(&r).await else {
        panic!("replay");
    };
    assert!(refs.iter().all(|r| *r == third.processor_ref));
    assert_eq!(fake.ledger().len(), 1);
    assert!(fake.double_charges("narwhal_attempt").is_empty());
    assert!(fake.stats().replayed >= 1);
    // The same key with other parameters is our bug: invalid, and still one charge.
    let mut other = r.clone();
    other.amount = 3100;
    assert!(matches!(
        p.charge(&other).await,
        ChargeOutcome::Invalid { status: 400, .. }
    ));
    assert_eq!(fake.ledger().len(), 1);
}

#[tokio::test]
async fn a_request_meeting_its_twin_in_flight_waits_for_its_answer() {
    let fake = fake().await;
    fake.set_latency(Duration::from_millis(300));
    let p = Arc::new(processor(&fake));
    let r = request("att-inflight", 3000, "pm_card_visa");
    let first = {
        let p = p.clone();
        let r = r.clone();
        tokio::spawn(async move { p.charge(&r).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The twin is told 409, retries with the same key, and gets the first's answer.
    let ChargeOutcome::Succeeded(second) = p.charge(&r).await else {
        panic!("expected the first request's success");
    };
    let ChargeOutcome::Succeeded(first) = first.await.unwrap() else {
        panic!("expected success");
    };
    assert_eq!(first.processor_ref, second.processor_ref);
    assert!(fake.stats().conflicts >= 1);
    assert!(fake.stats().replayed >= 1);
    assert_eq!(fake.ledger().len(), 1);
}

#[tokio::test]
async fn a_twin_that_stays_in_flight_past_the_timeout_is_ambiguous() {
    let fake = fake().await;
    fake.set_latency(Duration::from_millis(1500));
    let p = Arc::new(processor(&fake));
    let r = request("att-slow-twin", 3000, "pm_card_visa");
    let first = {
        let p = p.clone();
        let r = r.clone();
        tokio::spawn(async move { p.charge(&r).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = p.charge(&r).await;
    assert!(
        matches!(second, ChargeOutcome::Ambiguous { .. }),
        "{second:?}"
    );
    assert!(matches!(
        first.await.unwrap(),
        ChargeOutcome::Ambiguous { .. }
    ));
    // The fake finishes the first request anyway: a later lookup finds one charge.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    fake.set_latency(Duration::ZERO);
    assert!(matches!(
        p.lookup("att-slow-twin").await,
        LookupOutcome::Charged(_)
    ));
    assert_eq!(fake.ledger().len(), 1);
}

#[tokio::test]
async fn refunds_full_partial_and_too_much() {
    let fake = fake().await;
    let p = processor(&fake);
    let ChargeOutcome::Succeeded(c) = p.charge(&request("att-r", 10_000, "pm_card_visa")).await
    else {
        panic!();
    };
    let RefundOutcome::Refunded { refund_ref, amount } =
        p.refund(&c.processor_ref, 4_000, "ref-1").await
    else {
        panic!();
    };
    assert!(refund_ref.starts_with("re_"));
    assert_eq!(amount, 4_000);
    // Retried with the same key: the same refund, not a second one.
    assert_eq!(
        p.refund(&c.processor_ref, 4_000, "ref-1").await,
        RefundOutcome::Refunded {
            refund_ref: refund_ref.clone(),
            amount: 4_000
        }
    );
    assert!(matches!(
        p.refund(&c.processor_ref, 6_001, "ref-2").await,
        RefundOutcome::Refused { code, .. } if code == "amount_too_large"
    ));
    assert!(matches!(
        p.refund(&c.processor_ref, 6_000, "ref-3").await,
        RefundOutcome::Refunded { amount: 6_000, .. }
    ));
    assert!(matches!(
        p.refund(&c.processor_ref, 1, "ref-4").await,
        RefundOutcome::Refused { code, .. } if code == "charge_already_refunded"
    ));
    assert_eq!(fake.ledger()[0].refunded, 10_000);
    let listed = p.list_payments(0).await.unwrap();
    assert_eq!(listed[0].refunded, 10_000);
}

#[tokio::test]
async fn list_payments_walks_every_page() {
    let fake = fake().await;
    let p = processor(&fake);
    let t0 = time::OffsetDateTime::now_utc().unix_timestamp();
    for i in 0..230 {
        let pm = if i % 10 == 0 {
            "pm_card_chargeDeclined"
        } else {
            "pm_card_visa"
        };
        p.charge(&request(&format!("att-l{i}"), 1000 + i, pm)).await;
    }
    let listed = p.list_payments(t0).await.unwrap();
    assert_eq!(listed.len(), 230);
    let mut keys: Vec<String> = listed
        .iter()
        .filter_map(|x| x.attempt_key.clone())
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 230);
    assert_eq!(
        listed.iter().filter(|x| x.status == "succeeded").count(),
        207
    );
    assert!(listed.iter().all(|x| x.created >= t0));
    let x = listed
        .iter()
        .find(|x| x.attempt_key.as_deref() == Some("att-l7"))
        .unwrap();
    assert_eq!(x.amount, 1007);
    // Nothing after a future time.
    assert!(p.list_payments(t0 + 3600).await.unwrap().is_empty());
}

#[tokio::test]
async fn minted_cards_carry_their_fingerprint() {
    let fake = fake().await;
    let p = processor(&fake);
    let stolen = fake.mint_card(
        TestCard::visa("fpStolen1").behaves(CardBehavior::Decline("stolen_card".to_string())),
    );
    let good = fake.mint_card(TestCard::visa("fpGood1"));
    assert!(matches!(
        p.charge(&request("att-s", 100, &stolen)).await,
        ChargeOutcome::Declined { code, .. } if code == "stolen_card"
    ));
    let ChargeOutcome::Succeeded(c) = p.charge(&request("att-g", 100, &good)).await else {
        panic!();
    };
    assert_eq!(c.card.fingerprint.as_deref(), Some("fpGood1"));
}

#[tokio::test]
async fn a_burst_is_queued_within_the_rate_and_never_refused() {
    // The fake allows 20/s per key; the adapter is set to 15/s with bursts of 5.
    let fake = FakeStripe::start(FakeStripeConfig {
        rate_limit: Some(20),
        ..FakeStripeConfig::default()
    })
    .await
    .unwrap();
    let mut c = config(&fake);
    c.max_requests_per_second = 15;
    c.burst = 5;
    let p = Arc::new(StripeProcessor::new(c).unwrap());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..35 {
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            p.charge(&request(&format!("att-b{i}"), 5000, "pm_card_visa"))
                .await
        }));
    }
    for t in tasks {
        let outcome = t.await.unwrap();
        assert!(
            matches!(outcome, ChargeOutcome::Succeeded(_)),
            "{outcome:?}"
        );
    }
    // 5 at once, then 30 more at 15/s: at least 2 s.
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(fake.stats().rate_limited, 0);
    assert_eq!(fake.ledger().len(), 35);

    // Without pacing, the same burst meets 429s, which is what the pacer prevents.
    let mut unpaced = config(&fake);
    unpaced.max_requests_per_second = 10_000;
    unpaced.burst = 10_000;
    let q = Arc::new(StripeProcessor::new(unpaced).unwrap());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut tasks = Vec::new();
    for i in 0..35 {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            q.charge(&request(&format!("att-u{i}"), 5000, "pm_card_visa"))
                .await
        }));
    }
    let mut unavailable = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), ChargeOutcome::Unavailable { .. }) {
            unavailable += 1;
        }
    }
    assert!(unavailable > 0);
}
