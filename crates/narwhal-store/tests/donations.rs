#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Donation storage on both backends: idempotency keys, limits under concurrency,
//! forward-only states, the double-entry ledger and refunds.

use narwhal_domain::limits::LimitTable;
use narwhal_domain::PersonId;
use narwhal_store::donations::{
    Begun, CardOnFile, Completion, DonationState, FailOver, Finish, NewDonation,
};
use narwhal_store::test_support::TestDb;
use narwhal_store::{both_backends, Store};

fn gift(key: &str, person: i64, cents: i64) -> NewDonation {
    NewDonation {
        public_id: format!("don_{key}"),
        idempotency_key: key.to_string(),
        request_hash: format!("hash-{cents}"),
        person_id: PersonId(person),
        amount_cents: cents,
        currency: "usd".into(),
        channel: "api".into(),
        refcode: Some("email-1".into()),
        source: None,
        donor_json: "{}".into(),
        employer: Some("Acme".into()),
        occupation: Some("Teacher".into()),
        payment_method: Some("pm_card_visa".into()),
        save_method: false,
        client_ip: None,
        plan_id: None,
        first_attempt: Some(("stripe-a".into(), format!("don_{key}-1"))),
        pledge_token_hash: None,
        year: 2026,
    }
}

async fn begin_one(store: &Store, g: NewDonation) -> Begun {
    store
        .begin_donations(&[g], &LimitTable::default())
        .await
        .unwrap()
        .pop()
        .unwrap()
}

fn created_id(b: &Begun) -> i64 {
    match b {
        Begun::Created { id, .. } => *id,
        other => panic!("expected Created, got {other:?}"),
    }
}

fn charged(pi: &str, cents: i64) -> Finish {
    Finish::Succeeded {
        processor: "stripe-a".into(),
        processor_ref: pi.into(),
        amount_cents: cents,
        fee_cents: Some(cents * 3 / 100),
        card: CardOnFile {
            brand: "visa".into(),
            last4: "4242".into(),
            exp: "12/2030".into(),
            fingerprint: Some("fp1".into()),
        },
    }
}

async fn same_key_same_params_is_the_same_donation_and_other_params_are_refused(db: TestDb) {
    let s = &db.store;
    let id = created_id(&begin_one(s, gift("k1", 1, 5_000)).await);
    match begin_one(s, gift("k1", 1, 5_000)).await {
        Begun::Existing(row) => {
            assert_eq!(row.id, id);
            assert_eq!(row.state, "processing");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        begin_one(s, gift("k1", 1, 7_000)).await,
        Begun::KeyReused
    ));
    // Only the first counted against the donor.
    let totals = s.contribution_totals(PersonId(1)).await.unwrap();
    assert_eq!(totals.get("E:P2026"), Some(&5_000));
    assert_eq!(totals.get("C:2026"), Some(&5_000));
    assert_eq!(totals.get("Y:2026"), Some(&5_000));
}

async fn two_simultaneous_gifts_over_the_limit_do_not_both_pass(db: TestDb) {
    let s = db.store.clone();
    // Ten rounds, each racing two $3,000 gifts from a fresh donor.
    for round in 0..10 {
        let person = 100 + round;
        let (a, b) = tokio::join!(
            {
                let s = s.clone();
                tokio::spawn(async move {
                    begin_one(&s, gift(&format!("a{round}"), person, 300_000)).await
                })
            },
            {
                let s = s.clone();
                tokio::spawn(async move {
                    begin_one(&s, gift(&format!("b{round}"), person, 300_000)).await
                })
            }
        );
        let results = [a.unwrap(), b.unwrap()];
        let created = results
            .iter()
            .filter(|r| matches!(r, Begun::Created { .. }))
            .count();
        let refused: Vec<_> = results
            .iter()
            .filter_map(|r| match r {
                Begun::OverLimit(refusal) => Some(refusal.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(created, 1, "round {round}: {results:?}");
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].room_cents, 50_000);
        let totals = s.contribution_totals(PersonId(person)).await.unwrap();
        assert_eq!(totals.get("E:P2026"), Some(&300_000));
    }
}

async fn a_charge_posts_a_balanced_ledger_and_states_only_move_forward(db: TestDb) {
    let s = &db.store;
    let table = LimitTable::default();
    let id = created_id(&begin_one(s, gift("k2", 2, 25_000)).await);
    let done = s
        .finish_donations(
            &[Completion {
                donation_id: id,
                attempt_key: Some("don_k2-1".into()),
                finish: charged("pi_1", 25_000),
            }],
            &table,
        )
        .await
        .unwrap();
    assert_eq!(done, vec![true]);
    let row = s.donation_by_id(id).await.unwrap().unwrap();
    assert_eq!(row.state, "succeeded");
    assert_eq!(row.card_last4.as_deref(), Some("4242"));
    assert!(row.itemized, "$250 passes the $200 itemization threshold");
    assert!(!row.needs_followup, "employer and occupation were given");
    let ledger = s.ledger_of(id).await.unwrap();
    assert_eq!(ledger.len(), 4, "{ledger:?}");
    assert_eq!(ledger.iter().map(|e| e.amount_cents).sum::<i64>(), 0);
    assert!(s.unbalanced_ledger_txns().await.unwrap().is_empty());
    let attempts = s.donation_attempts(id).await.unwrap();
    assert_eq!(attempts[0].state, "succeeded");
    assert_eq!(attempts[0].processor_ref.as_deref(), Some("pi_1"));

    // A late "declined" for a succeeded donation changes nothing, room included.
    let again = s
        .finish_donations(
            &[Completion {
                donation_id: id,
                attempt_key: None,
                finish: Finish::Declined {
                    code: "card_declined".into(),
                    message: "x".into(),
                },
            }],
            &table,
        )
        .await
        .unwrap();
    assert_eq!(again, vec![false]);
    assert_eq!(
        s.donation_by_id(id).await.unwrap().unwrap().state,
        "succeeded"
    );
    assert_eq!(
        s.contribution_totals(PersonId(2))
            .await
            .unwrap()
            .get("E:P2026"),
        Some(&25_000)
    );
    // Replaying the success posts nothing twice.
    s.finish_donations(
        &[Completion {
            donation_id: id,
            attempt_key: None,
            finish: charged("pi_1", 25_000),
        }],
        &table,
    )
    .await
    .unwrap();
    assert_eq!(s.ledger_of(id).await.unwrap().len(), 4);
}

async fn a_decline_gives_the_room_back(db: TestDb) {
    let s = &db.store;
    let table = LimitTable::default();
    let id = created_id(&begin_one(s, gift("k3", 3, 350_000)).await);
    assert!(matches!(
        begin_one(s, gift("k4", 3, 100)).await,
        Begun::OverLimit(_)
    ));
    s.finish_donations(
        &[Completion {
            donation_id: id,
            attempt_key: Some("don_k3-1".into()),
            finish: Finish::Declined {
                code: "card_declined".into(),
                message: "Your card was declined.".into(),
            },
        }],
        &table,
    )
    .await
    .unwrap();
    assert_eq!(
        s.donation_by_id(id).await.unwrap().unwrap().state,
        "declined"
    );
    assert_eq!(
        s.contribution_totals(PersonId(3))
            .await
            .unwrap()
            .get("E:P2026"),
        Some(&0)
    );
    created_id(&begin_one(s, gift("k5", 3, 100)).await);
    assert!(s.ledger_of(id).await.unwrap().is_empty());
}

async fn refunds_are_idempotent_and_never_exceed_the_gift(db: TestDb) {
    let s = &db.store;
    let table = LimitTable::default();
    let id = created_id(&begin_one(s, gift("k6", 6, 10_000)).await);
    s.finish_donations(
        &[Completion {
            donation_id: id,
            attempt_key: Some("don_k6-1".into()),
            finish: charged("pi_6", 10_000),
        }],
        &table,
    )
    .await
    .unwrap();
    assert_eq!(
        s.record_refund(id, "re_1", 4_000, &table).await.unwrap(),
        Some(DonationState::PartiallyRefunded)
    );
    assert_eq!(
        s.record_refund(id, "re_1", 4_000, &table).await.unwrap(),
        None
    );
    assert!(s.record_refund(id, "re_2", 7_000, &table).await.is_err());
    assert_eq!(
        s.record_refund(id, "re_3", 6_000, &table).await.unwrap(),
        Some(DonationState::Refunded)
    );
    let row = s.donation_by_id(id).await.unwrap().unwrap();
    assert_eq!(row.refunded_cents, 10_000);
    assert_eq!(
        s.contribution_totals(PersonId(6))
            .await
            .unwrap()
            .get("C:2026"),
        Some(&0)
    );
    assert!(s.unbalanced_ledger_txns().await.unwrap().is_empty());
    let contributions: i64 = s
        .ledger_of(id)
        .await
        .unwrap()
        .iter()
        .filter(|e| e.account == "contributions")
        .map(|e| e.amount_cents)
        .sum();
    assert_eq!(contributions, 0, "charged then fully refunded");
}

async fn pledges_wait_and_are_completed_by_a_charge(db: TestDb) {
    let s = &db.store;
    let table = LimitTable::default();
    let mut g = gift("k7", 7, 5_500);
    g.first_attempt = None;
    g.pledge_token_hash = Some("th".into());
    let id = created_id(&begin_one(s, g).await);
    assert_eq!(
        s.donation_by_id(id).await.unwrap().unwrap().state,
        "pledged"
    );
    // The pledge holds room.
    assert_eq!(
        s.contribution_totals(PersonId(7))
            .await
            .unwrap()
            .get("E:P2026"),
        Some(&5_500)
    );
    s.start_attempt(id, "stripe-a", "don_k7-1").await.unwrap();
    // A declined card keeps it a pledge.
    let r = s
        .finish_donations(
            &[Completion {
                donation_id: id,
                attempt_key: Some("don_k7-1".into()),
                finish: Finish::Declined {
                    code: "card_declined".into(),
                    message: "declined".into(),
                },
            }],
            &table,
        )
        .await
        .unwrap();
    assert_eq!(r, vec![false]);
    assert_eq!(
        s.donation_by_id(id).await.unwrap().unwrap().state,
        "pledged"
    );
    assert_eq!(
        s.start_attempt(id, "stripe-a", "don_k7-2").await.unwrap(),
        2
    );
    s.finish_donations(
        &[Completion {
            donation_id: id,
            attempt_key: Some("don_k7-2".into()),
            finish: charged("pi_7", 5_500),
        }],
        &table,
    )
    .await
    .unwrap();
    assert_eq!(
        s.donation_by_id(id).await.unwrap().unwrap().state,
        "succeeded"
    );
    assert_eq!(
        s.contribution_totals(PersonId(7))
            .await
            .unwrap()
            .get("E:P2026"),
        Some(&5_500)
    );
}

async fn webhook_events_are_recorded_once(db: TestDb) {
    let s = &db.store;
    assert!(s
        .record_payment_event("evt_1", "stripe-a", "charge.refunded", Some("pi_1"), "{}")
        .await
        .unwrap());
    assert!(!s
        .record_payment_event("evt_1", "stripe-a", "charge.refunded", Some("pi_1"), "{}")
        .await
        .unwrap());
}

/// A short name for what `begin_donations` decided, to compare two runs.
fn kind(b: &Begun) -> &'static str {
    match b {
        Begun::Created { .. } => "created",
        Begun::Existing(_) => "existing",
        Begun::KeyReused => "key_reused",
        Begun::OverLimit(_) => "over_limit",
    }
}

/// Runs one scenario with donors from `base`, either as whole batches (the set-based
/// path) or one gift at a time through the item-by-item path, and returns what each step decided
/// plus every donor's totals and the final states.
async fn scenario(s: &Store, base: i64, batched: bool) -> Vec<String> {
    let table = LimitTable::default();
    let tag = if batched { "b" } else { "i" };
    let k = |name: &str| format!("{tag}-{name}");
    // Earlier gifts: one to replay, one whose key comes back with other parameters.
    begin_one(s, gift(&k("pre"), base, 5_000)).await;
    begin_one(s, gift(&k("pre2"), base + 1, 5_000)).await;
    let mut pledge = gift(&k("c"), base + 2, 10_000);
    pledge.first_attempt = None;
    pledge.pledge_token_hash = Some(format!("{tag}-pledge-hash"));
    let batch = vec![
        gift(&k("pre"), base, 5_000),
        gift(&k("pre2"), base + 1, 7_000),
        gift(&k("a"), base + 3, 300_000),
        // The same donor again, in the same batch: over the limit with the first.
        gift(&k("b"), base + 3, 300_000),
        pledge,
        gift(&k("d"), base + 4, 20_000),
        gift(&k("e"), base + 5, 40_000),
    ];
    let begun: Vec<Begun> = if batched {
        s.begin_donations(&batch, &table).await.unwrap()
    } else {
        let mut v = Vec::new();
        for g in batch {
            v.extend(s.begin_donations_each(&[g], &table).await.unwrap());
        }
        v
    };
    let mut out: Vec<String> = begun.iter().map(|b| kind(b).to_string()).collect();
    if let Begun::OverLimit(r) = &begun[3] {
        out.push(format!("room {}", r.room_cents));
    }
    let id = |i: usize| created_id(&begun[i]);
    let (a, c, d, e) = (id(2), id(4), id(5), id(6));
    let finish = |donation_id: i64, key: Option<String>, finish: Finish| Completion {
        donation_id,
        attempt_key: key,
        finish,
    };
    let completions = vec![
        finish(
            a,
            Some(format!("don_{}-1", k("a"))),
            charged(&format!("pi_{tag}_a"), 300_000),
        ),
        finish(
            d,
            Some(format!("don_{}-1", k("d"))),
            charged(&format!("pi_{tag}_d"), 20_000),
        ),
        // A pledge completed by a charge.
        finish(c, None, charged(&format!("pi_{tag}_c"), 10_000)),
        // A decline in the same batch gives its room back.
        finish(
            e,
            Some(format!("don_{}-1", k("e"))),
            Finish::Declined {
                code: "card_declined".into(),
                message: "Your card was declined.".into(),
            },
        ),
    ];
    let done: Vec<bool> = if batched {
        s.finish_donations(&completions, &table).await.unwrap()
    } else {
        let mut v = Vec::new();
        for c in completions.clone() {
            v.extend(s.finish_donations_each(&[c], &table).await.unwrap());
        }
        v
    };
    out.push(format!("{done:?}"));
    // Finishing the same charges again changes nothing and posts nothing twice.
    let again = if batched {
        s.finish_donations(&completions[..2], &table).await.unwrap()
    } else {
        let mut v = Vec::new();
        for c in completions[..2].iter().cloned() {
            v.extend(s.finish_donations_each(&[c], &table).await.unwrap());
        }
        v
    };
    out.push(format!("again {again:?}"));
    for p in 0..6 {
        out.push(format!(
            "totals {p}: {:?}",
            s.contribution_totals(PersonId(base + p)).await.unwrap()
        ));
    }
    for (name, id) in [("a", a), ("c", c), ("d", d), ("e", e)] {
        let row = s.donation_by_id(id).await.unwrap().unwrap();
        let attempts: Vec<String> = s
            .donation_attempts(id)
            .await
            .unwrap()
            .into_iter()
            .map(|t| format!("{} {}", t.state, t.processor_ref.is_some()))
            .collect();
        out.push(format!(
            "{name}: {} {:?} {:?} ledger {} attempts {attempts:?}",
            row.state,
            row.card_last4,
            row.processor_ref
                .map(|r| r.replace(&format!("pi_{tag}_"), "pi_")),
            s.ledger_of(id).await.unwrap().len()
        ));
    }
    out
}

async fn a_batch_decides_exactly_like_one_gift_at_a_time(db: TestDb) {
    let s = &db.store;
    let batched = scenario(s, 1_000, true).await;
    let single = scenario(s, 2_000, false).await;
    assert_eq!(batched, single);
    // And what they decided is right.
    assert_eq!(
        &batched[..7],
        &[
            "existing",
            "key_reused",
            "created",
            "over_limit",
            "created",
            "created",
            "created"
        ]
    );
    assert_eq!(batched[8], "[true, true, true, true]");
    assert_eq!(batched[9], "again [false, false]");
    assert!(
        batched
            .iter()
            .any(|l| l.starts_with("a: succeeded Some(\"4242\")")),
        "{batched:?}"
    );
    assert!(
        batched.iter().any(|l| l.starts_with("e: declined")),
        "{batched:?}"
    );
    assert!(s.unbalanced_ledger_txns().await.unwrap().is_empty());
}

/// A batch of new gifts goes through the set-based path (one statement for its inserts
/// on PostgreSQL); finishing the charges hands back each donation as committed; a
/// replay and a gift over the limit in a later batch are still answered one by one.
async fn new_gifts_in_a_batch_and_their_charges_come_back_as_committed(db: TestDb) {
    let s = &db.store;
    let table = LimitTable::default();
    let mut pledge = gift("n-pledge", 31, 4_000);
    pledge.first_attempt = None;
    pledge.pledge_token_hash = Some("n-pledge-hash".into());
    let batch = vec![
        gift("n-a", 30, 100_000),
        gift("n-b", 30, 50_000),
        gift("n-c", 32, 20_000),
        pledge,
    ];
    let begun = s.begin_donations(&batch, &table).await.unwrap();
    let ids: Vec<i64> = begun.iter().map(created_id).collect();
    let totals = s.contribution_totals(PersonId(30)).await.unwrap();
    assert_eq!(totals.get("E:P2026"), Some(&150_000), "{totals:?}");
    assert_eq!(
        s.contribution_totals(PersonId(31))
            .await
            .unwrap()
            .get("E:P2026"),
        Some(&4_000)
    );
    for (i, id) in ids.iter().enumerate() {
        let attempts = s.donation_attempts(*id).await.unwrap();
        if i < 3 {
            assert_eq!(attempts.len(), 1, "{attempts:?}");
            assert_eq!(attempts[0].state, "started");
            assert_eq!(
                attempts[0].attempt_key,
                format!("don_{}-1", batch[i].idempotency_key)
            );
        } else {
            assert!(attempts.is_empty(), "a pledge has no attempt: {attempts:?}");
            let row = s.donation_by_id(*id).await.unwrap().unwrap();
            assert_eq!(row.state, "pledged");
        }
    }
    let done = |i: usize, pi: &str, cents: i64| Completion {
        donation_id: ids[i],
        attempt_key: Some(format!("don_{}-1", batch[i].idempotency_key)),
        finish: charged(pi, cents),
    };
    let completions = vec![
        done(0, "pi_n_a", 100_000),
        done(1, "pi_n_b", 50_000),
        done(2, "pi_n_c", 20_000),
    ];
    let finished = s.finish_donations_read(&completions, &table).await.unwrap();
    for ((changed, row), (i, pi)) in
        finished
            .iter()
            .zip([(0, "pi_n_a"), (1, "pi_n_b"), (2, "pi_n_c")])
    {
        assert!(changed);
        assert_eq!(row.id, ids[i]);
        assert_eq!(row.state, "succeeded");
        assert_eq!(row.processor_ref.as_deref(), Some(pi));
        assert_eq!(row.card_last4.as_deref(), Some("4242"));
        assert_eq!(row.fee_cents, Some(batch[i].amount_cents * 3 / 100));
        // What came back is what is stored.
        let stored = s.donation_by_id(ids[i]).await.unwrap().unwrap();
        assert_eq!(stored.state, row.state);
        assert_eq!(stored.updated_at, row.updated_at);
        let attempts = s.donation_attempts(ids[i]).await.unwrap();
        assert_eq!(attempts[0].state, "succeeded");
        assert_eq!(attempts[0].processor_ref.as_deref(), Some(pi));
        let ledger = s.ledger_of(ids[i]).await.unwrap();
        assert_eq!(ledger.len(), 4, "charge and fee, two legs each: {ledger:?}");
        assert_eq!(ledger.iter().map(|e| e.amount_cents).sum::<i64>(), 0);
    }
    assert!(s.unbalanced_ledger_txns().await.unwrap().is_empty());
    // The same charges again: nothing moves, nothing is posted twice, rows still come back.
    let again = s.finish_donations_read(&completions, &table).await.unwrap();
    assert!(again
        .iter()
        .all(|(changed, row)| !changed && row.state == "succeeded"));
    assert_eq!(s.ledger_of(ids[0]).await.unwrap().len(), 4);
    // A replay and a gift over the limit next to new gifts: each gets its own answer.
    let later = vec![
        gift("n-a", 30, 100_000),
        gift("n-d", 33, 10_000),
        gift("n-e", 30, 300_000),
    ];
    let begun = s.begin_donations(&later, &table).await.unwrap();
    assert!(
        matches!(&begun[0], Begun::Existing(row) if row.id == ids[0] && row.state == "succeeded")
    );
    created_id(&begun[1]);
    assert!(
        matches!(&begun[2], Begun::OverLimit(r) if r.room_cents == 200_000),
        "{:?}",
        begun[2]
    );
    let totals = s.contribution_totals(PersonId(30)).await.unwrap();
    assert_eq!(totals.get("E:P2026"), Some(&150_000), "{totals:?}");
}

async fn a_batch_of_failovers_closes_and_opens_attempts_in_one_commit(db: TestDb) {
    let s = &db.store;
    let a = created_id(&begin_one(s, gift("f-a", 40, 5_000)).await);
    let b = created_id(&begin_one(s, gift("f-b", 41, 5_000)).await);
    let over = |id: i64, from: &str, to: &str, state: &str| FailOver {
        donation_id: id,
        closing_key: from.into(),
        closing_state: state.into(),
        detail: "connection refused".into(),
        processor: "stripe-b".into(),
        attempt_key: to.into(),
    };
    let out = s
        .fail_over_attempts(&[
            over(a, "don_f-a-1", "don_f-a-2", "unavailable"),
            // A key already taken (here: b's first attempt) is refused for its item
            // alone; b's own first attempt is closed all the same.
            over(b, "don_f-b-1", "don_f-a-1", "not_charged"),
        ])
        .await
        .unwrap();
    assert_eq!(out[0], Ok(2));
    assert!(out[1].as_ref().unwrap_err().contains("taken"), "{out:?}");
    let states = |v: Vec<narwhal_store::donations::AttemptRow>| -> Vec<(i32, String, String)> {
        v.into_iter()
            .map(|a| (a.seq, a.processor, a.state))
            .collect()
    };
    assert_eq!(
        states(s.donation_attempts(a).await.unwrap()),
        vec![
            (1, "stripe-a".to_string(), "unavailable".to_string()),
            (2, "stripe-b".to_string(), "started".to_string())
        ]
    );
    assert_eq!(
        states(s.donation_attempts(b).await.unwrap()),
        vec![(1, "stripe-a".to_string(), "not_charged".to_string())]
    );
    // The new attempt finishes the donation like any other.
    let r = s
        .finish_donations(
            &[Completion {
                donation_id: a,
                attempt_key: Some("don_f-a-2".into()),
                finish: charged("pi_fa", 5_000),
            }],
            &LimitTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(r, vec![true]);
    assert_eq!(
        states(s.donation_attempts(a).await.unwrap())[1].2,
        "succeeded"
    );
}

both_backends!(
    a_batch_of_failovers_closes_and_opens_attempts_in_one_commit,
    same_key_same_params_is_the_same_donation_and_other_params_are_refused,
    two_simultaneous_gifts_over_the_limit_do_not_both_pass,
    a_charge_posts_a_balanced_ledger_and_states_only_move_forward,
    a_decline_gives_the_room_back,
    refunds_are_idempotent_and_never_exceed_the_gift,
    pledges_wait_and_are_completed_by_a_charge,
    webhook_events_are_recorded_once,
    a_batch_decides_exactly_like_one_gift_at_a_time,
    new_gifts_in_a_batch_and_their_charges_come_back_as_committed,
);
