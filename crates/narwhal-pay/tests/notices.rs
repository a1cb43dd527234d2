#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Donor emails on both backends, through a real SMTP conversation with the project's
//! sink: a receipt once per succeeded gift (never with card data), a pledge's payment
//! link only once a processor answers again, whose new token completes the pledge
//! while the old one stops working, the next mail account when one is down, and a
//! declined recurring installment's notice (the next try with a cancel link that
//! works, or once that the plan stopped).

#[path = "support/rig.rs"]
mod rig;
use narwhal_domain::Email;
use narwhal_fakes::smtp::SmtpSink;
use narwhal_fakes::stripe::{FakeStripe, FakeStripeConfig, Fault};
use narwhal_mail::smtp::{SmtpConfig, SmtpProvider};
use narwhal_mail::Provider;
use narwhal_pay::notices::{NoticeConfig, Notices};
use narwhal_pay::service::{Donations, Outcome, PayConfig, Recurrence};
use narwhal_store::both_backends;
use narwhal_store::donations::NoticeKind;
use narwhal_store::test_support::TestDb;
use rig::{gift, two_stripes};
use std::sync::Arc;
use std::time::Duration;

struct Rig {
    primary: FakeStripe,
    backup: FakeStripe,
    donations: Donations,
    sink: SmtpSink,
    notices: Notices,
    _db: TestDb,
}

fn smtp(name: &str, port: u16) -> Arc<dyn Provider> {
    Arc::new(SmtpProvider::new(SmtpConfig::new(name, "127.0.0.1", port)).unwrap())
}

/// `accounts_before`: mail accounts tried before the sink (for failover).
async fn rig(db: TestDb, accounts_before: Vec<Arc<dyn Provider>>) -> Rig {
    let primary = FakeStripe::start(FakeStripeConfig::default())
        .await
        .unwrap();
    let backup = FakeStripe::start(FakeStripeConfig::default())
        .await
        .unwrap();
    let router = two_stripes(&primary, &backup);
    let config = PayConfig {
        lookup_grace: Duration::ZERO,
        ..PayConfig::default()
    };
    let donations = Donations::new(db.store.clone(), Arc::new(router), config);
    let sink = SmtpSink::start().await.unwrap();
    let mut accounts = accounts_before;
    accounts.push(smtp("smtp:sink", sink.addr().port()));
    let notices = Notices::new(
        &donations,
        accounts,
        NoticeConfig {
            from: Email::parse("receipts@campaign.example").unwrap(),
            committee: "Friends of Ada".into(),
            postal_address: "PO Box 1, Columbus OH 43215".into(),
            base_url: "https://act.campaign.example/".into(),
            lease: Duration::from_millis(300),
        },
    );
    Rig {
        primary,
        backup,
        donations,
        sink,
        notices,
        _db: db,
    }
}

/// The messages the sink took for `to`, as text.
fn mail_to(sink: &SmtpSink, to: &str) -> Vec<String> {
    sink.messages()
        .into_iter()
        .filter(|m| m.recipients.iter().any(|r| r == to))
        .map(|m| String::from_utf8_lossy(&m.data).replace("=\r\n", ""))
        .collect()
}

async fn a_receipt_goes_out_once_per_succeeded_gift(db: TestDb) {
    let r = rig(db, Vec::new()).await;
    let t = r
        .donations
        .take(gift("r1", "ada@example.org", 5_500, "pm_card_visa"))
        .await
        .unwrap();
    assert_eq!(t.outcome, Outcome::Succeeded);
    let run = r.notices.run_once().await.unwrap();
    assert_eq!((run.receipts, run.pledge_links, run.deferred), (1, 0, 0));
    let mail = mail_to(&r.sink, "ada@example.org");
    assert_eq!(mail.len(), 1);
    let m = &mail[0];
    assert!(m.contains("Your receipt: $55.00 to Friends of Ada"), "{m}");
    assert!(m.contains(&t.donation.public_id), "{m}");
    assert!(m.contains("ending in 4242"), "{m}");
    assert!(m.contains("not deductible"), "{m}");
    assert!(!m.contains("4242424242424242"), "never a card number");
    assert!(r
        .donations
        .store
        .donor_notice_sent_at(t.donation.id, NoticeKind::Receipt)
        .await
        .unwrap()
        .is_some());
    // Nothing is owed any more: the next runs send nothing.
    let again = r.notices.run_once().await.unwrap();
    assert_eq!((again.receipts, again.deferred), (0, 0));
    assert_eq!(r.sink.message_count(), 1);
}

async fn a_pledge_gets_its_link_when_processing_is_back(db: TestDb) {
    let r = rig(db, Vec::new()).await;
    r.primary.set_fault(Fault::Down);
    r.backup.set_fault(Fault::Down);
    let t = r
        .donations
        .take(gift("p1", "bea@example.org", 2_500, "pm_card_visa"))
        .await
        .unwrap();
    assert_eq!(t.outcome, Outcome::Pledged);
    let first_token = t.pledge_token.clone().unwrap();
    // Still down: no link (it could not be paid), and no receipt (nothing charged).
    let run = r.notices.run_once().await.unwrap();
    assert_eq!((run.receipts, run.pledge_links, run.deferred), (0, 0, 1));
    assert_eq!(r.sink.message_count(), 0);
    // Back up: after the claim's lease, the link goes out.
    r.backup.set_fault(Fault::None);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let run = r.notices.run_once().await.unwrap();
    assert_eq!(run.pledge_links, 1, "{run:?}");
    let mail = mail_to(&r.sink, "bea@example.org");
    assert_eq!(mail.len(), 1);
    let m = &mail[0];
    assert!(m.contains("Complete your $25.00 pledge"), "{m}");
    let start = m
        .find("https://act.campaign.example/donate/pledge/")
        .unwrap();
    let token: String = m[start + "https://act.campaign.example/donate/pledge/".len()..]
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect();
    assert!(!token.is_empty());
    // The emailed token works; the one shown at the time no longer does.
    assert!(r
        .donations
        .pledge_by_token(&first_token)
        .await
        .unwrap()
        .is_none());
    let p = r.donations.pledge_by_token(&token).await.unwrap().unwrap();
    assert_eq!(p.id, t.donation.id);
    let done = r
        .donations
        .complete_pledge(&token, "pm_card_visa")
        .await
        .unwrap();
    assert_eq!(done.outcome, Outcome::Succeeded);
    // Completed: a receipt follows, and no second link.
    let run = r.notices.run_once().await.unwrap();
    assert_eq!((run.receipts, run.pledge_links), (1, 0));
    assert_eq!(mail_to(&r.sink, "bea@example.org").len(), 2);
    assert_eq!(r.backup.ledger().len(), 1, "charged once");
}

async fn a_down_mail_account_hands_over_to_the_next(db: TestDb) {
    // Nothing listens on this port: the first account is down.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let r = rig(db, vec![smtp("smtp:gone", port)]).await;
    r.donations
        .take(gift("f1", "cy@example.org", 1_000, "pm_card_visa"))
        .await
        .unwrap();
    let run = r.notices.run_once().await.unwrap();
    assert_eq!((run.receipts, run.deferred), (1, 0));
    assert_eq!(mail_to(&r.sink, "cy@example.org").len(), 1);
}

/// A monthly plan started by a first gift of $15 from `email`: its first cancel token.
async fn monthly(r: &Rig, key: &str, email: &str) -> String {
    let mut first = gift(key, email, 1_500, "pm_card_visa");
    first.recurring = Some(Recurrence {
        every: "month".into(),
        ends_at: None,
    });
    let t = r.donations.take(first).await.unwrap();
    assert_eq!(t.outcome, Outcome::Succeeded);
    t.plan_cancel_token.unwrap()
}

const DAY: i64 = 86_400_000;

async fn a_declined_installment_tells_the_donor_and_its_link_cancels(db: TestDb) {
    let r = rig(db, Vec::new()).await;
    let first_cancel = monthly(&r, "m1", "dee@example.org").await;
    let run = r.notices.run_once().await.unwrap();
    assert_eq!((run.receipts, run.installment_notices), (1, 0));
    let now = narwhal_store::now_ms();
    r.primary.set_fault(Fault::DeclineAll);
    let plans = r.donations.run_due_plans(now + 32 * DAY).await.unwrap();
    assert_eq!((plans.failed, plans.retrying), (1, 1));
    let run = r.notices.run_once().await.unwrap();
    assert_eq!((run.receipts, run.installment_notices), (0, 1), "{run:?}");
    let mail = mail_to(&r.sink, "dee@example.org");
    assert_eq!(mail.len(), 2);
    let m = mail
        .iter()
        .find(|m| m.contains("did not go through"))
        .unwrap();
    assert!(
        m.contains("Your monthly gift of $15.00 did not go through"),
        "{m}"
    );
    let plan = &r.donations.store.plans(10).await.unwrap()[0];
    let retry = time::OffsetDateTime::from_unix_timestamp(plan.next_charge_at / 1000).unwrap();
    let retry = format!(
        "{:04}-{:02}-{:02}",
        retry.year(),
        u8::from(retry.month()),
        retry.day()
    );
    assert!(
        m.contains(&format!("try your card again on {retry}")),
        "{m}"
    );
    let prefix = "https://act.campaign.example/donate/recurring/cancel/";
    let start = m.find(prefix).expect("a cancel link");
    let token: String = m[start + prefix.len()..]
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect();
    assert!(!token.is_empty() && token != first_cancel);
    // Told once.
    let run = r.notices.run_once().await.unwrap();
    assert_eq!(run.installment_notices, 0);
    assert_eq!(r.sink.message_count(), 2);
    // Both links name the plan; the emailed one cancels it, and then nothing is charged.
    let by_first = r
        .donations
        .plan_by_cancel_token(&first_cancel)
        .await
        .unwrap();
    assert_eq!(by_first.map(|p| p.id), Some(plan.id));
    assert!(r.donations.cancel_plan(&token).await.unwrap());
    assert!(!r.donations.cancel_plan(&first_cancel).await.unwrap());
    r.primary.set_fault(Fault::None);
    let ledger = r.primary.ledger().len();
    let plans = r.donations.run_due_plans(now + 40 * DAY).await.unwrap();
    assert_eq!(plans.charged, 0);
    assert_eq!(r.primary.ledger().len(), ledger);
}

async fn a_plan_out_of_tries_says_so_once(db: TestDb) {
    let r = rig(db, Vec::new()).await;
    monthly(&r, "m2", "eve@example.org").await;
    let now = narwhal_store::now_ms();
    r.primary.set_fault(Fault::DeclineAll);
    // Mail is not run between the tries: four declines, then the plan fails.
    for days in [32, 33, 36, 43] {
        r.donations.run_due_plans(now + days * DAY).await.unwrap();
    }
    assert_eq!(
        r.donations.store.plans(10).await.unwrap()[0].state,
        "failed"
    );
    let run = r.notices.run_once().await.unwrap();
    assert_eq!(run.installment_notices, 1, "{run:?}");
    let mail: Vec<String> = mail_to(&r.sink, "eve@example.org")
        .into_iter()
        .filter(|m| m.contains("did not go through"))
        .collect();
    assert_eq!(
        mail.len(),
        1,
        "one email about the plan, not one per decline"
    );
    assert!(
        mail[0].contains("we have stopped this recurring gift"),
        "{}",
        mail[0]
    );
    assert!(
        !mail[0].contains("/donate/recurring/cancel/"),
        "nothing left to cancel"
    );
    let run = r.notices.run_once().await.unwrap();
    assert_eq!(run.installment_notices, 0);
}

both_backends!(
    a_receipt_goes_out_once_per_succeeded_gift,
    a_pledge_gets_its_link_when_processing_is_back,
    a_down_mail_account_hands_over_to_the_next,
    a_declined_installment_tells_the_donor_and_its_link_cancels,
    a_plan_out_of_tries_says_so_once,
);
