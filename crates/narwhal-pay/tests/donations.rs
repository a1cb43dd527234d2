#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The donation service end to end against two fake Stripe accounts, on both backends:
//! failover only when an attempt is known not to have charged, ambiguous attempts
//! settled by a status query first, pledges when everything is down, idempotent
//! replays, and limits under concurrency. Double charges are counted from the fakes'
//! own ledgers, never from what Narwhal says about itself.

#[path = "support/rig.rs"]
mod rig;
use narwhal_fakes::stripe::{FakeStripe, FakeStripeConfig, Fault};
use narwhal_pay::service::{DonationError, Donations, Outcome, PayConfig};
use narwhal_store::both_backends;
use narwhal_store::test_support::TestDb;
use rig::{gift, two_stripes};
use std::sync::Arc;
use std::time::Duration;

struct Rig {
    primary: FakeStripe,
    backup: FakeStripe,
    donations: Donations,
    _db: TestDb,
}

async fn rig(db: TestDb) -> Rig {
    let primary = FakeStripe::start(FakeStripeConfig {
        ambiguous_hold: Duration::from_secs(3),
        ..FakeStripeConfig::default()
    })
    .await
    .unwrap();
    let backup = FakeStripe::start(FakeStripeConfig::default())
        .await
        .unwrap();
    let router = two_stripes(&primary, &backup);
    let config = PayConfig {
        settle_timeout: Duration::from_secs(2),
        settle_interval: Duration::from_millis(100),
        abandoned_after: Duration::ZERO,
        lookup_grace: Duration::ZERO,
        ..PayConfig::default()
    };
    Rig {
        donations: Donations::new(db.store.clone(), Arc::new(router), config),
        primary,
        backup,
        _db: db,
    }
}

async fn a_gift_is_charged_once_and_a_replay_charges_nothing(db: TestDb) {
    let r = rig(db).await;
    let t = r
        .donations
        .take(gift("k1", "ada@example.org", 5_500, "pm_card_visa"))
        .await
        .unwrap();
    assert_eq!(t.outcome, Outcome::Succeeded);
    assert_eq!(t.donation.processor.as_deref(), Some("stripe-primary"));
    assert_eq!(t.donation.card_last4.as_deref(), Some("4242"));
    let again = r
        .donations
        .take(gift("k1", "ada@example.org", 5_500, "pm_card_visa"))
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.donation.id, t.donation.id);
    assert_eq!(r.primary.ledger().len(), 1);
    assert!(r.backup.ledger().is_empty());
    assert!(matches!(
        r.donations
            .take(gift("k1", "ada@example.org", 6_000, "pm_card_visa"))
            .await,
        Err(DonationError::KeyReused)
    ));
    let ledger = r.donations.store.ledger_of(t.donation.id).await.unwrap();
    assert_eq!(ledger.iter().map(|e| e.amount_cents).sum::<i64>(), 0);
    assert!(ledger
        .iter()
        .any(|e| e.account == "processor:stripe-primary" && e.amount_cents == 5_500));
}

async fn a_down_primary_fails_over_to_the_backup(db: TestDb) {
    let r = rig(db).await;
    r.primary.set_fault(Fault::Down);
    let t = r
        .donations
        .take(gift("k2", "bob@example.org", 2_500, "pm_card_visa"))
        .await
        .unwrap();
    assert_eq!(t.outcome, Outcome::Succeeded);
    assert_eq!(t.donation.processor.as_deref(), Some("stripe-backup"));
    assert!(r.primary.ledger().is_empty());
    assert_eq!(r.backup.ledger().len(), 1);
    let attempts = r
        .donations
        .store
        .donation_attempts(t.donation.id)
        .await
        .unwrap();
    let states: Vec<_> = attempts
        .iter()
        .map(|a| (a.processor.as_str(), a.state.as_str()))
        .collect();
    assert_eq!(
        states,
        vec![
            ("stripe-primary", "unavailable"),
            ("stripe-backup", "succeeded")
        ]
    );
}

async fn an_ambiguous_charge_is_settled_by_a_status_query_not_retried_elsewhere(db: TestDb) {
    let r = rig(db).await;
    r.primary.set_fault(Fault::Ambiguous);
    let t = r
        .donations
        .take(gift("k3", "cy@example.org", 10_000, "pm_card_visa"))
        .await
        .unwrap();
    // The charge went through at the primary; the answer was lost; the lookup found it.
    assert_eq!(t.outcome, Outcome::Succeeded, "{:?}", t.donation);
    assert_eq!(t.donation.processor.as_deref(), Some("stripe-primary"));
    assert_eq!(r.primary.ledger().len(), 1);
    assert!(
        r.backup.ledger().is_empty(),
        "never failed over on an ambiguous attempt"
    );
    let attempts = r
        .donations
        .store
        .donation_attempts(t.donation.id)
        .await
        .unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].state, "succeeded");
}

async fn answers_lost_in_time_send_new_gifts_to_the_backup(db: TestDb) {
    let r = rig(db).await;
    // The primary charges, then holds every answer past our timeout.
    r.primary.set_fault(Fault::Ambiguous);
    for n in 0..3 {
        let t = r
            .donations
            .take(gift(
                &format!("lost{n}"),
                &format!("lost{n}@example.org"),
                1_000,
                "pm_card_visa",
            ))
            .await
            .unwrap();
        // Each one is settled where it was sent, never retried elsewhere.
        assert_eq!(t.outcome, Outcome::Succeeded, "{:?}", t.donation);
        assert_eq!(t.donation.processor.as_deref(), Some("stripe-primary"));
    }
    assert!(r.backup.ledger().is_empty());
    // Three lost answers in a row open the primary's breaker: the next gift does not
    // wait out the primary's timeout but goes straight to the backup.
    let t = r
        .donations
        .take(gift("lost3", "lost3@example.org", 1_000, "pm_card_visa"))
        .await
        .unwrap();
    assert_eq!(t.outcome, Outcome::Succeeded, "{:?}", t.donation);
    assert_eq!(t.donation.processor.as_deref(), Some("stripe-backup"));
    assert_eq!(r.primary.ledger().len(), 3, "one charge per settled gift");
    assert_eq!(r.backup.ledger().len(), 1);
}

async fn an_unsettled_attempt_waits_for_the_processor_then_resumes(db: TestDb) {
    let r = rig(db).await;
    // A 500 is ambiguous to the client, and while the primary answers 500 to
    // everything, the status query cannot settle it either: the donation waits.
    r.primary.set_fault(Fault::Error500);
    let t = r
        .donations
        .take(gift("k4", "di@example.org", 3_000, "pm_card_visa"))
        .await
        .unwrap();
    assert_eq!(t.outcome, Outcome::Processing);
    assert!(matches!(
        r.donations
            .take(gift("k4", "di@example.org", 3_000, "pm_card_visa"))
            .await,
        Err(DonationError::InFlight)
    ));
    assert!(
        r.backup.ledger().is_empty(),
        "nothing else happens until it is settled"
    );
    // The primary recovers; the settler's query shows no charge, and the route resumes.
    r.primary.set_fault(Fault::None);
    assert_eq!(r.donations.settle_unsettled().await.unwrap(), 1);
    let d = r
        .donations
        .store
        .donation_by_id(t.donation.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.state, "succeeded");
    assert_eq!(r.primary.ledger().len() + r.backup.ledger().len(), 1);
    let attempts = r
        .donations
        .store
        .donation_attempts(t.donation.id)
        .await
        .unwrap();
    assert_eq!(attempts[0].state, "not_charged");
    assert_eq!(attempts[1].state, "succeeded");
}

async fn a_not_found_answer_too_soon_is_not_believed(db: TestDb) {
    let mut r = rig(db).await;
    let mut config = (*r.donations.config).clone();
    config.lookup_grace = Duration::from_secs(3600);
    config.settle_timeout = Duration::from_millis(300);
    r.donations = Donations::new(
        r.donations.store.clone(),
        r.donations.router.clone(),
        config,
    );
    r.primary.set_fault(Fault::Error500);
    let t = r
        .donations
        .take(gift("k10", "jo@example.org", 3_000, "pm_card_visa"))
        .await
        .unwrap();
    assert_eq!(t.outcome, Outcome::Processing);
    r.primary.set_fault(Fault::None);
    // The primary now says "no such charge", but too soon after the attempt to be sure.
    assert_eq!(r.donations.settle_unsettled().await.unwrap(), 0);
    assert!(r.backup.ledger().is_empty() && r.primary.ledger().is_empty());
    let d = r
        .donations
        .store
        .donation_by_id(t.donation.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.state, "processing");
}

async fn everything_down_makes_a_pledge_without_card_data(db: TestDb) {
    let r = rig(db).await;
    r.primary.set_fault(Fault::Down);
    r.backup.set_fault(Fault::Down);
    let t = r
        .donations
        .take(gift("k5", "ed@example.org", 5_000, "pm_card_visa"))
        .await
        .unwrap();
    assert_eq!(t.outcome, Outcome::Pledged);
    assert!(t.pledge_token.is_some());
    assert_eq!(t.donation.state, "pledged");
    assert!(t.donation.card_last4.is_none());
    assert!(r.primary.ledger().is_empty() && r.backup.ledger().is_empty());
}

async fn a_decline_is_not_failed_over(db: TestDb) {
    let r = rig(db).await;
    let t = r
        .donations
        .take(gift(
            "k6",
            "fay@example.org",
            5_000,
            "pm_card_chargeDeclined",
        ))
        .await
        .unwrap();
    assert_eq!(t.outcome, Outcome::Declined);
    assert!(t.donation.error_code.is_some());
    assert!(r.primary.ledger().is_empty() && r.backup.ledger().is_empty());
    let attempts = r
        .donations
        .store
        .donation_attempts(t.donation.id)
        .await
        .unwrap();
    assert_eq!(
        attempts.len(),
        1,
        "a decline is the card's answer, not a reason to fail over"
    );
}

async fn simultaneous_gifts_from_one_donor_respect_the_limit(db: TestDb) {
    let r = rig(db).await;
    let d1 = r.donations.clone();
    let d2 = r.donations.clone();
    let (a, b) = tokio::join!(
        tokio::spawn(async move {
            d1.take(gift("k7a", "gus@example.org", 300_000, "pm_card_visa"))
                .await
        }),
        tokio::spawn(async move {
            d2.take(gift("k7b", "gus@example.org", 300_000, "pm_card_visa"))
                .await
        }),
    );
    let results = [a.unwrap(), b.unwrap()];
    let ok = results
        .iter()
        .filter(|x| matches!(x, Ok(t) if t.outcome == Outcome::Succeeded))
        .count();
    let over = results
        .iter()
        .filter(|x| matches!(x, Err(DonationError::OverLimit(_))))
        .count();
    assert_eq!((ok, over), (1, 1), "{results:?}");
    assert_eq!(r.primary.ledger().len(), 1);
}

async fn one_click_links_give_once_and_expire(db: TestDb) {
    let r = rig(db).await;
    let mut first = gift("k8", "hal@example.org", 2_500, "pm_card_visa");
    first.save_method = true;
    let t = r.donations.take(first).await.unwrap();
    let method = t.saved_method_id.expect("the method was saved");
    let person = narwhal_domain::PersonId(t.donation.person_id);
    let token = r
        .donations
        .issue_one_click_link(person, method, 1_000, 3_600_000)
        .await
        .unwrap();
    let offer = r.donations.one_click_offer(&token).await.unwrap();
    assert_eq!(
        (offer.amount_cents, offer.card_last4.as_deref()),
        (1_000, Some("4242"))
    );
    let gave = r.donations.give_one_click(&token, None).await.unwrap();
    assert_eq!(gave.outcome, Outcome::Succeeded);
    assert_eq!(gave.donation.channel, "one_click");
    assert_eq!(gave.donation.amount_cents, 1_000);
    // A second tap is the same gift, not a second charge.
    let again = r.donations.give_one_click(&token, None).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.donation.id, gave.donation.id);
    assert_eq!(r.primary.ledger().len(), 2);
    let code = |e: DonationError| match e {
        DonationError::Invalid { code, .. } => code,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        code(r.donations.give_one_click("nope", None).await.unwrap_err()),
        "unknown_link"
    );
    let stale = r
        .donations
        .issue_one_click_link(person, method, 1_000, -1)
        .await
        .unwrap();
    assert_eq!(
        code(r.donations.give_one_click(&stale, None).await.unwrap_err()),
        "expired_link"
    );
    assert_eq!(r.primary.ledger().len(), 2);
}

async fn recurring_plans_charge_each_installment_once_retry_and_cancel(db: TestDb) {
    let r = rig(db).await;
    let mut first = gift("k9", "ivy@example.org", 1_500, "pm_card_visa");
    first.recurring = Some(narwhal_pay::service::Recurrence {
        every: "month".into(),
        ends_at: None,
    });
    let t = r.donations.take(first).await.unwrap();
    let cancel = t.plan_cancel_token.clone().expect("a plan was started");
    let day = 86_400_000i64;
    let now = narwhal_store::now_ms();
    // Nothing is due yet.
    assert_eq!(r.donations.run_due_plans(now).await.unwrap().charged, 0);
    // A month later: one installment, and running again charges nothing more.
    let run = r.donations.run_due_plans(now + 32 * day).await.unwrap();
    assert_eq!(run.charged, 1);
    assert_eq!(
        r.donations
            .run_due_plans(now + 32 * day)
            .await
            .unwrap()
            .charged,
        0
    );
    assert_eq!(r.primary.ledger().len(), 2);
    // The next month the card is declined: retried later, with the failure counted.
    r.primary.set_fault(Fault::DeclineAll);
    let run = r.donations.run_due_plans(now + 63 * day).await.unwrap();
    assert_eq!((run.failed, run.retrying), (1, 1));
    r.primary.set_fault(Fault::None);
    let run = r.donations.run_due_plans(now + 65 * day).await.unwrap();
    assert_eq!(run.charged, 1);
    assert_eq!(r.primary.ledger().len(), 3);
    // The donor cancels from the link: nothing more is charged.
    assert!(r.donations.cancel_plan(&cancel).await.unwrap());
    assert!(!r.donations.cancel_plan(&cancel).await.unwrap());
    assert_eq!(
        r.donations
            .run_due_plans(now + 200 * day)
            .await
            .unwrap()
            .charged,
        0
    );
    assert_eq!(r.primary.ledger().len(), 3);
    // Every installment was its own donation with its own key.
    let mut keys: Vec<String> = r
        .primary
        .ledger()
        .iter()
        .filter_map(|c| c.idempotency_key.clone())
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 3);
}

/// A batch's gift as the intake hands it to the store (its donor resolved later).
fn new_gift(key: &str, cents: i64) -> narwhal_store::donations::NewDonation {
    narwhal_store::donations::NewDonation {
        public_id: format!("don_{key}"),
        idempotency_key: key.into(),
        request_hash: format!("hash-{key}"),
        person_id: narwhal_domain::PersonId(0),
        amount_cents: cents,
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
        first_attempt: Some(("stripe-primary".into(), format!("don_{key}-1"))),
        pledge_token_hash: None,
        year: 2026,
    }
}

fn drafts(emails: &[&str]) -> Vec<narwhal_domain::PersonDraft> {
    emails
        .iter()
        .enumerate()
        .map(|(i, e)| {
            narwhal_pay::service::validate(&gift(&format!("d{i}"), e, 100, "pm_card_visa")).unwrap()
        })
        .collect()
}

async fn holder_of(store: &narwhal_store::Store, email: &str) -> Option<narwhal_domain::PersonId> {
    store
        .find_by_keys(&[], &[email.to_string()], &[])
        .await
        .unwrap()
        .email
        .get(email)
        .map(|(id, _)| *id)
}

async fn begin_new(
    store: &narwhal_store::Store,
    p: &narwhal_people::hub::NewPeoplePlan,
    gifts: &[narwhal_store::donations::NewDonation],
    table: &narwhal_domain::limits::LimitTable,
) -> narwhal_store::donations::NewDonors {
    store
        .begin_donations_for_new_people(&p.changes, &p.keys, &p.person_of_input, gifts, table)
        .await
        .unwrap()
}

/// New donors and their first gifts in one statement (PostgreSQL): each gift points at
/// its own donor, two gifts of one new donor share that person and add up, the people
/// are audited as the hub would audit them; when a donor is in the hub already the
/// statement writes nothing and says who holds which key; and when the path does not
/// fit (a gift over the limit, a key stored before, SQLite) nothing at all is written.
async fn new_donors_and_their_gifts_are_stored_together_or_not_at_all(db: TestDb) {
    use narwhal_store::donations::NewDonors;
    let store = db.store.clone();
    let hub = narwhal_people::Hub::new(store.clone());
    let table = narwhal_domain::limits::LimitTable::default();
    let plan = |emails: &[&str]| {
        hub.plan_new_people(drafts(emails), "donations", "donation", true)
            .unwrap_or_else(|_| panic!("{emails:?} have strong keys"))
    };
    let p = plan(&["na@example.org", "nb@example.org", "na@example.org"]);
    assert_eq!(
        p.changes.inserts.len(),
        2,
        "the two gifts of na@ fold into one person"
    );
    assert_eq!(p.person_of_input, vec![0, 1, 0]);
    let gifts = vec![
        new_gift("g1", 100_000),
        new_gift("g2", 5_000),
        new_gift("g3", 50_000),
    ];
    let done = begin_new(&store, &p, &gifts, &table).await;
    if store.backend() == narwhal_store::Backend::Sqlite {
        assert!(
            matches!(done, NewDonors::NotFit),
            "SQLite takes the usual path"
        );
        assert_eq!(
            holder_of(&store, "na@example.org").await,
            None,
            "nothing was written"
        );
        return;
    }
    let NewDonors::Begun(people, begun) = done else {
        panic!("PostgreSQL takes the one statement: {done:?}");
    };
    assert_eq!(people.len(), 2);
    assert_eq!(holder_of(&store, "na@example.org").await, Some(people[0]));
    assert_eq!(holder_of(&store, "nb@example.org").await, Some(people[1]));
    for (i, b) in begun.iter().enumerate() {
        let narwhal_store::donations::Begun::Created { id, .. } = b else {
            panic!("{b:?}");
        };
        let row = store.donation_by_id(*id).await.unwrap().unwrap();
        assert_eq!(row.idempotency_key, gifts[i].idempotency_key);
        assert_eq!(
            row.person_id, people[p.person_of_input[i]].0,
            "gift {i}'s donor"
        );
        assert_eq!(row.state, "processing");
        let attempts = store.donation_attempts(*id).await.unwrap();
        assert_eq!(attempts.len(), 1);
        assert_eq!(
            attempts[0].attempt_key,
            format!("don_{}-1", gifts[i].idempotency_key)
        );
        assert_eq!(attempts[0].state, "started");
    }
    let totals = store.contribution_totals(people[0]).await.unwrap();
    assert_eq!(totals.get("E:P2026"), Some(&150_000), "{totals:?}");
    let totals = store.contribution_totals(people[1]).await.unwrap();
    assert_eq!(totals.get("E:P2026"), Some(&5_000), "{totals:?}");
    for id in &people {
        let audit = store
            .audit_log(Some(("person", &id.0.to_string())), None, 10)
            .await
            .unwrap();
        assert!(
            audit.iter().any(|a| a.entry.action == "person.create"),
            "{audit:?}"
        );
    }

    // Over the limit within the batch: nothing written, the usual path decides.
    let p = plan(&["nc@example.org", "nc@example.org"]);
    let done = begin_new(
        &store,
        &p,
        &[new_gift("g4", 300_000), new_gift("g5", 300_000)],
        &table,
    )
    .await;
    assert!(matches!(done, NewDonors::NotFit), "{done:?}");
    assert_eq!(holder_of(&store, "nc@example.org").await, None);
    assert!(store
        .donation_by_idempotency_key("g4")
        .await
        .unwrap()
        .is_none());

    // A donor someone else put in the hub (here, between the plan and the write): the
    // statement writes nothing and names the holder; the usual path goes on from it.
    let p = plan(&["nd@example.org", "ne@example.org"]);
    hub.upsert_batch(drafts(&["nd@example.org"]), "signup", "test", true)
        .await
        .unwrap();
    let first = holder_of(&store, "nd@example.org").await.unwrap();
    let done = begin_new(
        &store,
        &p,
        &[new_gift("g6", 1_000), new_gift("g7", 1_000)],
        &table,
    )
    .await;
    let NewDonors::Held(held) = done else {
        panic!("{done:?}");
    };
    assert_eq!(held.email.get("nd@example.org").map(|h| h.0), Some(first));
    assert_eq!(held.email.len(), 1, "{held:?}");
    assert_eq!(holder_of(&store, "ne@example.org").await, None);
    assert!(store
        .donation_by_idempotency_key("g7")
        .await
        .unwrap()
        .is_none());
    let (people, _) = hub
        .upsert_plan(p, "donations", "donation", true, Some(held))
        .await
        .unwrap();
    assert_eq!(people[0].id, first);
    assert_eq!(
        holder_of(&store, "ne@example.org").await,
        Some(people[1].id)
    );

    // A gift's key stored before: nothing written either.
    let p = plan(&["nf@example.org"]);
    let done = begin_new(&store, &p, &[new_gift("g1", 100_000)], &table).await;
    assert!(matches!(done, NewDonors::NotFit), "{done:?}");
    assert_eq!(holder_of(&store, "nf@example.org").await, None);
}

/// Through the service, many new donors at once (so that their gifts share batches),
/// one of them twice: every gift is charged once and belongs to its own donor.
async fn concurrent_new_donors_each_get_their_own_person(db: TestDb) {
    let r = rig(db).await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let d = r.donations.clone();
        let email = format!("crowd{}@example.org", i % 39);
        tasks.push(tokio::spawn(async move {
            let t = d
                .take(gift(
                    &format!("crowd-{i}"),
                    &email,
                    1_000 + i,
                    "pm_card_visa",
                ))
                .await
                .unwrap();
            (email, t)
        }));
    }
    let store = r._db.store.clone();
    let mut donors = std::collections::HashMap::new();
    for t in tasks {
        let (email, taken) = t.await.unwrap();
        assert_eq!(taken.outcome, Outcome::Succeeded);
        let holder = holder_of(&store, &email)
            .await
            .expect("the donor is a person");
        assert_eq!(taken.donation.person_id, holder.0, "{email}");
        donors
            .entry(email)
            .or_insert_with(Vec::new)
            .push(taken.donation.amount_cents);
    }
    assert_eq!(donors.len(), 39);
    assert_eq!(r.primary.ledger().len(), 40);
    let twice = &donors["crowd0@example.org"];
    assert_eq!(twice.len(), 2);
    let holder = holder_of(&store, "crowd0@example.org").await.unwrap();
    // Whichever election the date designates: both gifts count against it.
    let totals = store.contribution_totals(holder).await.unwrap();
    let elections: i64 = totals
        .iter()
        .filter(|(period, _)| period.starts_with("E:"))
        .map(|(_, cents)| *cents)
        .sum();
    assert_eq!(elections, twice.iter().sum::<i64>(), "{totals:?}");
}

both_backends!(
    new_donors_and_their_gifts_are_stored_together_or_not_at_all,
    concurrent_new_donors_each_get_their_own_person,
    a_not_found_answer_too_soon_is_not_believed,
    one_click_links_give_once_and_expire,
    recurring_plans_charge_each_installment_once_retry_and_cancel,
    a_gift_is_charged_once_and_a_replay_charges_nothing,
    a_down_primary_fails_over_to_the_backup,
    an_ambiguous_charge_is_settled_by_a_status_query_not_retried_elsewhere,
    an_unsettled_attempt_waits_for_the_processor_then_resumes,
    answers_lost_in_time_send_new_gifts_to_the_backup,
    everything_down_makes_a_pledge_without_card_data,
    a_decline_is_not_failed_over,
    simultaneous_gifts_from_one_donor_respect_the_limit,
);
