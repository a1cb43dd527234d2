//! One typed settings struct: defaults, then an optional `narwhal.toml`, then
//! `NARWHAL_*` environment variables and flags (clap reads both). Bad values fail fast
//! and name the key.

use anyhow::{bail, Context};
use narwhal_store::{DatabaseTarget, Store};
use serde::Deserialize;
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct GlobalArgs {
    /// Configuration file (optional; default: ./narwhal.toml when it exists).
    #[arg(long, global = true, env = "NARWHAL_CONFIG")]
    pub config: Option<PathBuf>,
    /// PostgreSQL URL (postgres://...); without it, the embedded SQLite database in --data-dir.
    #[arg(long, global = true, env = "NARWHAL_DATABASE_URL")]
    pub database: Option<String>,
    /// Where the embedded database, uploads and rejects files live.
    #[arg(long, global = true, env = "NARWHAL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Log format: pretty or json.
    #[arg(long, global = true, env = "NARWHAL_LOG_FORMAT")]
    pub log_format: Option<String>,
}

/// `narwhal.toml`: every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    database: Option<String>,
    data_dir: Option<PathBuf>,
    log_format: Option<String>,
    listen: Option<String>,
    mail: Option<narwhal_mail::accounts::MailSettings>,
    http: Option<HttpSettings>,
    donations: Option<crate::donations_setup::DonationSettings>,
}

/// `[http]`: HTTPS terminated by Narwhal, and the SMS webhook's secret.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// PEM certificate chain (e.g. fullchain.pem). With `tls_key`, `serve` speaks
    /// HTTPS on `https_listen` and `listen` only redirects to it.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (e.g. privkey.pem).
    pub tls_key: Option<PathBuf>,
    /// Where HTTPS listens (default 0.0.0.0:443).
    pub https_listen: Option<String>,
    /// The port redirects send browsers to (default: the port HTTPS listens on; set it
    /// when a port mapping puts HTTPS on another public port).
    pub https_port: Option<u16>,
    /// The environment variable holding the SMS provider's auth token, which signs the
    /// inbound SMS webhook (default NARWHAL_TWILIO_AUTH_TOKEN).
    pub sms_auth_token_env: Option<String>,
    /// How long a node trusts an API token it found live before reading it again, in
    /// milliseconds (default 2000): a revoked token stops working on every node within
    /// this time. 0 reads the token at every request.
    pub api_token_cache_ms: Option<u64>,
}

impl HttpSettings {
    /// Whether HTTPS is on.
    pub fn tls(&self) -> Option<(&std::path::Path, &std::path::Path)> {
        Some((self.tls_cert.as_deref()?, self.tls_key.as_deref()?))
    }

    /// How long a live API token is trusted before it is read again.
    pub fn token_cache_ttl(&self) -> std::time::Duration {
        self.api_token_cache_ms
            .map(std::time::Duration::from_millis)
            .unwrap_or(narwhal_http::HttpConfig::default().token_cache_ttl)
    }

    /// The name of the variable holding the SMS auth token.
    pub fn sms_token_var(&self) -> &str {
        self.sms_auth_token_env
            .as_deref()
            .unwrap_or("NARWHAL_TWILIO_AUTH_TOKEN")
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub database: DatabaseTarget,
    pub data_dir: PathBuf,
    pub log_format: String,
    /// Default listen address for `serve` (flags override).
    pub listen: String,
    /// `[mail]`: sender, unsubscribe links, sending accounts (checked at load).
    pub mail: narwhal_mail::accounts::MailSettings,
    /// `[http]`: TLS certificate and key, the HTTPS listener, the SMS webhook secret.
    pub http: HttpSettings,
    /// `[donations]`: processors, limits, abuse limits, the page (built by `serve`).
    pub donations: crate::donations_setup::DonationSettings,
}

impl Settings {
    pub fn load(args: &GlobalArgs) -> anyhow::Result<Self> {
        let path = args.config.clone().or_else(|| {
            let p = PathBuf::from("narwhal.toml");
            p.exists().then_some(p)
        });
        let file: FileSettings = match &path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("{}: cannot read", p.display()))?;
                toml::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {}", p.display(), e.message()))?
            }
            None => FileSettings::default(),
        };
        let data_dir = args
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("narwhal-data"));
        let database = match args.database.clone().or(file.database) {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                DatabaseTarget::Postgres(url)
            }
            Some(url) if url.starts_with("sqlite://") => DatabaseTarget::parse(&url),
            Some(_) => bail!("database: expected a postgres:// or sqlite:// URL"),
            None => DatabaseTarget::SqliteDir(data_dir.clone()),
        };
        let log_format = args
            .log_format
            .clone()
            .or(file.log_format)
            .unwrap_or_else(|| "pretty".into());
        if !matches!(log_format.as_str(), "pretty" | "json") {
            bail!("log_format: expected pretty or json, got {log_format:?}");
        }
        let listen = file.listen.unwrap_or_else(|| "127.0.0.1:8080".into());
        let mut mail = file.mail.unwrap_or_default();
        for (var, field) in [
            ("NARWHAL_MAIL_FROM_ADDRESS", &mut mail.from_address),
            ("NARWHAL_MAIL_SENDER_NAME", &mut mail.sender_name),
            ("NARWHAL_MAIL_POSTAL_ADDRESS", &mut mail.postal_address),
            ("NARWHAL_MAIL_UNSUBSCRIBE_URL", &mut mail.unsubscribe_url),
            (
                "NARWHAL_MAIL_UNSUBSCRIBE_MAILTO",
                &mut mail.unsubscribe_mailto,
            ),
            (
                "NARWHAL_MAIL_UNSUBSCRIBE_SECRET_ENV",
                &mut mail.unsubscribe_secret_env,
            ),
        ] {
            if let Ok(v) = std::env::var(var) {
                *field = Some(v);
            }
        }
        // Fail fast, naming the key: build once with a throwaway signing key.
        mail.build(&data_dir, "http://127.0.0.1/u/", &[0u8; 32], &env_var)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut http = file.http.unwrap_or_default();
        for (var, field) in [
            ("NARWHAL_TLS_CERT", &mut http.tls_cert),
            ("NARWHAL_TLS_KEY", &mut http.tls_key),
        ] {
            if let Ok(v) = std::env::var(var) {
                *field = Some(PathBuf::from(v));
            }
        }
        if let Ok(v) = std::env::var("NARWHAL_HTTPS_LISTEN") {
            http.https_listen = Some(v);
        }
        if let Ok(v) = std::env::var("NARWHAL_HTTPS_PORT") {
            http.https_port = Some(
                v.parse()
                    .map_err(|_| anyhow::anyhow!("NARWHAL_HTTPS_PORT: expected a port number"))?,
            );
        }
        if http.tls_cert.is_some() != http.tls_key.is_some() {
            bail!("http.tls_cert and http.tls_key: give both (PEM certificate chain and private key) or neither");
        }
        Ok(Self {
            database,
            data_dir,
            log_format,
            listen,
            mail,
            http,
            donations: file.donations.unwrap_or_default(),
        })
    }

    /// The effective configuration with secrets hidden.
    pub fn describe(&self) -> String {
        format!(
            "database = {:?}\ndata_dir = {:?}\nlog_format = {:?}\nlisten = {:?}\n{}",
            self.database.redacted(),
            self.data_dir.display().to_string(),
            self.log_format,
            self.listen,
            self.mail.describe(&env_var)
        ) + &format!(
            "[http]\ntls_cert = {:?}\ntls_key = {:?}\nhttps_listen = {:?}\nhttps_port = {:?}\nsms_auth_token_env = {:?} ({})\napi_token_cache_ms = {}\n",
            self.http.tls_cert.as_ref().map(|p| p.display().to_string()),
            self.http.tls_key.as_ref().map(|p| p.display().to_string()),
            self.http.https_listen,
            self.http.https_port,
            self.http.sms_token_var(),
            if env_var(self.http.sms_token_var()).is_some() { "set, hidden" } else { "not set" },
            self.http.token_cache_ttl().as_millis(),
        )
    }

    /// The unsubscribe signing key used when `mail.unsubscribe_secret_env` is unset:
    /// 32 random bytes kept in `DATA_DIR/unsubscribe.key` (created on first use). Nodes
    /// sharing PostgreSQL must set `unsubscribe_secret_env` instead, so that any node
    /// verifies any node's links.
    pub fn fallback_unsubscribe_key(&self) -> anyhow::Result<Vec<u8>> {
        let path = self.data_dir.join("unsubscribe.key");
        match std::fs::read(&path) {
            Ok(k) if k.len() >= 32 => return Ok(k),
            Ok(_) => bail!("{}: the key is shorter than 32 bytes", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
        }
        use rand::RngCore;
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let key: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::create_dir_all(&self.data_dir)
            .with_context(|| format!("cannot create {}", self.data_dir.display()))?;
        // Written under a private name, then linked into place: when several nodes
        // start at once on one data directory, the first link wins and the others
        // read its key.
        let tmp = self
            .data_dir
            .join(format!(".unsubscribe.key.{}.tmp", std::process::id()));
        std::fs::write(&tmp, key.as_bytes())
            .with_context(|| format!("{}: cannot write", tmp.display()))?;
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return std::fs::read(&path)
                    .with_context(|| format!("{}: cannot read", path.display()));
            }
            Err(e) => return Err(e).with_context(|| format!("{}: cannot write", path.display())),
        }
        Ok(key.into_bytes())
    }
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Logs to stderr; `NARWHAL_LOG` (an `EnvFilter`) overrides `default`.
pub fn init_logging(s: &Settings, default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("NARWHAL_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if s.log_format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

/// Opens and migrates the configured database.
pub async fn open_store(s: &Settings) -> anyhow::Result<Store> {
    let store = Store::open(&s.database)
        .await
        .with_context(|| format!("cannot open {}", s.database.redacted()))?;
    store.migrate().await.context("migrating the database")?;
    Ok(store)
}
