//! The deployment a game day runs against: by default a local one (a PostgreSQL
//! schema of its own behind the fault proxy, two fake Stripe accounts, a fake SES and
//! an SMTP sink in this process, and N `narwhal serve` child processes on loopback), or
//! an existing one given by its URLs and database.

use super::front::Front;
use super::proxy::FaultProxy;
use super::scenario::{FaultKind, Scenario};
use anyhow::{bail, Context};
use narwhal_fakes::stripe::{FakeStripe, FakeStripeConfig, DEFAULT_KEY};
use narwhal_fakes::{FakeAccount, FakeSes, SmtpSink};
use narwhal_store::{DatabaseTarget, Store};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SES_KEY: (&str, &str) = ("AKIDGAMEDAY", "gameday-secret");
/// How long a node may take to answer `/readyz` after it starts.
const READY_WITHIN: Duration = Duration::from_secs(40);

/// One `narwhal serve` process.
#[derive(Debug)]
struct NodeProc {
    name: String,
    port: u16,
    child: Option<Child>,
}

/// What only a local deployment has.
pub struct Local {
    pub primary: FakeStripe,
    pub backup: FakeStripe,
    pub ses: FakeSes,
    /// The second mail account, an SMTP relay: the blast is split over both by room,
    /// and fails over to it when SES is down or throttling.
    pub smtp: SmtpSink,
    pub proxy: FaultProxy,
    nodes: Mutex<Vec<NodeProc>>,
    dir: tempfile::TempDir,
    logs: PathBuf,
    node_db_url: String,
    base_url: String,
    schema: String,
}

/// The system under test.
pub struct Deployment {
    /// The URLs the load balances over (a node's may be its self-test front).
    pub urls: Vec<String>,
    /// The database, directly (not through the proxy): setup and verification.
    pub store: Store,
    pub local: Option<Local>,
    /// The verifier self-test's front, when the scenario asks for it.
    pub front: Option<Front>,
}

/// Replaces the host and port of a `postgres://` URL.
fn with_hostport(url: &str, hostport: &str) -> anyhow::Result<String> {
    let (scheme, rest) = url.split_once("://").context("database: not a URL")?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let user = authority.rsplit_once('@').map(|(u, _)| format!("{u}@"));
    Ok(format!(
        "{scheme}://{}{hostport}{tail}",
        user.unwrap_or_default()
    ))
}

/// The `host:port` a `postgres://` URL names (port 5432 by default).
fn hostport_of(url: &str) -> anyhow::Result<String> {
    let rest = url.split_once("://").context("database: not a URL")?.1;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let hp = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if hp.is_empty() {
        bail!("database: the URL names no host");
    }
    Ok(
        if hp
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            hp.to_string()
        } else {
            format!("{hp}:5432")
        },
    )
}

fn with_schema(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-c%20search_path%3D{schema}")
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Waits until `GET {url}/readyz` answers 200, or says why not.
pub async fn wait_ready(
    http: &reqwest::Client,
    url: &str,
    within: Duration,
    mut alive: impl FnMut() -> Result<(), String>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    let mut last;
    loop {
        alive().map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
        match http
            .get(format!("{url}/readyz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => last = format!("/readyz answered {}", r.status()),
            Err(e) => last = format!("{e}"),
        }
        if Instant::now() >= deadline {
            bail!(
                "{url} is not ready after {} s ({last}); is the deployment up?",
                within.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Deployment {
    /// Starts the local deployment, or connects to the scenario's target.
    pub async fn start(scenario: &Scenario, pg_base: &str, out: &Path) -> anyhow::Result<Self> {
        let selftest = scenario
            .faults
            .iter()
            .any(|f| f.kind == FaultKind::VerifierSelftestAckWithoutCommit);
        let http = reqwest::Client::new();
        let mut d = match &scenario.target {
            Some(t) => {
                let store = Store::open(&DatabaseTarget::Postgres(t.database.clone()))
                    .await
                    .with_context(|| {
                        format!(
                            "target database {}: cannot connect",
                            DatabaseTarget::Postgres(t.database.clone()).redacted()
                        )
                    })?;
                for u in &t.urls {
                    wait_ready(&http, u, Duration::from_secs(5), || Ok(())).await?;
                }
                Self {
                    urls: t.urls.clone(),
                    store,
                    local: None,
                    front: None,
                }
            }
            None => Self::start_local(scenario, pg_base, out).await?,
        };
        if selftest {
            let front = Front::start(d.urls[0].clone()).await?;
            d.urls[0] = front.url();
            d.front = Some(front);
        }
        Ok(d)
    }

    async fn start_local(scenario: &Scenario, pg_base: &str, out: &Path) -> anyhow::Result<Self> {
        let schema = format!(
            "gameday_{}_{}",
            std::process::id(),
            narwhal_store::now_ms() % 1_000_000
        );
        let store = Store::open_postgres_schema(pg_base, &schema)
            .await
            .with_context(|| {
                format!(
                    "PostgreSQL at {} is not reachable; start it or pass --database",
                    DatabaseTarget::Postgres(pg_base.to_string()).redacted()
                )
            })?;
        store
            .migrate()
            .await
            .context("migrating the game day's schema")?;
        let upstream = tokio::net::lookup_host(hostport_of(pg_base)?)
            .await?
            .next()
            .context("database: the host does not resolve")?;
        let proxy = FaultProxy::start(upstream).await?;
        let node_db_url = with_schema(&with_hostport(pg_base, &proxy.addr().to_string())?, &schema);
        let fake = || FakeStripeConfig {
            latency: scenario.load.processor_latency.0,
            // The ambiguous fault holds answers longer than the nodes' timeout.
            ambiguous_hold: Duration::from_secs(25),
            ..FakeStripeConfig::default()
        };
        let primary = FakeStripe::start(fake()).await?;
        let backup = FakeStripe::start(fake()).await?;
        let rate = scenario.blast.as_ref().map_or(500, |b| b.rate);
        let ses = FakeSes::start(
            "us-east-1",
            vec![FakeAccount::new(SES_KEY.0, SES_KEY.1).rate(rate)],
        )
        .await?;
        let smtp = SmtpSink::start().await?;
        let dir = tempfile::tempdir()?;
        std::fs::write(
            dir.path().join("narwhal.toml"),
            config_toml(
                &ses.endpoint(),
                smtp.addr().port(),
                rate,
                &primary.url(),
                &backup.url(),
            ),
        )?;
        let logs = out.join("logs");
        std::fs::create_dir_all(&logs)?;
        let mut nodes = Vec::new();
        for i in 0..scenario.nodes {
            nodes.push(NodeProc {
                name: format!("gameday-{i}"),
                port: free_port()?,
                child: None,
            });
        }
        let local = Local {
            primary,
            backup,
            ses,
            smtp,
            proxy,
            nodes: Mutex::new(nodes),
            dir,
            logs,
            node_db_url,
            base_url: pg_base.to_string(),
            schema,
        };
        let mut urls = Vec::new();
        for i in 0..scenario.nodes {
            urls.push(local.spawn(i)?);
        }
        let d = Self {
            urls,
            store,
            local: Some(local),
            front: None,
        };
        for i in 0..scenario.nodes {
            d.wait_node(i).await?;
        }
        Ok(d)
    }

    /// Waits for node `i` of the local deployment to be ready.
    pub async fn wait_node(&self, i: usize) -> anyhow::Result<()> {
        let Some(local) = &self.local else {
            return Ok(());
        };
        let url = local.url(i);
        let log = local.logs.join(format!("gameday-{i}.log"));
        wait_ready(&reqwest::Client::new(), &url, READY_WITHIN, || {
            local.alive(i)
        })
        .await
        .with_context(|| format!("node {i} did not start; its log: {}", log.display()))
    }

    /// Stops everything this run started and drops its schema.
    pub async fn stop(self) {
        self.store.close().await;
        if let Some(local) = self.local {
            local.stop_all();
            let _ = Store::drop_postgres_schema(&local.base_url, &local.schema).await;
        }
    }
}

impl Local {
    fn url(&self, i: usize) -> String {
        let port = self.nodes.lock().unwrap_or_else(|e| e.into_inner())[i].port;
        format!("http://127.0.0.1:{port}")
    }

    /// Starts node `i` on its port; returns its URL.
    pub fn spawn(&self, i: usize) -> anyhow::Result<String> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let n = &mut nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{}.log", n.name)))?;
        let exe = std::env::current_exe().context("cannot find the narwhal binary")?;
        let child = Command::new(exe)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{}", n.port),
                "--node-id",
                &n.name,
                "--job-lease-secs",
                "3",
            ])
            .env("NARWHAL_CONFIG", self.dir.path().join("narwhal.toml"))
            .env("NARWHAL_DATA_DIR", self.dir.path())
            .env("NARWHAL_DATABASE_URL", &self.node_db_url)
            .env("NARWHAL_LOG", "warn")
            .env("GAMEDAY_SES_KEY", SES_KEY.0)
            .env("GAMEDAY_SES_SECRET", SES_KEY.1)
            .env("GAMEDAY_STRIPE_KEY", DEFAULT_KEY)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start narwhal serve")?;
        n.child = Some(child);
        Ok(format!("http://127.0.0.1:{}", n.port))
    }

    /// `kill -9` node `i`: no shutdown, leases left as they were.
    pub fn kill_9(&self, i: usize) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mut c) = nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn alive(&self, i: usize) -> Result<(), String> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        match nodes[i].child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(status))) => Err(format!("the process exited ({status})")),
            None => Err("the process is not running".into()),
            _ => Ok(()),
        }
    }

    fn stop_all(&self) {
        let n = self.nodes.lock().map(|n| n.len()).unwrap_or(0);
        for i in 0..n {
            self.kill_9(i);
        }
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// The nodes' settings. On PostgreSQL the nodes share one send bucket per account,
/// so each is given the account's whole rate. SES comes first (receipts try it first);
/// the SMTP relay has half SES's rate, so a blast goes on, slower, while SES is down.
fn config_toml(ses: &str, smtp_port: u16, rate: u32, primary: &str, backup: &str) -> String {
    let smtp_rate = (rate / 2).max(1);
    format!(
        r#"[mail]
from_address = "team@campaign.example"
sender_name = "Game Day"
postal_address = "PO Box 1, Columbus OH 43215"

[[mail.accounts]]
kind = "ses"
name = "main"
region = "us-east-1"
endpoint = "{ses}"
access_key_id_env = "GAMEDAY_SES_KEY"
secret_access_key_env = "GAMEDAY_SES_SECRET"
throttle = "{rate}/s"

[[mail.accounts]]
kind = "smtp"
name = "relay"
host = "127.0.0.1"
port = {smtp_port}
throttle = "{smtp_rate}/s"

[donations]
committee = "Friends of Game Day"
settle_every_secs = 2
# A donor waits at most this long on status queries about a lost answer before the
# 202 "being confirmed" (the settler finishes it).
settle_timeout_ms = 500

# Every request comes from one loopback address with one test card: the card-testing
# limits would rightly stop the load, so they are out of reach here.
[donations.abuse]
per_ip = 1000000000
per_email = 1000000
per_card = 1000000000

[[donations.processors]]
name = "stripe-primary"
kind = "stripe"
api_base = "{primary}"
secret_key_env = "GAMEDAY_STRIPE_KEY"
max_rps = 5000
# The fakes answer in tens of ms and the slow fault adds under a second: a charge not
# answered in 1.2 s is ambiguous (settled by a status query) and counts against the
# breaker, so a 2 s p99 never waits out a vendor's default timeout.
timeout_ms = 1200

[[donations.processors]]
name = "stripe-backup"
kind = "stripe"
api_base = "{backup}"
secret_key_env = "GAMEDAY_STRIPE_KEY"
max_rps = 5000
timeout_ms = 1200
"#
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls_are_rewritten_to_the_proxy() {
        let u = "postgres://postgres@127.0.0.1:5432/test";
        assert_eq!(hostport_of(u).unwrap(), "127.0.0.1:5432");
        assert_eq!(
            with_hostport(u, "127.0.0.1:6000").unwrap(),
            "postgres://postgres@127.0.0.1:6000/test"
        );
        assert_eq!(hostport_of("postgres://db/x").unwrap(), "db:5432");
        assert!(with_schema(u, "s1").ends_with("?options=-c%20search_path%3Ds1"));
    }
}
