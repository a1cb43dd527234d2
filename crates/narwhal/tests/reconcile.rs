#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Reconciliation against the fake Stripe's own books, on both backends: each class
//! (match, mismatch, missing both ways, duplicate) made by acting on the fake directly
//! behind Narwhal's back, and the run stored for the console.

use narwhal_domain::limits::LimitTable;
use narwhal_domain::PersonId;
use narwhal_fakes::stripe::{FakeStripe, FakeStripeConfig, DEFAULT_KEY};
use narwhal_mail::Secret;
use narwhal_pay::reconcile::reconcile;
use narwhal_pay::router::{BreakerConfig, Router};
use narwhal_pay::service::{DonationRequest, Donations, PayConfig};
use narwhal_pay::stripe::{StripeConfig, StripeProcessor};
use narwhal_pay::Processor;
use narwhal_store::both_backends;
use narwhal_store::donations::{CardOnFile, Completion, Finish, NewDonation};
use narwhal_store::test_support::TestDb;
use std::sync::Arc;

fn processor(name: &str, fake: &FakeStripe) -> Arc<dyn Processor> {
    let mut c = StripeConfig::new(name, Secret::new(DEFAULT_KEY.to_string())).base_url(fake.url());
    c.max_requests_per_second = 1_000;
    c.burst = 100;
    Arc::new(StripeProcessor::new(c).unwrap())
}

/// A gift as a client would send it (the JSON the donation API takes).
fn gift(key: &str, cents: i64, pm: &str) -> DonationRequest {
    serde_json::from_value(serde_json::json!({
        "idempotency_key": key,
        "amount_cents": cents,
        "donor": {"first_name": "Ada", "last_name": "Lovelace", "email": format!("{key}@example.org"),
            "address1": "1 Main St", "city": "Columbus", "state": "OH", "zip": "43215",
            "employer": "Acme", "occupation": "Engineer"},
        "attestations": {"own_funds": true, "citizen_or_resident": true, "not_contractor": true},
        "payment_method": pm,
        "channel": "api",
    }))
    .unwrap()
}

/// A call straight to the fake, as if someone used the processor's dashboard.
async fn behind_our_back(
    fake: &FakeStripe,
    path: &str,
    form: &[(&str, &str)],
) -> serde_json::Value {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", fake.url()))
        .bearer_auth(DEFAULT_KEY)
        .form(form)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap()
}

async fn every_class_is_found_and_the_run_is_kept(db: TestDb) {
    let a = FakeStripe::start(FakeStripeConfig::default())
        .await
        .unwrap();
    let b = FakeStripe::start(FakeStripeConfig::default())
        .await
        .unwrap();
    let processors = vec![processor("stripe-a", &a), processor("stripe-b", &b)];
    let router = Router::new(processors.clone(), BreakerConfig::default());
    let donations = Donations::new(db.store.clone(), Arc::new(router), PayConfig::default());
    let since = narwhal_store::now_ms() / 1000 - 5;

    // match: a charge both sides agree on, and a decline neither charged.
    let ok = donations
        .take(gift("ok", 2_500, "pm_card_visa"))
        .await
        .unwrap();
    assert_eq!(ok.donation.state, "succeeded");
    let no = donations
        .take(gift("no", 900, "pm_card_chargeDeclined"))
        .await
        .unwrap();
    assert_eq!(no.donation.state, "declined");
    // mismatch: refunded at the processor, not with us.
    let refunded = donations
        .take(gift("rf", 4_000, "pm_card_visa"))
        .await
        .unwrap();
    let pi = refunded.donation.processor_ref.clone().unwrap();
    behind_our_back(
        &a,
        "/v1/refunds",
        &[("payment_intent", &pi), ("amount", "1500")],
    )
    .await;
    // duplicate: a second charge at the other processor carrying the same donation.
    let dup = donations
        .take(gift("dup", 3_300, "pm_card_visa"))
        .await
        .unwrap();
    let second_try = format!("{}-2", dup.donation.public_id);
    behind_our_back(
        &b,
        "/v1/payment_intents",
        &[
            ("amount", "3300"),
            ("currency", "usd"),
            ("payment_method", "pm_card_visa"),
            ("confirm", "true"),
            ("metadata[narwhal_attempt]", &second_try),
        ],
    )
    .await;
    // missing, theirs only: a charge nobody told us about.
    let stray = behind_our_back(
        &b,
        "/v1/payment_intents",
        &[
            ("amount", "777"),
            ("currency", "usd"),
            ("payment_method", "pm_card_visa"),
            ("confirm", "true"),
        ],
    )
    .await;
    // missing, ours only: succeeded with us, unknown to the processor.
    let table = LimitTable::default();
    let ghost = NewDonation {
        public_id: "don_ghost".into(),
        idempotency_key: "ghost".into(),
        request_hash: "h".into(),
        person_id: PersonId(ok.donation.person_id),
        amount_cents: 1_200,
        currency: "usd".into(),
        channel: "api".into(),
        refcode: None,
        source: None,
        donor_json: "{}".into(),
        employer: Some("Acme".into()),
        occupation: Some("Engineer".into()),
        payment_method: Some("pm_card_visa".into()),
        save_method: false,
        client_ip: None,
        plan_id: None,
        first_attempt: Some(("stripe-a".into(), "don_ghost-1".into())),
        pledge_token_hash: None,
        year: narwhal_store::donations::year_of_ms(narwhal_store::now_ms()),
    };
    let begun = db.store.begin_donations(&[ghost], &table).await.unwrap();
    let id = match &begun[0] {
        narwhal_store::donations::Begun::Created { id, .. } => *id,
        other => panic!("{other:?}"),
    };
    db.store
        .finish_donations(
            &[Completion {
                donation_id: id,
                attempt_key: Some("don_ghost-1".into()),
                finish: Finish::Succeeded {
                    processor: "stripe-a".into(),
                    processor_ref: "pi_ghost".into(),
                    amount_cents: 1_200,
                    fee_cents: None,
                    card: CardOnFile::default(),
                },
            }],
            &table,
        )
        .await
        .unwrap();

    let report = reconcile(&db.store, &processors, since).await.unwrap();
    let class_of = |pred: &dyn Fn(&narwhal_store::reconciliations::ReconItem) -> bool| {
        report
            .items
            .iter()
            .filter(|i| pred(i))
            .map(|i| i.class.as_str())
            .collect::<Vec<_>>()
    };
    let of_donation = |d: &str| {
        let d = d.to_string();
        class_of(&move |i| i.donation.as_deref() == Some(d.as_str()))
    };
    assert_eq!(of_donation(&ok.donation.public_id), ["match"]);
    assert_eq!(of_donation(&no.donation.public_id), ["match"]);
    assert_eq!(of_donation(&refunded.donation.public_id), ["mismatch"]);
    assert_eq!(
        of_donation(&dup.donation.public_id),
        ["duplicate", "duplicate"]
    );
    assert_eq!(of_donation("don_ghost"), ["missing"]);
    // The fakes number their ids alike: a payment is known by processor and id.
    let stray_id = stray["id"].as_str().unwrap().to_string();
    assert_eq!(
        class_of(
            &|i| i.processor == "stripe-b" && i.processor_ref.as_deref() == Some(stray_id.as_str())
        ),
        ["missing"]
    );
    let mismatch = report.items.iter().find(|i| i.class == "mismatch").unwrap();
    assert_eq!(
        (mismatch.our_cents, mismatch.their_cents),
        (Some(4_000), Some(2_500))
    );
    assert!(mismatch.detail.contains("refunded"), "{}", mismatch.detail);
    assert_eq!(
        (
            report.run.matched,
            report.run.mismatched,
            report.run.missing,
            report.run.duplicate
        ),
        (2, 1, 2, 2)
    );
    assert!(report.run.errors.is_empty());
    // Kept for the console: the latest run with what needs a look.
    let (run, items) = db.store.latest_reconciliation().await.unwrap().unwrap();
    assert_eq!(run.id, report.run.id);
    assert_eq!(items.len(), 5);
    assert!(items.iter().all(|i| i.class != "match"));

    // A processor that cannot be listed is reported, and its donations are not
    // called missing.
    b.set_fault(narwhal_fakes::stripe::Fault::Down);
    let only_a_listed = reconcile(&db.store, &processors, since).await.unwrap();
    assert_eq!(
        only_a_listed.run.errors.len(),
        1,
        "{:?}",
        only_a_listed.run.errors
    );
    assert!(only_a_listed.run.errors[0].starts_with("stripe-b"));
    assert_eq!(only_a_listed.run.duplicate, 0);
}

both_backends!(every_class_is_found_and_the_run_is_kept);

/// `narwhal donations reconcile` itself: processors from `[donations]`, the table,
/// `--json`, and the exit status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_prints_the_table_and_json_and_fails_on_a_discrepancy() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = narwhal_store::Store::open(&narwhal_store::DatabaseTarget::SqliteDir(data.clone()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let fake = FakeStripe::start(FakeStripeConfig::default())
        .await
        .unwrap();
    let router = Router::new(vec![processor("stripe-a", &fake)], BreakerConfig::default());
    let donations = Donations::new(store.clone(), Arc::new(router), PayConfig::default());
    let taken = donations
        .take(gift("cli", 2_500, "pm_card_visa"))
        .await
        .unwrap();
    assert_eq!(taken.donation.state, "succeeded");
    store.close().await;
    let config = dir.path().join("narwhal.toml");
    std::fs::write(
        &config,
        format!(
            "[[donations.processors]]\nname = \"stripe-a\"\nkind = \"stripe\"\napi_base = \"{}\"\nsecret_key_env = \"RECONCILE_TEST_KEY\"\n",
            fake.url()
        ),
    )
    .unwrap();
    let run = |args: &'static [&'static str]| {
        let (config, data) = (config.clone(), data.clone());
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_narwhal"))
                .arg("--config")
                .arg(&config)
                .args(args)
                .env_remove("NARWHAL_DATABASE_URL")
                .env("NARWHAL_DATA_DIR", &data)
                .env("RECONCILE_TEST_KEY", DEFAULT_KEY)
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).to_string(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            )
        })
    };
    let (code, out, err) = run(&["donations", "reconcile", "--since", "1h", "--json"])
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{out}\n{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["run"]["matched"], 1, "{out}");
    assert_eq!(
        report["items"][0]["donation"],
        taken.donation.public_id.as_str()
    );
    // A charge made behind our back: missing, shown in the table, exit status 1.
    behind_our_back(
        &fake,
        "/v1/payment_intents",
        &[
            ("amount", "1999"),
            ("currency", "usd"),
            ("payment_method", "pm_card_visa"),
            ("confirm", "true"),
        ],
    )
    .await;
    let (code, out, err) = run(&["donations", "reconcile", "--since", "1h"])
        .await
        .unwrap();
    assert_eq!(code, Some(1), "{out}\n{err}");
    let counts: Vec<&str> = out.lines().filter(|l| l.starts_with("m")).collect();
    assert!(counts.contains(&"match             1"), "{out}");
    assert!(counts.contains(&"missing           1"), "{out}");
    assert!(
        out.contains("19.99") && out.contains("no donation of ours"),
        "{out}"
    );
}
