#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Donor emails on both backends, through a real SMTP conversation with the project's
//! sink: a receipt once per succeeded gift (never with card data), a pledge's payment
//! link only once a processor answers again, whose new token completes the pledge
//! while the old one stops working, and the next mail account when one is down.

#[path = "support/rig.rs"]
mod rig;
use narwhal_domain::Email;
use narwhal_fakes::smtp::SmtpSink;
use narwhal_fakes::stripe::{FakeStripe, FakeStripeConfig, Fault};
use narwhal_mail::smtp::{SmtpConfig, SmtpProvider};
use narwhal_mail::Provider;
use narwhal_pay::notices::{NoticeConfig, Notices};
use narwhal_pay::service::{Donations, Outcome, PayConfig};
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

both_backends!(
    a_receipt_goes_out_once_per_succeeded_gift,
    a_pledge_gets_its_link_when_processing_is_back,
    a_down_mail_account_hands_over_to_the_next,
);
