//! `narwhal serve`: API, console and workers, with graceful shutdown.

use crate::config::{open_store, Settings};
use anyhow::Context;
use narwhal_http::{AppState, HttpConfig};

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "NARWHAL_LISTEN")]
    pub listen: Option<String>,
    /// A name for this node in job leases (default: host-pid).
    #[arg(long, env = "NARWHAL_NODE_ID")]
    pub node_id: Option<String>,
    /// Seconds a claimed background job stays this node's without a heartbeat; after
    /// that, another node takes it over (a crashed node's work is not lost).
    #[arg(long, env = "NARWHAL_JOB_LEASE_SECS", default_value_t = 60)]
    pub job_lease_secs: u32,
    /// Mark the session cookie Secure (set when served over HTTPS).
    #[arg(long, env = "NARWHAL_COOKIE_SECURE")]
    pub cookie_secure: bool,
    /// PEM certificate chain: serve HTTPS (with --tls-key), and redirect --listen to it.
    #[arg(long)]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long)]
    pub tls_key: Option<std::path::PathBuf>,
    /// Where HTTPS listens when TLS is on (default [http] https_listen, else 0.0.0.0:443).
    #[arg(long)]
    pub https_listen: Option<String>,
}

/// Connections of the pool background bulk work (imports, blasts) runs on, apart from
/// the pool that serves requests: a big import or a blast never takes the
/// connections election-day reports and logins need.
pub const BULK_POOL: u32 = 4;

/// How long a request waits for a database connection before it is shed with 503 and
/// `Retry-After` (PostgreSQL): past this it could not meet a 2 s answer anyway, and a
/// short queue that turns callers away beats a long one every caller waits out.
pub const SHED_AFTER: std::time::Duration = std::time::Duration::from_millis(1000);

/// Connections of the serving pool opened at start, before any request: enough for
/// a burst's group commits (two per stage) and the requests' own reads.
pub const WARM_CONNECTIONS: u32 = 8;

pub async fn run(settings: &Settings, args: ServeArgs) -> anyhow::Result<()> {
    let store = open_store(settings).await?;
    serve_store(settings, store, &args, None).await
}

/// Serves an opened store; `banner` is printed once the port is bound.
pub async fn serve_store(
    settings: &Settings,
    store: narwhal_store::Store,
    args: &ServeArgs,
    banner: Option<String>,
) -> anyhow::Result<()> {
    let listen = args
        .listen
        .clone()
        .unwrap_or_else(|| settings.listen.clone());
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let node_id = args
        .node_id
        .clone()
        .unwrap_or_else(|| format!("node-{}", std::process::id()));
    let upload_dir = settings.data_dir.join("uploads");
    std::fs::create_dir_all(&upload_dir)
        .with_context(|| format!("cannot create {}", upload_dir.display()))?;
    let mut http = settings.http.clone();
    if args.tls_cert.is_some() || args.tls_key.is_some() {
        http.tls_cert = args.tls_cert.clone();
        http.tls_key = args.tls_key.clone();
    }
    if let Some(l) = &args.https_listen {
        http.https_listen = Some(l.clone());
    }
    let tls = match http.tls() {
        Some((cert, key)) => Some(narwhal_http::tls::load(cert, key)?),
        None if args.tls_cert.is_some() || args.tls_key.is_some() => {
            anyhow::bail!("--tls-cert and --tls-key: give both or neither")
        }
        None => None,
    };
    let config = HttpConfig {
        cookie_secure: args.cookie_secure || tls.is_some(),
        upload_dir,
        sms_auth_token: narwhal_http::sms::SmsAuthToken::new(
            std::env::var(http.sms_token_var()).unwrap_or_default(),
        ),
        token_cache_ttl: http.token_cache_ttl(),
        ..HttpConfig::default()
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_rx_blasts = stop_rx.clone();
    // Background work waits for connections as long as it must; requests are shed.
    let bulk = store.for_bulk(BULK_POOL);
    let store = store.shedding(SHED_AFTER);
    // Connected before the first request rather than by it (see `Store::open_connections`).
    if let Err(e) = store.open_connections(WARM_CONNECTIONS).await {
        tracing::warn!(error = %e, "could not open the database connections ahead of requests");
    }
    let worker = narwhal_people::worker::spawn(
        bulk.clone(),
        node_id.clone(),
        i64::from(args.job_lease_secs.max(1)) * 1000,
        stop_rx,
    );
    let https = match &tls {
        Some(_) => {
            let l = http.https_listen.as_deref().unwrap_or("0.0.0.0:443");
            let listener = tokio::net::TcpListener::bind(l)
                .await
                .with_context(|| format!("cannot listen on {l} (https_listen)"))?;
            Some(listener)
        }
        None => None,
    };
    match &https {
        Some(h) => println!(
            "Narwhal is serving on https://{} (node {node_id}, {}); http://{addr} redirects to it",
            h.local_addr()?,
            settings.database.redacted()
        ),
        None => println!(
            "Narwhal is serving on http://{addr} (node {node_id}, {})",
            settings.database.redacted()
        ),
    }
    if let Some(b) = banner {
        println!("{b}");
    }
    let job_lease_ms = i64::from(args.job_lease_secs.max(1)) * 1000;
    let mail = mail_sender(settings, &bulk, &node_id, &addr.to_string(), job_lease_ms).await?;
    let blast_worker = narwhal_mail::blast::spawn(mail.sender.clone(), stop_rx_blasts);
    // Planner statistics of growing tables stay fresh even where autovacuum is off
    // or has not woken yet (see narwhal_store::upkeep).
    let upkeep = bulk.spawn_statistics_keeper(narwhal_store::upkeep::EVERY, stop_tx.subscribe());
    let state = AppState::new(store.clone(), config).with_mail(mail);
    // `[donations]`: the service, the page, webhooks, and the settler beside them.
    let (state, settler) = if settings.donations.enabled() {
        let edge = settings
            .donations
            .build(&store, &|n| std::env::var(n).ok())?;
        let settler = crate::donations_setup::spawn_settler(
            edge.service.clone(),
            settings.donations.settle_every(),
            stop_tx.subscribe(),
        );
        // Receipts and pledge payment links, through the node's mail accounts.
        if let Some(n) = state
            .mail
            .as_ref()
            .and_then(|m| crate::donor_notices::notices(&edge.service, m))
        {
            let _notices = crate::donor_notices::spawn(n, stop_tx.subscribe());
        }
        // The Stripe-compatible `/v1` API over the same service, and its event sender.
        let compat = settings
            .donations
            .build_compat(edge.service.clone(), &|n| std::env::var(n).ok())?;
        let _events = narwhal_pay::compat::spawn_webhook_worker(
            compat.clone(),
            node_id.clone(),
            std::time::Duration::from_secs(5),
            stop_tx.subscribe(),
        );
        (
            state.with_donations(edge).with_compat(compat),
            Some(settler),
        )
    } else {
        (state, None)
    };
    let sweeper =
        spawn_feedback_sweeper(narwhal_http::feedback::service(&state), stop_tx.subscribe());
    let (quit_tx, quit_rx) = tokio::sync::watch::channel(false);
    let quit = move || {
        let mut rx = quit_rx.clone();
        async move {
            let _ = rx.wait_for(|q| *q).await;
        }
    };
    let signal = tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
        let _ = quit_tx.send(true);
    });
    match (https, tls) {
        (Some(https), Some(tls)) => {
            let port = http.https_port.unwrap_or(https.local_addr()?.port());
            let redirect = narwhal_http::tls::serve_redirect(listener, port, quit());
            let app = narwhal_http::tls::serve_tls(https, tls, narwhal_http::router(state), quit());
            let (a, b) = tokio::join!(app, redirect);
            a?;
            b?;
        }
        _ => narwhal_http::serve(listener, state, quit()).await?,
    }
    signal.abort();
    let _ = stop_tx.send(true);
    let _ = worker.await;
    let _ = blast_worker.await;
    let _ = sweeper.await;
    let _ = upkeep.await;
    if let Some(s) = settler {
        let _ = s.await;
    }
    store.close().await;
    Ok(())
}

/// How often a node looks for stored feedback that was never applied.
const FEEDBACK_SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
/// How long a payload may wait for the node that stored it before a sweep applies it.
const FEEDBACK_SWEEP_AFTER_MS: i64 = 5 * 60_000;

/// Applies feedback a dead node stored but never applied (SNS stops redelivering
/// after its retry policy; SMTP rejections are never redelivered). Every node runs
/// it: applying a payload twice records nothing new.
fn spawn_feedback_sweeper(
    feedback: narwhal_mail::feedback::Feedback,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(FEEDBACK_SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if let Err(e) = feedback.sweep(FEEDBACK_SWEEP_AFTER_MS, 500).await {
                tracing::warn!(error = %e, "feedback sweep failed; trying again later");
            }
        }
    })
}

/// The node's blast sender from `[mail]`: the accounts (limits read from providers
/// that report them), footer and unsubscribe signer. With no account configured it
/// still runs, and a blast that starts pauses with the reason.
async fn mail_sender(
    settings: &Settings,
    store: &narwhal_store::Store,
    node_id: &str,
    addr: &str,
    job_lease_ms: i64,
) -> anyhow::Result<narwhal_http::blasts::MailEdge> {
    let key = match settings.mail.unsubscribe_secret_env {
        Some(_) => Vec::new(),
        None => settings.fallback_unsubscribe_key()?,
    };
    let mut setup = settings
        .mail
        .build(
            &settings.data_dir,
            &format!("http://{addr}/u/"),
            &key,
            &|n| std::env::var(n).ok(),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    narwhal_mail::accounts::read_reported_limits(&settings.mail, &mut setup.accounts).await;
    if setup.accounts.is_empty() {
        tracing::warn!("mail: no account is configured; blasts that start will pause until one is");
    } else {
        let names: Vec<&str> = setup.accounts.iter().map(|a| a.provider.name()).collect();
        tracing::info!(accounts = %names.join(", "), "mail: sending through the configured accounts");
    }
    let sender = narwhal_mail::blast::BlastSender::new(
        store.clone(),
        setup.accounts,
        narwhal_mail::blast::SendConfig {
            // `--job-lease-secs` holds for blast jobs too: a dead node's blast is taken over
            // after it.
            job_lease_ms,
            ..narwhal_mail::blast::SendConfig::new(node_id, setup.compose)
        },
    );
    Ok(narwhal_http::blasts::MailEdge {
        sender,
        default_from: setup.from_address,
    })
}
