//! The blast ledger's batched writes, on SQLite and on PostgreSQL: a slice's outcomes
//! land in one go, rows only move forward, stale leases are fenced off, and the blast's
//! counters, failure reasons and message ids follow exactly the rows that moved.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use narwhal_domain::{Email, PersonId, SegmentFilter};
use narwhal_store::blasts::{
    BlastContent, BlastId, BlastTarget, NewBlast, Outcome, RecipientState,
};
use narwhal_store::test_support::TestDb;
use narwhal_store::{both_backends, now_ms, Store};
use serde_json::json;

async fn blast_over(store: &Store, people: i64, keep_message_ids: bool) -> BlastId {
    store.insert_synthetic_recipients(1, people).await.unwrap();
    let id = store
        .create_blast(&NewBlast {
            name: "ledger".into(),
            target: BlastTarget::Filter(SegmentFilter::parse(&json!({"state": "OH"})).unwrap()),
            content: BlastContent::Inline {
                subject: "Hi".into(),
                text: Some("t".into()),
                html: None,
            },
            from_email: Email::parse("team@campaign.example").unwrap(),
            keep_message_ids,
        })
        .await
        .unwrap();
    store.schedule_blast(id, now_ms(), 1).await.unwrap();
    assert!(store.start_blast(id).await.unwrap());
    assert_eq!(store.materialize_recipients(id).await.unwrap(), people);
    id
}

async fn a_slice_is_recorded_at_once_and_only_forward(db: TestDb) {
    let store = &db.store;
    let id = blast_over(store, 10, true).await;
    let claim = store.claim_recipients(id, None, 10, 60_000).await.unwrap();
    assert_eq!(claim.recipients.len(), 10);
    let p: Vec<PersonId> = claim.recipients.iter().map(|r| r.person_id).collect();
    let acc = store.mail_account_id("main").await.unwrap();
    let ses_id = "0100018f3b5c1d2e-8c3e4f5a-1b2c-4d5e-9f0a-123456789abc-000000";
    let soon = now_ms() - 1;
    let later = now_ms() + 3_600_000;
    let mut outcomes = vec![
        (
            p[0],
            Outcome::Sent {
                account: acc,
                message_id: Some(ses_id.into()),
            },
        ),
        (
            p[1],
            Outcome::Sent {
                account: acc,
                message_id: Some("m-2".into()),
            },
        ),
        (
            p[2],
            Outcome::Sent {
                account: acc,
                message_id: None,
            },
        ),
        (
            p[3],
            Outcome::Failed {
                account: Some(acc),
                reason: "Address blacklisted".into(),
            },
        ),
        (
            p[4],
            Outcome::Failed {
                account: None,
                reason: "invalid recipient address".into(),
            },
        ),
        (
            p[5],
            Outcome::Ambiguous {
                account: acc,
                reason: "timeout: \"quoted\"\n".into(),
            },
        ),
        (
            p[6],
            Outcome::Retry {
                not_before: soon,
                attempt: false,
                throttled: true,
            },
        ),
        (
            p[7],
            Outcome::Retry {
                not_before: later,
                attempt: true,
                throttled: false,
            },
        ),
        (p[8], Outcome::Skipped),
    ];
    // p[9] stays in flight; an id outside the claim is fenced off.
    outcomes.push((
        PersonId(999_999),
        Outcome::Sent {
            account: acc,
            message_id: None,
        },
    ));
    let rec = store.record_outcomes(&claim, &outcomes).await.unwrap();
    assert_eq!(
        (
            rec.sent,
            rec.failed,
            rec.ambiguous,
            rec.skipped,
            rec.retried,
            rec.fenced
        ),
        (3, 2, 1, 1, 2, 1)
    );
    let state = |i: usize| store.recipient_state(id, p[i]);
    assert_eq!(
        state(0).await.unwrap(),
        (RecipientState::Sent, 1, Some(i64::from(acc)))
    );
    assert_eq!(
        state(3).await.unwrap(),
        (RecipientState::Failed, 1, Some(i64::from(acc)))
    );
    assert_eq!(state(4).await.unwrap(), (RecipientState::Failed, 1, None));
    assert_eq!(
        state(5).await.unwrap(),
        (RecipientState::Ambiguous, 1, Some(i64::from(acc)))
    );
    // A throttle is not an attempt; a transient failure is.
    assert_eq!(state(6).await.unwrap(), (RecipientState::Pending, 0, None));
    assert_eq!(state(7).await.unwrap(), (RecipientState::Pending, 1, None));
    assert_eq!(state(8).await.unwrap(), (RecipientState::Skipped, 0, None));
    assert_eq!(state(9).await.unwrap(), (RecipientState::Sending, 0, None));
    let b = store.blast(id).await.unwrap();
    assert_eq!(
        (
            b.counts.sent,
            b.counts.failed,
            b.counts.ambiguous,
            b.counts.skipped,
            b.counts.throttled
        ),
        (3, 2, 1, 1, 1)
    );
    assert_eq!(
        store
            .recipient_message_id(id, p[0])
            .await
            .unwrap()
            .as_deref(),
        Some(ses_id)
    );
    assert_eq!(
        store
            .recipient_message_id(id, p[1])
            .await
            .unwrap()
            .as_deref(),
        Some("m-2")
    );
    assert_eq!(store.recipient_message_id(id, p[2]).await.unwrap(), None);
    let failures = store.blast_failures(id, None, 100).await.unwrap();
    let reasons: Vec<(PersonId, &str)> = failures
        .iter()
        .map(|f| (f.person_id, f.reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        vec![
            (p[3], "Address blacklisted"),
            (p[4], "invalid recipient address"),
            (p[5], "timeout: \"quoted\"\n")
        ]
    );

    // The same outcomes again (a retried commit, a confused worker): nothing moves
    // backwards or twice, and the counters stay.
    let again = store.record_outcomes(&claim, &outcomes).await.unwrap();
    assert_eq!((again.sent, again.failed, again.retried), (0, 0, 0));
    // p[9] is still under this lease: it alone moves.
    assert_eq!(again.fenced, outcomes.len() as i64);
    let b2 = store.blast(id).await.unwrap();
    assert_eq!(b2.counts, b.counts);
    assert_eq!(state(0).await.unwrap().0, RecipientState::Sent);

    // The next claim takes only the throttled row that is due (not the one backing off
    // for an hour, not the one in flight).
    let next = store.claim_recipients(id, None, 10, 60_000).await.unwrap();
    let got: Vec<PersonId> = next.recipients.iter().map(|r| r.person_id).collect();
    assert_eq!(got, vec![p[6]]);
    // The first claim's lease no longer holds p[6]: its late outcome is fenced.
    let sent_p6 = [(
        p[6],
        Outcome::Sent {
            account: acc,
            message_id: None,
        },
    )];
    let late = store.record_outcomes(&claim, &sent_p6).await.unwrap();
    assert_eq!((late.sent, late.fenced), (0, 1));
    let fresh = store.record_outcomes(&next, &sent_p6).await.unwrap();
    assert_eq!((fresh.sent, fresh.fenced), (1, 0));
    assert_eq!(
        state(6).await.unwrap(),
        (RecipientState::Sent, 1, Some(i64::from(acc)))
    );
}

async fn message_ids_are_kept_only_when_asked(db: TestDb) {
    let store = &db.store;
    let id = blast_over(store, 3, false).await;
    let claim = store.claim_recipients(id, None, 3, 60_000).await.unwrap();
    let outcomes: Vec<_> = claim
        .recipients
        .iter()
        .map(|r| {
            (
                r.person_id,
                Outcome::Sent {
                    account: 1,
                    message_id: Some("m".into()),
                },
            )
        })
        .collect();
    assert_eq!(
        store.record_outcomes(&claim, &outcomes).await.unwrap().sent,
        3
    );
    for r in &claim.recipients {
        assert_eq!(
            store.recipient_message_id(id, r.person_id).await.unwrap(),
            None
        );
    }
}

/// A big slice (what the worker claims at full speed) in one call.
async fn a_large_slice_in_one_call(db: TestDb) {
    let store = &db.store;
    let id = blast_over(store, 3_000, false).await;
    let claim = store
        .claim_recipients(id, None, 3_000, 60_000)
        .await
        .unwrap();
    assert_eq!(claim.recipients.len(), 3_000);
    let outcomes: Vec<_> = claim
        .recipients
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let o = if i % 100 == 0 {
                Outcome::Retry {
                    not_before: 0,
                    attempt: false,
                    throttled: true,
                }
            } else {
                Outcome::Sent {
                    account: 1,
                    message_id: None,
                }
            };
            (r.person_id, o)
        })
        .collect();
    let rec = store.record_outcomes(&claim, &outcomes).await.unwrap();
    assert_eq!((rec.sent, rec.retried, rec.fenced), (2_970, 30, 0));
    assert_eq!(
        store.recipient_state_counts(id).await.unwrap(),
        vec![(RecipientState::Pending, 30), (RecipientState::Sent, 2_970)]
    );
    let b = store.blast(id).await.unwrap();
    assert_eq!(
        (b.counts.sent, b.counts.throttled, b.counts.pending()),
        (2_970, 30, 30)
    );
}

both_backends!(
    a_slice_is_recorded_at_once_and_only_forward,
    message_ids_are_kept_only_when_asked,
    a_large_slice_in_one_call,
);
