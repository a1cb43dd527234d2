//! `[donations]` settings and what `narwhal serve` builds from them: the processor
//! accounts (Stripe's wire format), the router, the donation service, the abuse limits,
//! the public page, webhook secrets, and the periodic task that settles ambiguous
//! attempts and checks processor health.
//!
//! ```toml
//! [donations]
//! committee = "Friends of Ada"
//! amounts = [10, 25, 50, 100, 250]      # dollars, the page's buttons
//! excess = "refuse"                     # or "designate_to_next_election"
//! client_ip_header = "x-forwarded-for"  # only behind a proxy you trust
//! settle_every_secs = 10
//! settle_timeout_ms = 2000             # then 202 "being confirmed"; the settler finishes it
//!
//! [donations.limits]                    # optional; default: 2025-26 ($3,500 per election)
//! cycle = 2026
//! per_election_cents = 350000
//! elections = ["P2026", "G2026"]
//! current_election = "P2026"
//! itemize_above_cents = 20000
//! excess = "refuse"
//!
//! [donations.abuse]                     # optional; per node
//! window_secs = 600
//! per_ip = 30
//! per_email = 10
//! per_card = 5
//! declines_before_block = 5
//! block_secs = 3600
//!
//! [[donations.processors]]              # in order of preference
//! name = "stripe-primary"
//! kind = "stripe"
//! api_base = "https://api.stripe.com"
//! secret_key_env = "STRIPE_PRIMARY_SECRET_KEY"
//! publishable_key = "pk_live_..."
//! webhook_secret_env = "STRIPE_PRIMARY_WEBHOOK_SECRET"
//! max_rps = 25
//! timeout_ms = 8000                   # past it a charge is ambiguous: settled by a status query
//! ```

use anyhow::{bail, Context};
use narwhal_domain::limits::{ExcessPolicy, LimitTable};
use narwhal_http::abuse::{AbuseConfig, Guard};
use narwhal_http::donations::{DonationsEdge, PageConfig};
use narwhal_mail::Secret;
use narwhal_pay::processor::Processor;
use narwhal_pay::router::{BreakerConfig, Router};
use narwhal_pay::service::{Donations, PayConfig};
use narwhal_pay::stripe::{StripeConfig, StripeProcessor};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// `[donations]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DonationSettings {
    /// The committee's name on the page.
    pub committee: Option<String>,
    /// The page's amount buttons, in dollars.
    pub amounts: Option<Vec<u32>>,
    /// `refuse` or `designate_to_next_election` (overrides `limits.excess`).
    pub excess: Option<ExcessPolicy>,
    /// The limit table (default: 2025-26).
    pub limits: Option<LimitTable>,
    /// Behind a trusted proxy: the header with the client's address.
    pub client_ip_header: Option<String>,
    /// Seconds between settling unsettled attempts and health checks (default 10).
    pub settle_every_secs: Option<u64>,
    /// How long a donor's request keeps asking about an ambiguous charge before it
    /// answers "being confirmed" (202) and leaves it to the settler, in ms (default 2000).
    pub settle_timeout_ms: Option<u64>,
    /// Card-testing limits.
    pub abuse: Option<AbuseSettings>,
    /// Processor accounts in order of preference.
    #[serde(default)]
    pub processors: Vec<ProcessorSettings>,
    /// Where the Stripe-compatible API (`/v1/...`) posts its signed events, if anywhere.
    pub compat_webhook_url: Option<String>,
    /// The environment variable holding that endpoint's signing secret (`whsec_...`).
    pub compat_webhook_secret_env: Option<String>,
}

/// `[donations.abuse]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbuseSettings {
    pub window_secs: Option<u64>,
    pub per_ip: Option<u32>,
    pub per_email: Option<u32>,
    pub per_card: Option<u32>,
    pub declines_before_block: Option<u32>,
    pub block_secs: Option<u64>,
    pub suspicious_after: Option<u32>,
}

/// `[[donations.processors]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessorSettings {
    /// Our name for the account, in attempt rows and the webhook URL
    /// (`/webhooks/stripe/NAME`).
    pub name: String,
    /// `stripe` (any API speaking Stripe's wire format).
    pub kind: String,
    /// Default `https://api.stripe.com`.
    pub api_base: Option<String>,
    /// The environment variable holding the secret key.
    pub secret_key_env: String,
    /// The publishable key the page tokenizes cards with (public by design).
    pub publishable_key: Option<String>,
    /// The environment variable holding the webhook signing secret.
    pub webhook_secret_env: Option<String>,
    /// Requests per second to this account (default 25).
    pub max_rps: Option<u32>,
    /// The longest wait for this account's answer, in ms (default 8000). Past it a
    /// charge is ambiguous and is settled by a status query, never retried elsewhere;
    /// a game day or a fast vendor can set it lower.
    pub timeout_ms: Option<u64>,
}

impl DonationSettings {
    /// Whether donations are configured (at least one processor).
    pub fn enabled(&self) -> bool {
        !self.processors.is_empty()
    }

    /// Builds the Stripe-compatible API over the donation service, with its webhook
    /// endpoint when `compat_webhook_url` is set (its secret is then required).
    pub fn build_compat(
        &self,
        service: Donations,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<narwhal_pay::compat::Compat> {
        use narwhal_pay::compat::{Compat, CompatConfig, WebhookEndpoint};
        let webhook = match &self.compat_webhook_url {
            None => None,
            Some(url) => {
                let Some(var) = &self.compat_webhook_secret_env else {
                    bail!("donations.compat_webhook_secret_env: required with compat_webhook_url");
                };
                let Some(secret) = env(var).filter(|v| !v.is_empty()) else {
                    bail!("donations.compat_webhook_secret_env: the variable {var} is not set");
                };
                Some(WebhookEndpoint {
                    url: url.clone(),
                    secret: Secret::new(secret),
                })
            }
        };
        Compat::new(
            service,
            CompatConfig {
                webhook,
                ..CompatConfig::default()
            },
        )
        .map_err(|e| anyhow::anyhow!("donations compatible API: {e}"))
    }

    /// Checks the settings and builds the donation edge; names the key at fault.
    pub fn build(
        &self,
        store: &narwhal_store::Store,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> anyhow::Result<DonationsEdge> {
        let mut processors: Vec<Arc<dyn Processor>> = Vec::new();
        let mut longest_timeout = Duration::ZERO;
        let mut secrets = HashMap::new();
        for (i, p) in self.processors.iter().enumerate() {
            let at = format!("donations.processors[{i}]");
            if p.kind != "stripe" {
                bail!("{at}.kind: expected \"stripe\", got {:?}", p.kind);
            }
            if p.name.is_empty()
                || !p
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                bail!("{at}.name: letters, digits, - and _ only");
            }
            if self.processors[..i].iter().any(|q| q.name == p.name) {
                bail!("{at}.name: {:?} is used twice", p.name);
            }
            let key = env(&p.secret_key_env).with_context(|| {
                format!(
                    "{at}.secret_key_env: the variable {} is not set",
                    p.secret_key_env
                )
            })?;
            let mut c = StripeConfig::new(p.name.clone(), Secret::new(key));
            if let Some(base) = &p.api_base {
                c = c.base_url(base.clone());
            }
            if let Some(rps) = p.max_rps {
                if rps == 0 {
                    bail!("{at}.max_rps: must be at least 1");
                }
                c.max_requests_per_second = rps;
            }
            c.request_timeout = Duration::from_millis(p.timeout_ms.unwrap_or(8_000));
            longest_timeout = longest_timeout.max(c.request_timeout);
            if p.timeout_ms == Some(0) {
                bail!("{at}.timeout_ms: must be at least 1");
            }
            let stripe = StripeProcessor::new(c).map_err(|e| anyhow::anyhow!("{at}: {e}"))?;
            processors.push(Arc::new(stripe));
            if let Some(var) = &p.webhook_secret_env {
                let s = env(var).with_context(|| {
                    format!("{at}.webhook_secret_env: the variable {var} is not set")
                })?;
                secrets.insert(p.name.clone(), Secret::new(s));
            }
        }
        let mut limits = self.limits.clone().unwrap_or_default();
        if let Some(excess) = self.excess {
            limits.excess = excess;
        }
        let router = Arc::new(Router::new(processors, BreakerConfig::default()));
        let settle_timeout = Duration::from_millis(self.settle_timeout_ms.unwrap_or(2_000));
        let service = Donations::new(
            store.clone(),
            router,
            PayConfig {
                limits,
                settle_timeout,
                abandoned_after: abandoned_after(longest_timeout, settle_timeout),
                ..PayConfig::default()
            },
        );
        let d = AbuseConfig::default();
        let a = self.abuse.clone().unwrap_or_default();
        let abuse = AbuseConfig {
            window: a.window_secs.map(Duration::from_secs).unwrap_or(d.window),
            per_ip: a.per_ip.unwrap_or(d.per_ip),
            per_email: a.per_email.unwrap_or(d.per_email),
            per_card: a.per_card.unwrap_or(d.per_card),
            declines_before_block: a.declines_before_block.unwrap_or(d.declines_before_block),
            block_for: a.block_secs.map(Duration::from_secs).unwrap_or(d.block_for),
            suspicious_after: a.suspicious_after.unwrap_or(d.suspicious_after),
        };
        let first = self.processors.first();
        let page = PageConfig {
            committee: self
                .committee
                .clone()
                .unwrap_or_else(|| PageConfig::default().committee),
            amounts_cents: self
                .amounts
                .as_ref()
                .map(|a| a.iter().map(|d| i64::from(*d) * 100).collect())
                .unwrap_or_else(|| PageConfig::default().amounts_cents),
            tokenize_url: first
                .and_then(|p| p.api_base.clone())
                .unwrap_or_else(|| PageConfig::default().tokenize_url),
            publishable_key: first
                .and_then(|p| p.publishable_key.clone())
                .unwrap_or_default(),
        };
        let client_ip_header =
            match &self.client_ip_header {
                Some(h) => Some(h.parse().map_err(|_| {
                    anyhow::anyhow!("donations.client_ip_header: not a header name")
                })?),
                None => None,
            };
        let mut edge = DonationsEdge::new(service);
        edge.guard = Arc::new(Guard::new(abuse));
        edge.webhook_secrets = Arc::new(secrets);
        edge.page = Arc::new(page);
        edge.client_ip_header = client_ip_header;
        Ok(edge)
    }

    /// How often the settler and the health checks run.
    pub fn settle_every(&self) -> Duration {
        Duration::from_secs(self.settle_every_secs.unwrap_or(10).max(1))
    }
}

/// Every `every`: settle attempts left unsettled (a node died mid-call, a processor
/// never answered), check the processors' health and charge recurring installments
/// that are due, until `stop` turns true.
pub fn spawn_settler(
    service: Donations,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                return;
            }
            service.router.check_health().await;
            match service.settle_unsettled().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(moved = n, "donations: settled unsettled attempts"),
                Err(e) => tracing::warn!(error = %e, "donations: settling failed; will retry"),
            }
            // Recurring installments due now (claimed per plan, so several nodes can
            // run this at once without charging one installment twice).
            match service.run_due_plans(narwhal_store::now_ms()).await {
                Ok(run) if run.charged + run.failed + run.ended > 0 => tracing::info!(
                    charged = run.charged,
                    failed = run.failed,
                    retrying = run.retrying,
                    ended = run.ended,
                    "donations: recurring plans run"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "donations: recurring run failed; will retry"),
            }
        }
    })
}

/// How old an attempt still `started` must be before the settler takes it as a dead
/// node's and asks the processor about it: twice the longest a live request can spend
/// on it (the processor's timeout, then the donor's wait on status queries), and at
/// least 10 s. Asking sooner is safe (a status query changes nothing, a charge found is
/// recorded idempotently, "not charged" is not believed within `lookup_grace`); asking
/// late leaves a killed node's charged gift unrecorded for that long.
fn abandoned_after(processor_timeout: Duration, settle_timeout: Duration) -> Duration {
    ((processor_timeout + settle_timeout) * 2).max(Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn a_dead_nodes_attempts_are_settled_after_twice_the_longest_request() {
        // Defaults: an 8 s processor timeout and a 2 s wait on status queries.
        assert_eq!(
            abandoned_after(Duration::from_secs(8), Duration::from_secs(2)),
            Duration::from_secs(20)
        );
        // A fast vendor setting: never sooner than 10 s.
        assert_eq!(
            abandoned_after(Duration::from_millis(1200), Duration::from_millis(500)),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn settings_parse_and_name_what_is_missing() {
        let s: DonationSettings = toml::from_str(
            r#"
            committee = "Friends of Ada"
            amounts = [5, 20]
            excess = "designate_to_next_election"
            [abuse]
            per_ip = 3
            [[processors]]
            name = "stripe-primary"
            kind = "stripe"
            api_base = "http://127.0.0.1:9"
            secret_key_env = "SK"
            webhook_secret_env = "WH"
            "#,
        )
        .unwrap();
        assert!(s.enabled());
        assert_eq!(s.abuse.as_ref().unwrap().per_ip, Some(3));
        assert!(toml::from_str::<DonationSettings>("nope = 1").is_err());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let db = narwhal_store::test_support::TestDb::new(narwhal_store::Backend::Sqlite)
                .await
                .unwrap();
            let err = s.build(&db.store, &|_| None).err().unwrap().to_string();
            assert!(
                err.contains("donations.processors[0].secret_key_env"),
                "{err}"
            );
            let env = |k: &str| (k == "SK" || k == "WH").then(|| format!("{k}-value"));
            let edge = s.build(&db.store, &env).unwrap();
            assert_eq!(edge.page.amounts_cents, vec![500, 2000]);
            assert_eq!(
                edge.service.config.limits.excess,
                ExcessPolicy::DesignateToNextElection
            );
            assert!(edge.webhook_secrets.contains_key("stripe-primary"));
        });
    }
}
