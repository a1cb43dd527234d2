#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Blasts end to end on both backends: the store's ledger, the worker, the scheduler and
//! the SES client against the fake SES. Every check of who received what reads the
//! fake's own ledger, not our counters.

use narwhal_domain::{Email, PersonDraft, SegmentFilter};
use narwhal_fakes::{FakeAccount, FakeSes, Fault};
use narwhal_mail::blast::{self, Account, BlastSender, SendConfig};
use narwhal_mail::ses::{SesClient, SesConfig};
use narwhal_mail::ThrottleSpec;
use narwhal_people::Hub;
use narwhal_store::blasts::{
    BlastContent, BlastId, BlastState, BlastTarget, NewBlast, RecipientState,
};
use narwhal_store::test_support::TestDb;
use narwhal_store::{now_ms, Store};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

const REGION: &str = "us-east-1";

/// Eligible people: p0..p{n}; p1 also has a second address; overlap: everyone tagged
/// `volunteer`, even ones also tagged `donor`; excluded: unsubscribed, bounced,
/// complained, suppressed, and a donor without email (phone only).
async fn seed(store: &Store, n: usize) -> BTreeSet<String> {
    let hub = Hub::new(store.clone());
    let mut drafts = Vec::new();
    let mut expected = BTreeSet::new();
    for i in 0..n {
        let mut emails = vec![format!("p{i}@example.com")];
        if i == 1 {
            emails.push(format!("p{i}.work@example.com"));
        }
        let tags = if i % 3 == 0 {
            vec!["volunteer", "donor"]
        } else {
            vec!["volunteer"]
        };
        drafts.push(json!({"emails": emails, "first_name": format!("P{i}"), "tags": tags}));
        expected.insert(format!("p{i}@example.com"));
    }
    for (who, consent) in [
        ("unsub", "unsubscribed"),
        ("bounced", "bounced"),
        ("complained", "complained"),
    ] {
        drafts.push(json!({"emails": [format!("{who}@example.com")], "tags": ["donor"], "email_consent": consent}));
    }
    drafts.push(json!({"emails": ["suppressed@example.com"], "tags": ["volunteer"]}));
    drafts.push(json!({"phones": ["+15555550100"], "tags": ["donor"]}));
    let drafts: Vec<PersonDraft> = drafts
        .into_iter()
        .map(|d| serde_json::from_value(d).unwrap())
        .collect();
    hub.upsert_batch(drafts, "test", "test", false)
        .await
        .unwrap();
    store
        .suppress(&Email::parse("suppressed@example.com").unwrap(), "manual")
        .await
        .unwrap();
    expected
}

fn target() -> BlastTarget {
    BlastTarget::Filter(
        SegmentFilter::parse(&json!({"any": [{"tag": "volunteer"}, {"tag": "donor"}]})).unwrap(),
    )
}

async fn new_blast(store: &Store) -> BlastId {
    store
        .create_blast(&NewBlast {
            name: "GOTV".into(),
            target: target(),
            content: BlastContent::Inline {
                subject: "Hi {{ first_name }}".into(),
                text: Some("Vote, {{ first_name }}.".into()),
                html: None,
            },
            from_email: Email::parse("team@campaign.example").unwrap(),
            keep_message_ids: true,
        })
        .await
        .unwrap()
}

fn ses(fake: &FakeSes, account: &FakeAccount, name: &str) -> Arc<SesClient> {
    let mut c = SesConfig::new(name, REGION, account.credentials());
    c.endpoint = Some(fake.endpoint());
    c.request_timeout = Duration::from_secs(5);
    Arc::new(SesClient::new(c).unwrap())
}

fn account(fake: &FakeSes, a: &FakeAccount, name: &str, spec: &str) -> Account {
    Account {
        provider: ses(fake, a, name),
        weight: 1,
        spec: ThrottleSpec::parse(spec).unwrap(),
    }
}

/// A node's settings; `lease_ms` is how long its job and slice claims last without a
/// heartbeat (short, so that a killed node's work is taken over within the test).
fn config(node: &str, lease_ms: i64) -> SendConfig {
    let compose = narwhal_mail::blast::Compose {
        sender: narwhal_mail::template::Sender {
            name: "Friends of Ada".into(),
            postal_address: "PO Box 1, Columbus OH 43215".into(),
        },
        unsubscribe_url: "http://127.0.0.1:8080/u/".into(),
        unsubscribe_mailto: None,
        signer: narwhal_mail::unsubscribe::UnsubscribeSigner::new(
            b"blast-test-secret-blast-test-sec",
        )
        .unwrap(),
    };
    let mut c = SendConfig::new(node, compose);
    c.job_lease_ms = lease_ms;
    c.slice_lease_ms = lease_ms;
    c.lanes = 2;
    c
}

struct Node {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// A live node: leases far longer than a slice takes, however loaded the machine.
fn start(store: &Store, accounts: Vec<Account>, node: &str) -> Node {
    start_leased(store, accounts, node, 20_000)
}

fn start_leased(store: &Store, accounts: Vec<Account>, node: &str, lease_ms: i64) -> Node {
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = blast::spawn(
        BlastSender::new(store.clone(), accounts, config(node, lease_ms)),
        rx,
    );
    Node { stop, task }
}

impl Node {
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

async fn wait_for(
    store: &Store,
    id: BlastId,
    secs: u64,
    f: impl Fn(&narwhal_store::blasts::Blast) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let b = store.blast(id).await.unwrap();
        if f(&b) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {b:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn received(fake: &FakeSes) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for a in fake.ledger() {
        *m.entry(a.destination).or_insert(0) += 1;
    }
    m
}

fn once_each(expected: &BTreeSet<String>) -> BTreeMap<String, usize> {
    expected.iter().map(|e| (e.clone(), 1)).collect()
}

async fn every_eligible_recipient_exactly_once(db: TestDb) {
    let store = &db.store;
    let expected = seed(store, 60).await;
    let a = FakeAccount::new("AKIDA", "secret-a");
    let fake = FakeSes::start(REGION, vec![a.clone()]).await.unwrap();
    let id = new_blast(store).await;
    store.schedule_blast(id, now_ms(), 1).await.unwrap();
    let node = start(store, vec![account(&fake, &a, "a", "1000/s")], "n1");
    wait_for(store, id, 30, |b| b.state == BlastState::Done).await;
    node.stop().await;
    // The fake's ledger: each eligible person once at the primary address; nobody else
    // (not the second address, not the unsubscribed, bounced, complained or suppressed).
    assert_eq!(received(&fake), once_each(&expected));
    let b = store.blast(id).await.unwrap();
    assert_eq!(b.counts.total, 60);
    assert_eq!(b.counts.sent, 60);
    assert_eq!((b.counts.failed, b.counts.reclaimed), (0, 0));
    assert_eq!(
        store.recipient_state_counts(id).await.unwrap(),
        vec![(RecipientState::Sent, 60)]
    );
    // Message ids kept, and they are the fake's.
    let ids: BTreeSet<String> = fake.ledger().into_iter().map(|a| a.message_id).collect();
    let hub_first = store
        .page_matching(
            &SegmentFilter::parse(&json!({"tag":"volunteer"})).unwrap(),
            None,
            1,
        )
        .await
        .unwrap();
    let mid = store
        .recipient_message_id(id, hub_first[0].id)
        .await
        .unwrap()
        .unwrap();
    assert!(ids.contains(&mid), "{mid}");
    // Materializing again adds nobody.
    assert_eq!(store.materialize_recipients(id).await.unwrap(), 60);
}

async fn throttling_is_requeued_and_the_blast_completes(db: TestDb) {
    let store = &db.store;
    let expected = seed(store, 80).await;
    // The provider allows 25/s but we believe 500/s: it will throttle us.
    let a = FakeAccount::new("AKIDA", "secret-a").rate(25);
    let fake = FakeSes::start(REGION, vec![a.clone()]).await.unwrap();
    let id = new_blast(store).await;
    store.schedule_blast(id, now_ms(), 1).await.unwrap();
    let node = start(store, vec![account(&fake, &a, "a", "500/s")], "n1");
    wait_for(store, id, 60, |b| b.state == BlastState::Done).await;
    node.stop().await;
    assert!(fake.stats().throttled > 0, "the fake never throttled");
    let b = store.blast(id).await.unwrap();
    assert!(b.counts.throttled > 0);
    assert_eq!((b.counts.sent, b.counts.failed), (80, 0));
    assert_eq!(received(&fake), once_each(&expected));
}

async fn an_outage_fails_over_to_the_second_account(db: TestDb) {
    let store = &db.store;
    let expected = seed(store, 50).await;
    let a = FakeAccount::new("AKIDA", "secret-a");
    let b = FakeAccount::new("AKIDB", "secret-b");
    let fake = FakeSes::start(REGION, vec![a.clone(), b.clone()])
        .await
        .unwrap();
    fake.set_account_fault("AKIDA", Fault::Down);
    let id = new_blast(store).await;
    store.schedule_blast(id, now_ms(), 1).await.unwrap();
    let node = start(
        store,
        vec![
            account(&fake, &a, "a", "200/s"),
            account(&fake, &b, "b", "200/s"),
        ],
        "n1",
    );
    wait_for(store, id, 30, |b| b.state == BlastState::Done).await;
    node.stop().await;
    assert_eq!(received(&fake), once_each(&expected));
    assert!(fake.ledger().iter().all(|x| x.access_key_id == "AKIDB"));
    let bl = store.blast(id).await.unwrap();
    assert_eq!((bl.counts.sent, bl.counts.failed), (50, 0));
}

async fn two_nodes_split_one_blast_without_duplicates(db: TestDb) {
    let store = &db.store;
    let expected = seed(store, 150).await;
    let a = FakeAccount::new("AKIDA", "secret-a");
    let b = FakeAccount::new("AKIDB", "secret-b");
    let fake = FakeSes::start(REGION, vec![a.clone(), b.clone()])
        .await
        .unwrap();
    fake.set_fault(Fault::Latency(Duration::from_millis(30)));
    let id = new_blast(store).await;
    store.schedule_blast(id, now_ms(), 2).await.unwrap();
    // Each node sends through its own account, so the fake's ledger shows who sent what.
    let n1 = start(
        store,
        vec![account(&fake, &a, "a", "100/s,max_burst=10")],
        "n1",
    );
    let n2 = start(
        store,
        vec![account(&fake, &b, "b", "100/s,max_burst=10")],
        "n2",
    );
    wait_for(store, id, 60, |b| b.state == BlastState::Done).await;
    n1.stop().await;
    n2.stop().await;
    assert_eq!(received(&fake), once_each(&expected));
    let by_a = fake
        .ledger()
        .iter()
        .filter(|x| x.access_key_id == "AKIDA")
        .count();
    assert!(by_a > 10 && by_a < 140, "node 1 sent {by_a} of 150");
    assert_eq!(store.blast(id).await.unwrap().counts.reclaimed, 0);
}

async fn a_node_killed_mid_blast_is_taken_over_with_bounded_counted_duplicates(db: TestDb) {
    let store = &db.store;
    let expected = seed(store, 120).await;
    let a = FakeAccount::new("AKIDA", "secret-a");
    let fake = FakeSes::start(REGION, vec![a.clone()]).await.unwrap();
    fake.set_fault(Fault::Latency(Duration::from_millis(150)));
    let id = new_blast(store).await;
    store.schedule_blast(id, now_ms(), 1).await.unwrap();
    let n1 = start_leased(
        store,
        vec![account(&fake, &a, "a", "1000/s,max_burst=20")],
        "n1",
        1_500,
    );
    wait_for(store, id, 30, |b| b.counts.sent >= 20).await;
    // Kill it: no shutdown, no cleanup; a slice may be in flight.
    n1.task.abort();
    let _ = n1.task.await;
    drop(n1.stop);
    let sent_at_kill = store.blast(id).await.unwrap().counts.sent;
    assert!(sent_at_kill < 120);
    fake.set_fault(Fault::None);
    let n2 = start(
        store,
        vec![account(&fake, &a, "a", "1000/s,max_burst=20")],
        "n2",
    );
    wait_for(store, id, 30, |b| b.state == BlastState::Done).await;
    n2.stop().await;
    let got = received(&fake);
    // Nobody lost.
    assert_eq!(got.keys().cloned().collect::<BTreeSet<_>>(), expected);
    // Duplicates: at most the slices in flight (2 lanes of at most 20), and never more
    // than we counted.
    let dups: usize = got.values().map(|n| n - 1).sum();
    let b = store.blast(id).await.unwrap();
    assert!(
        dups as i64 <= b.counts.reclaimed,
        "dups {dups} > reclaimed {}",
        b.counts.reclaimed
    );
    assert!(b.counts.reclaimed <= 40, "reclaimed {}", b.counts.reclaimed);
    assert_eq!(b.counts.sent, 120);
}

async fn pause_then_resume_sends_no_duplicate(db: TestDb) {
    let store = &db.store;
    let expected = seed(store, 100).await;
    let a = FakeAccount::new("AKIDA", "secret-a");
    let fake = FakeSes::start(REGION, vec![a.clone()]).await.unwrap();
    fake.set_fault(Fault::Latency(Duration::from_millis(40)));
    let id = new_blast(store).await;
    store.schedule_blast(id, now_ms(), 1).await.unwrap();
    let node = start(
        store,
        vec![account(&fake, &a, "a", "1000/s,max_burst=10")],
        "n1",
    );
    wait_for(store, id, 30, |b| b.counts.sent >= 20).await;
    store.pause_blast(id, Some("staff")).await.unwrap();
    // The worker stops within a slice; nothing more is sent while paused.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let during = fake.ledger().len();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(fake.ledger().len(), during);
    assert!(during < 100, "{during}");
    let b = store.blast(id).await.unwrap();
    assert_eq!(b.state, BlastState::Paused);
    assert_eq!(b.counts.sent as usize, during);
    // A paused blast cannot be paused again, and resuming twice is refused too.
    assert!(store.pause_blast(id, None).await.is_err());
    store.resume_blast(id, 1).await.unwrap();
    assert!(store.resume_blast(id, 1).await.is_err());
    wait_for(store, id, 30, |b| b.state == BlastState::Done).await;
    node.stop().await;
    assert_eq!(received(&fake), once_each(&expected));
}

async fn wrong_credentials_pause_the_blast_with_a_reason_and_send_nothing(db: TestDb) {
    let store = &db.store;
    seed(store, 10).await;
    let real = FakeAccount::new("AKIDA", "secret-a");
    let fake = FakeSes::start(REGION, vec![real]).await.unwrap();
    let wrong = FakeAccount::new("AKIDWRONG", "nope");
    let id = new_blast(store).await;
    store.schedule_blast(id, now_ms(), 1).await.unwrap();
    let node = start(store, vec![account(&fake, &wrong, "a", "100/s")], "n1");
    wait_for(store, id, 30, |b| b.state == BlastState::Paused).await;
    node.stop().await;
    let b = store.blast(id).await.unwrap();
    assert!(
        b.state_reason
            .as_deref()
            .unwrap_or("")
            .contains("no provider account can send"),
        "{:?}",
        b.state_reason
    );
    assert_eq!((b.counts.sent, b.counts.failed), (0, 0));
    assert!(fake.ledger().is_empty());
    let counts = store.recipient_state_counts(id).await.unwrap();
    assert_eq!(counts, vec![(RecipientState::Pending, 10)]);
}

/// Two nodes send one blast through the same account (same name, same credentials),
/// each configured with the account's whole rate. On PostgreSQL they draw from one
/// bucket in the database, so together they stay within the rate: the fake SES, which
/// enforces it, never throttles, and the blast takes as long as the rate says. (SQLite
/// is one node by design; there the blast only has to complete.)
async fn two_nodes_share_one_accounts_rate(db: TestDb) {
    let store = &db.store;
    let expected = seed(store, 200).await;
    let a = FakeAccount::new("AKIDA", "secret-a").rate(40);
    let fake = FakeSes::start(REGION, vec![a.clone()]).await.unwrap();
    fake.set_fault(Fault::Latency(Duration::from_millis(20)));
    let id = new_blast(store).await;
    store.schedule_blast(id, now_ms(), 2).await.unwrap();
    let t0 = std::time::Instant::now();
    let n1 = start(store, vec![account(&fake, &a, "shared", "40/s")], "n1");
    let n2 = start(store, vec![account(&fake, &a, "shared", "40/s")], "n2");
    wait_for(store, id, 60, |b| b.state == BlastState::Done).await;
    let secs = t0.elapsed().as_secs_f64();
    n1.stop().await;
    n2.stop().await;
    assert_eq!(received(&fake), once_each(&expected));
    if store.backend() == narwhal_store::Backend::Postgres {
        assert_eq!(fake.stats().throttled, 0, "a healthy account throttled us");
        assert_eq!(store.blast(id).await.unwrap().counts.throttled, 0);
        // 200 at 40/s, starting with a full bucket of 40: at least 4 s.
        assert!(secs >= 3.9, "{secs} s: faster than the account allows");
        assert_eq!(
            store
                .shared_sends_last_24h("shared", now_ms())
                .await
                .unwrap(),
            200
        );
    }
}

async fn an_smtp_rejection_mid_blast_bounces_the_person_at_once(db: TestDb) {
    use narwhal_fakes::smtp::{RecipientRule, SmtpSink};
    use narwhal_mail::smtp::{SmtpConfig, SmtpProvider};
    let store = &db.store;
    let expected = seed(store, 12).await;
    let sink = SmtpSink::start().await.unwrap();
    // p4's mailbox is gone; p5's server refuses the content (a policy block, not a
    // dead address).
    sink.set_rule(
        "p4@example.com",
        RecipientRule::Reject(550, "5.1.1 Mailbox does not exist".into()),
    );
    sink.set_rule(
        "p5@example.com",
        RecipientRule::Reject(554, "5.7.1 Message refused by policy".into()),
    );
    let smtp = Account {
        provider: Arc::new(
            SmtpProvider::new(SmtpConfig::new(
                "smtp:test",
                "127.0.0.1",
                sink.addr().port(),
            ))
            .unwrap(),
        ),
        weight: 1,
        spec: ThrottleSpec::parse("1000/s").unwrap(),
    };
    let id = new_blast(store).await;
    store.schedule_blast(id, now_ms(), 1).await.unwrap();
    let node = start(store, vec![smtp], "n1");
    wait_for(store, id, 30, |b| b.state == BlastState::Done).await;
    node.stop().await;
    let b = store.blast(id).await.unwrap();
    assert_eq!((b.counts.sent, b.counts.failed), (10, 2));
    assert_eq!(sink.message_count(), expected.len() - 2);
    // The dead mailbox is a permanent bounce: suppressed and the person's consent
    // says so, at once, without waiting for a DSN.
    let p4 = Email::parse("p4@example.com").unwrap();
    let p5 = Email::parse("p5@example.com").unwrap();
    assert!(store.is_suppressed(&p4).await.unwrap());
    assert!(!store.is_suppressed(&p5).await.unwrap());
    let who = |e: &'static str| async move {
        let hits = store.search_people(e, None, 1).await.unwrap();
        store
            .get_person(hits[0].id)
            .await
            .unwrap()
            .row
            .email_consent
    };
    assert_eq!(who("p4@example.com").await, "bounced");
    assert_eq!(
        who("p5@example.com").await,
        "unknown",
        "a policy block is not a dead address"
    );
    let fb = store.blast_feedback(id).await.unwrap();
    assert_eq!(fb.bounced, 1);
    // The failures report keeps the server's words.
    let failures = store.blast_failures(id, None, 10).await.unwrap();
    assert!(
        failures.iter().any(|f| f.reason.contains("5.1.1")),
        "{failures:?}"
    );
}

narwhal_store::both_backends!(
    an_smtp_rejection_mid_blast_bounces_the_person_at_once,
    two_nodes_share_one_accounts_rate,
    every_eligible_recipient_exactly_once,
    throttling_is_requeued_and_the_blast_completes,
    an_outage_fails_over_to_the_second_account,
    two_nodes_split_one_blast_without_duplicates,
    a_node_killed_mid_blast_is_taken_over_with_bounded_counted_duplicates,
    pause_then_resume_sends_no_duplicate,
    wrong_credentials_pause_the_blast_with_a_reason_and_send_nothing,
);
