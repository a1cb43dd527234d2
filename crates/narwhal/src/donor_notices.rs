//! Donor emails on a serving node: receipts and pledge payment links
//! ([`narwhal_pay::notices`]), sent through the node's `[mail]` accounts, from the
//! `[mail]` sender address, signed with the footer's name and postal address, with
//! links on the public base of `mail.unsubscribe_url`.

use narwhal_http::blasts::MailEdge;
use narwhal_pay::notices::{NoticeConfig, Notices};
use narwhal_pay::service::Donations;
use std::time::Duration;

/// How often a node looks for donor emails to send.
const EVERY: Duration = Duration::from_secs(5);
/// How long a node holds donations it is emailing.
const LEASE: Duration = Duration::from_secs(120);

/// The public base URL (`https://act.example.org`) of an unsubscribe URL prefix
/// (`https://act.example.org/u/`): donation links live beside it.
fn public_base(unsubscribe_url: &str) -> String {
    let u = unsubscribe_url.trim_end_matches('/');
    u.strip_suffix("/u").unwrap_or(u).to_string()
}

/// The notice sender for this node, or `None` (with the reason logged) when it has no
/// mail account or no sender address.
pub fn notices(donations: &Donations, mail: &MailEdge) -> Option<Notices> {
    let accounts: Vec<_> = mail
        .sender
        .accounts()
        .iter()
        .map(|a| a.provider.clone())
        .collect();
    let Some(from) = mail.default_from.clone() else {
        tracing::warn!(
            "donations: no mail.from_address, so no receipts or pledge links are emailed"
        );
        return None;
    };
    if accounts.is_empty() {
        tracing::warn!("donations: no mail account, so no receipts or pledge links are emailed");
        return None;
    }
    let compose = mail.sender.compose();
    Some(Notices::new(
        donations,
        accounts,
        NoticeConfig {
            from,
            committee: compose.sender.name.clone(),
            postal_address: compose.sender.postal_address.clone(),
            base_url: public_base(&compose.unsubscribe_url),
            lease: LEASE,
        },
    ))
}

/// Runs [`Notices::run_once`] every few seconds until `stop`.
pub fn spawn(
    notices: Notices,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(EVERY) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if let Err(e) = notices.run_once().await {
                tracing::warn!(error = %e, "donations: donor emails failed; will retry");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_live_beside_the_unsubscribe_prefix() {
        assert_eq!(
            public_base("https://act.example.org/u/"),
            "https://act.example.org"
        );
        assert_eq!(
            public_base("https://example.org/narwhal/u"),
            "https://example.org/narwhal"
        );
        assert_eq!(
            public_base("http://127.0.0.1:8080/u/"),
            "http://127.0.0.1:8080"
        );
    }
}
