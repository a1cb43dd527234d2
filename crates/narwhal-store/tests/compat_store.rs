#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The Stripe-compatible API's storage on both backends: idempotency keys (first
//! response replayed, other parameters refused, in flight told apart, a dead request
//! taken over), intents advanced only from the confirmation they were read at, and
//! reconciliation runs.

use narwhal_store::api_idempotency::IdemBegin;
use narwhal_store::both_backends;
use narwhal_store::reconciliations::{ReconItem, ReconRun};
use narwhal_store::test_support::TestDb;

async fn idempotency_keys_replay_refuse_and_wait(db: TestDb) {
    let s = &db.store;
    let begin = |key: &'static str, hash: &'static str| async move {
        s.idempotency_begin("token:web", key, hash, 60_000)
            .await
            .unwrap()
    };
    assert_eq!(begin("k1", "h1").await, IdemBegin::Fresh);
    // While the first runs: in flight; other parameters: refused.
    assert_eq!(begin("k1", "h1").await, IdemBegin::InFlight);
    assert_eq!(begin("k1", "h2").await, IdemBegin::Mismatch);
    // Another caller's key space is separate.
    assert_eq!(
        s.idempotency_begin("token:other", "k1", "h9", 60_000)
            .await
            .unwrap(),
        IdemBegin::Fresh
    );
    assert!(s
        .idempotency_finish("token:web", "k1", 402, "{\"error\":{}}")
        .await
        .unwrap());
    // Saved once: a second finish changes nothing.
    assert!(!s
        .idempotency_finish("token:web", "k1", 200, "other")
        .await
        .unwrap());
    assert_eq!(
        begin("k1", "h1").await,
        IdemBegin::Done {
            status: 402,
            body: "{\"error\":{}}".into()
        }
    );
    assert_eq!(begin("k1", "h2").await, IdemBegin::Mismatch);
    // A released key runs again.
    assert_eq!(begin("k2", "h1").await, IdemBegin::Fresh);
    s.idempotency_release("token:web", "k2").await.unwrap();
    assert_eq!(begin("k2", "h1").await, IdemBegin::Fresh);
    // A request left in flight past the stale time is taken over, once.
    assert_eq!(begin("k3", "h1").await, IdemBegin::Fresh);
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    assert_eq!(
        s.idempotency_begin("token:web", "k3", "h1", 10)
            .await
            .unwrap(),
        IdemBegin::Fresh
    );
    // The takeover is in flight again: a retry (whose stale time has not passed: the
    // 10 ms above could, on a loaded machine, before this call even starts) waits.
    assert_eq!(
        s.idempotency_begin("token:web", "k3", "h1", 60_000)
            .await
            .unwrap(),
        IdemBegin::InFlight
    );
}

async fn intents_advance_only_from_what_was_read(db: TestDb) {
    let s = &db.store;
    let params = serde_json::json!({"payment_method": "pm_card_visa"});
    assert!(s
        .create_compat_intent("pi_nw_1", "token:web", 5_500, "usd", &params)
        .await
        .unwrap());
    // A retried create finds the first.
    assert!(!s
        .create_compat_intent("pi_nw_1", "token:web", 9_900, "usd", &params)
        .await
        .unwrap());
    let i = s.compat_intent("pi_nw_1").await.unwrap().unwrap();
    assert_eq!((i.amount_cents, i.confirmations), (5_500, 0));
    assert_eq!(i.params["payment_method"], "pm_card_visa");
    let new_params = serde_json::json!({"payment_method": "pm_card_mastercard"});
    assert!(s
        .advance_compat_intent("pi_nw_1", 0, 1, &new_params)
        .await
        .unwrap());
    // A second confirmation read at 0 loses.
    assert!(!s
        .advance_compat_intent("pi_nw_1", 0, 1, &params)
        .await
        .unwrap());
    let i = s.compat_intent("pi_nw_1").await.unwrap().unwrap();
    assert_eq!(i.confirmations, 1);
    assert_eq!(i.params["payment_method"], "pm_card_mastercard");
    assert!(s.compat_intent("pi_nope").await.unwrap().is_none());
}

async fn the_latest_reconciliation_is_kept_with_what_needs_a_look(db: TestDb) {
    let s = &db.store;
    assert!(s.latest_reconciliation().await.unwrap().is_none());
    let item = |class: &str, r: &str| ReconItem {
        class: class.into(),
        processor: "stripe-a".into(),
        processor_ref: Some(r.into()),
        donation: Some(format!("don_{r}")),
        our_cents: Some(100),
        their_cents: Some(if class == "mismatch" { 50 } else { 100 }),
        our_state: Some("succeeded".into()),
        their_status: Some("succeeded".into()),
        detail: "x".into(),
    };
    let mut run = ReconRun {
        id: 0,
        since_ms: 1,
        processors: vec!["stripe-a".into()],
        matched: 1,
        mismatched: 1,
        missing: 0,
        duplicate: 0,
        errors: vec![],
        started_at: 10,
        finished_at: 20,
    };
    s.save_reconciliation(&run, &[item("match", "pi_1"), item("mismatch", "pi_2")])
        .await
        .unwrap();
    run.matched = 2;
    run.mismatched = 0;
    run.errors = vec!["stripe-b: down".into()];
    let id = s
        .save_reconciliation(&run, &[item("match", "pi_1"), item("match", "pi_2")])
        .await
        .unwrap();
    let (latest, items) = s.latest_reconciliation().await.unwrap().unwrap();
    assert_eq!(latest.id, id);
    assert_eq!((latest.matched, latest.mismatched), (2, 0));
    assert_eq!(latest.errors, vec!["stripe-b: down".to_string()]);
    assert!(items.is_empty(), "{items:?}");
}

both_backends!(
    idempotency_keys_replay_refuse_and_wait,
    intents_advance_only_from_what_was_read,
    the_latest_reconciliation_is_kept_with_what_needs_a_look,
);
