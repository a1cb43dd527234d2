//! Mail settings (`[mail]` and `[[mail.accounts]]` in `narwhal.toml`) and turning them
//! into the blast worker's [`Account`]s and [`Compose`].
//!
//! Secrets are never in the file: an account names the environment variables that hold
//! them (`secret_access_key_env = "NARWHAL_SES_MAIN_SECRET"`), and only those names are
//! ever printed. Every mistake fails at startup with the key that is wrong
//! (`mail.accounts[1].throttle: ...`).
//!
//! ```toml
//! [mail]
//! from_address = "team@campaign.example"
//! sender_name = "Friends of Ada"
//! postal_address = "PO Box 1, Columbus OH 43215"
//! unsubscribe_url = "https://act.campaign.example/u/"
//! unsubscribe_secret_env = "NARWHAL_UNSUBSCRIBE_SECRET"
//!
//! [[mail.accounts]]
//! kind = "ses"            # ses | smtp | outbox
//! name = "ses-main"
//! region = "us-east-1"
//! access_key_id_env = "NARWHAL_SES_MAIN_KEY"
//! secret_access_key_env = "NARWHAL_SES_MAIN_SECRET"
//! weight = 2
//! throttle = "14/s,daily=50000"   # optional for SES: read from the account
//!
//! [[mail.accounts]]
//! kind = "smtp"
//! name = "relay"
//! host = "smtp.campaign.example"
//! port = 587
//! tls = "starttls"        # none | starttls | implicit; see below for the default
//! username = "bulk"
//! password_env = "NARWHAL_RELAY_PASSWORD"
//! throttle = "10/s"
//! dkim_selector = "nw1"   # sign every message (RFC 6376)
//! dkim_key_file = "/etc/narwhal/dkim-nw1.pem"
//! # dkim_domain = "campaign.example"   # default: the domain of each message's From
//! # ca_file = "/etc/narwhal/relay-ca.pem"   # a private CA, besides the public roots
//! ```
//!
//! SMTP `tls` defaults to `implicit` on port 465, `none` for a relay on loopback, and
//! `starttls` everywhere else; `starttls` never falls back to the clear. AUTH without
//! TLS is refused unless the relay is on loopback. SES accounts are signed by SES
//! itself (Easy DKIM, set up on the SES identity), so `dkim_*` is refused there;
//! `ca_file` works for both kinds.

use crate::blast::{Account, Compose};
use crate::dkim::{DkimKey, DkimSigner};
use crate::ses::{SesClient, SesConfig};
use crate::sigv4::Credentials;
use crate::smtp::{SmtpConfig, SmtpProvider, TlsMode};
use crate::{Provider, Secret, ThrottleSpec};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `[mail]`: every key optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailSettings {
    /// The default sender address of a blast.
    pub from_address: Option<String>,
    /// The sender's name in every footer.
    pub sender_name: Option<String>,
    /// The sender's postal address in every footer (required by law in bulk mail).
    pub postal_address: Option<String>,
    /// The public prefix of unsubscribe links; the token is appended
    /// (`https://act.example.org/u/`). Default: this node's listen address.
    pub unsubscribe_url: Option<String>,
    /// A mailto address for `List-Unsubscribe`.
    pub unsubscribe_mailto: Option<String>,
    /// The name of the environment variable holding the unsubscribe signing secret
    /// (at least 32 characters). Default: a key kept in the data directory.
    pub unsubscribe_secret_env: Option<String>,
    /// The sending accounts.
    #[serde(default)]
    pub accounts: Vec<AccountSettings>,
}

/// One `[[mail.accounts]]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountSettings {
    /// `ses`, `smtp` or `outbox`.
    pub kind: String,
    /// Unique; names the account in the ledger and logs.
    pub name: String,
    /// Share of traffic (default 1).
    pub weight: Option<u32>,
    /// `"14/s,daily=50000"`; SES reads it from the account when absent.
    pub throttle: Option<String>,
    /// SES: the region.
    pub region: Option<String>,
    /// SES: an endpoint other than `https://email.REGION.amazonaws.com`.
    pub endpoint: Option<String>,
    /// SES: the variable holding the access key id.
    pub access_key_id_env: Option<String>,
    /// SES: the variable holding the secret access key.
    pub secret_access_key_env: Option<String>,
    /// SMTP: the relay host.
    pub host: Option<String>,
    /// SMTP: the relay port (default 25).
    pub port: Option<u16>,
    /// SMTP: AUTH user name.
    pub username: Option<String>,
    /// SMTP: the variable holding the AUTH password.
    pub password_env: Option<String>,
    /// SMTP: connections kept open.
    pub pool_size: Option<usize>,
    /// SMTP: messages per connection.
    pub max_per_connection: Option<u32>,
    /// Outbox: the directory (default `DATA_DIR/outbox/NAME`).
    pub dir: Option<PathBuf>,
    /// SMTP: `none`, `starttls` or `implicit` (default: `implicit` on port 465, `none`
    /// on loopback, `starttls` otherwise).
    pub tls: Option<String>,
    /// SMTP and SES: a PEM file of extra trusted CA certificates.
    pub ca_file: Option<PathBuf>,
    /// SMTP: the DKIM selector (`s=`); signing is on when set.
    pub dkim_selector: Option<String>,
    /// SMTP: the DKIM private key, PEM (PKCS#8 RSA or Ed25519, PKCS#1 RSA).
    pub dkim_key_file: Option<PathBuf>,
    /// SMTP: `d=` (default: the domain of each message's From).
    pub dkim_domain: Option<String>,
}

impl AccountSettings {
    /// The SMTP TLS mode, with its default.
    fn smtp_tls(&self, host: &str, port: u16) -> Result<TlsMode, String> {
        match self.tls.as_deref() {
            Some("none") => Ok(TlsMode::None),
            Some("starttls") => Ok(TlsMode::StartTls),
            Some("implicit") => Ok(TlsMode::Implicit),
            Some(other) => Err(format!(
                "{other:?}: expected \"none\", \"starttls\" or \"implicit\""
            )),
            None if port == 465 => Ok(TlsMode::Implicit),
            None if crate::tls::is_loopback(host) => Ok(TlsMode::None),
            None => Ok(TlsMode::StartTls),
        }
    }

    /// The DKIM signer when `dkim_selector` is set.
    fn dkim_signer(
        &self,
        k: &dyn Fn(&str) -> String,
    ) -> Result<Option<DkimSigner>, MailConfigError> {
        let Some(selector) = &self.dkim_selector else {
            if self.dkim_key_file.is_some() || self.dkim_domain.is_some() {
                return Err(err(
                    k("dkim_selector"),
                    "required with dkim_key_file / dkim_domain",
                ));
            }
            return Ok(None);
        };
        let path = self
            .dkim_key_file
            .as_ref()
            .ok_or_else(|| err(k("dkim_key_file"), "required with dkim_selector"))?;
        let key =
            DkimKey::from_pem_file(path).map_err(|e| err(k("dkim_key_file"), e.to_string()))?;
        let field = if self.dkim_domain.is_some() {
            "dkim_domain"
        } else {
            "dkim_selector"
        };
        DkimSigner::new(key, selector, self.dkim_domain.as_deref())
            .map(Some)
            .map_err(|e| err(k(field), e.to_string()))
    }
}

/// A bad setting, naming its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct MailConfigError {
    /// `mail.accounts[0].throttle`.
    pub key: String,
    /// What is wrong (never a secret's value).
    pub message: String,
}

fn err(key: impl Into<String>, message: impl Into<String>) -> MailConfigError {
    MailConfigError {
        key: key.into(),
        message: message.into(),
    }
}

/// What the settings come to.
pub struct MailSetup {
    /// The accounts, in the configured order.
    pub accounts: Vec<Account>,
    /// Footer, unsubscribe links and signer.
    pub compose: Compose,
    /// The default sender address.
    pub from_address: Option<narwhal_domain::Email>,
}

/// Looks up an environment variable (a parameter, so tests need not touch the
/// process environment).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

impl MailSettings {
    /// The settings for `narwhal admin config`: secrets appear only as the names of
    /// their variables, with whether they are set.
    pub fn describe(&self, env: EnvLookup<'_>) -> String {
        let q = |v: &Option<String>| match v {
            Some(s) => format!("{s:?}"),
            None => "(unset)".into(),
        };
        let secret = |v: &Option<String>| match v {
            Some(name) => format!(
                "{name:?} ({})",
                if env(name).is_some() {
                    "set, value hidden"
                } else {
                    "NOT SET"
                }
            ),
            None => "(unset)".into(),
        };
        let path = |v: &Option<PathBuf>| match v {
            Some(p) => format!("{:?}", p.display().to_string()),
            None => "(unset)".into(),
        };
        let mut s = String::from("[mail]\n");
        s += &format!("from_address = {}\n", q(&self.from_address));
        s += &format!("sender_name = {}\n", q(&self.sender_name));
        s += &format!("postal_address = {}\n", q(&self.postal_address));
        s += &format!("unsubscribe_url = {}\n", q(&self.unsubscribe_url));
        s += &format!("unsubscribe_mailto = {}\n", q(&self.unsubscribe_mailto));
        s += &format!(
            "unsubscribe_secret_env = {}\n",
            secret(&self.unsubscribe_secret_env)
        );
        for a in &self.accounts {
            s += "[[mail.accounts]]\n";
            s += &format!("kind = {:?}\nname = {:?}\n", a.kind, a.name);
            s += &format!("weight = {}\n", a.weight.unwrap_or(1));
            s += &format!("throttle = {}\n", q(&a.throttle));
            match a.kind.as_str() {
                "ses" => {
                    s += &format!("region = {}\nendpoint = {}\n", q(&a.region), q(&a.endpoint));
                    s += &format!("ca_file = {}\n", path(&a.ca_file));
                    s += &format!("access_key_id_env = {}\n", secret(&a.access_key_id_env));
                    s += &format!(
                        "secret_access_key_env = {}\n",
                        secret(&a.secret_access_key_env)
                    );
                }
                "smtp" => {
                    s += &format!(
                        "host = {}\nport = {}\nusername = {}\n",
                        q(&a.host),
                        a.port.unwrap_or(25),
                        q(&a.username)
                    );
                    s += &format!("password_env = {}\n", secret(&a.password_env));
                    s += &format!("tls = {}\nca_file = {}\n", q(&a.tls), path(&a.ca_file));
                    s += &format!(
                        "dkim_selector = {}\ndkim_key_file = {}\ndkim_domain = {}\n",
                        q(&a.dkim_selector),
                        path(&a.dkim_key_file),
                        q(&a.dkim_domain)
                    );
                }
                _ => {
                    s += &format!(
                        "dir = {}\n",
                        a.dir
                            .as_ref()
                            .map(|d| format!("{:?}", d.display().to_string()))
                            .unwrap_or_else(|| "(data dir)/outbox/NAME".into())
                    );
                }
            }
        }
        s
    }

    /// Checks the settings and builds the accounts (without asking providers
    /// anything). `default_unsubscribe_url` is used when `unsubscribe_url` is unset;
    /// `fallback_secret` when `unsubscribe_secret_env` is unset.
    pub fn build(
        &self,
        data_dir: &Path,
        default_unsubscribe_url: &str,
        fallback_secret: &[u8],
        env: EnvLookup<'_>,
    ) -> Result<MailSetup, MailConfigError> {
        let from_address = match &self.from_address {
            Some(a) => Some(
                narwhal_domain::Email::parse(a)
                    .map_err(|_| err("mail.from_address", "not a valid email address"))?,
            ),
            None => None,
        };
        let secret: Vec<u8> = match &self.unsubscribe_secret_env {
            Some(name) => {
                let v = env(name).ok_or_else(|| {
                    err(
                        "mail.unsubscribe_secret_env",
                        format!("the environment variable {name} is not set"),
                    )
                })?;
                if v.len() < 32 {
                    return Err(err(
                        "mail.unsubscribe_secret_env",
                        format!("the secret in {name} must be at least 32 characters"),
                    ));
                }
                v.into_bytes()
            }
            None => fallback_secret.to_vec(),
        };
        let signer = crate::unsubscribe::UnsubscribeSigner::new(&secret)
            .map_err(|e| err("mail.unsubscribe_secret_env", e.to_string()))?;
        let unsubscribe_url = self
            .unsubscribe_url
            .clone()
            .unwrap_or_else(|| default_unsubscribe_url.to_string());
        if !(unsubscribe_url.starts_with("http://") || unsubscribe_url.starts_with("https://")) {
            return Err(err("mail.unsubscribe_url", "expected an http(s):// URL"));
        }
        if !self.accounts.is_empty() {
            if self
                .postal_address
                .as_deref()
                .unwrap_or("")
                .trim()
                .is_empty()
            {
                return Err(err(
                    "mail.postal_address",
                    "required when accounts are configured: every bulk message carries it",
                ));
            }
            if self.sender_name.as_deref().unwrap_or("").trim().is_empty() {
                return Err(err(
                    "mail.sender_name",
                    "required when accounts are configured",
                ));
            }
        }
        let compose = Compose {
            sender: crate::template::Sender {
                name: self.sender_name.clone().unwrap_or_default(),
                postal_address: self.postal_address.clone().unwrap_or_default(),
            },
            unsubscribe_url,
            unsubscribe_mailto: self.unsubscribe_mailto.clone(),
            signer,
        };
        let mut names = std::collections::HashSet::new();
        let mut accounts = Vec::with_capacity(self.accounts.len());
        for (i, a) in self.accounts.iter().enumerate() {
            let k = |f: &str| format!("mail.accounts[{i}].{f}");
            if a.name.trim().is_empty() {
                return Err(err(k("name"), "must not be empty"));
            }
            if !names.insert(a.name.clone()) {
                return Err(err(k("name"), format!("{:?} is used twice", a.name)));
            }
            let weight = a.weight.unwrap_or(1);
            if weight == 0 {
                return Err(err(k("weight"), "must be at least 1"));
            }
            let spec = match &a.throttle {
                Some(t) => {
                    Some(ThrottleSpec::parse(t).map_err(|e| err(k("throttle"), e.to_string()))?)
                }
                None => None,
            };
            let need = |v: &Option<String>, f: &str| -> Result<String, MailConfigError> {
                v.clone()
                    .filter(|s| !s.trim().is_empty())
                    .ok_or_else(|| err(k(f), format!("required for kind = {:?}", a.kind)))
            };
            let from_env = |v: &Option<String>, f: &str| -> Result<String, MailConfigError> {
                let name = need(v, f)?;
                env(&name)
                    .ok_or_else(|| err(k(f), format!("the environment variable {name} is not set")))
            };
            let (provider, spec): (Arc<dyn Provider>, ThrottleSpec) = match a.kind.as_str() {
                "ses" => {
                    let region = need(&a.region, "region")?;
                    let key = from_env(&a.access_key_id_env, "access_key_id_env")?;
                    let secret = from_env(&a.secret_access_key_env, "secret_access_key_env")?;
                    let mut c = SesConfig::new(
                        a.name.clone(),
                        region,
                        Credentials::new(key, Secret::new(secret)),
                    );
                    c.endpoint = a.endpoint.clone();
                    c.ca_file = a.ca_file.clone();
                    if a.dkim_selector.is_some() || a.dkim_key_file.is_some() {
                        return Err(err(
                            k("dkim_selector"),
                            "SES signs with Easy DKIM (set up on the SES identity); dkim_* is for smtp accounts",
                        ));
                    }
                    let client = SesClient::new(c).map_err(|e| {
                        let field = match e {
                            crate::ses::SesConfigError::Tls(_) => "ca_file",
                            _ => "endpoint",
                        };
                        err(k(field), e.to_string())
                    })?;
                    // The SES sandbox's limits until the account says otherwise.
                    let spec = match spec {
                        Some(s) => s,
                        None => ThrottleSpec::parse(SES_SANDBOX)
                            .map_err(|e| err(k("throttle"), e.to_string()))?,
                    };
                    (Arc::new(client), spec)
                }
                "smtp" => {
                    let host = need(&a.host, "host")?;
                    let port = a.port.unwrap_or(25);
                    let mut c = SmtpConfig::new(&a.name, &host, port);
                    c.tls = a.smtp_tls(&host, port).map_err(|m| err(k("tls"), m))?;
                    c.ca_file = a.ca_file.clone();
                    c.dkim = a.dkim_signer(&k)?.map(Arc::new);
                    if let Some(user) = &a.username {
                        let pw = from_env(&a.password_env, "password_env")?;
                        c.credentials = Some((user.clone(), Secret::new(pw)));
                    }
                    if let Some(n) = a.pool_size {
                        c.pool_size = n.max(1);
                    }
                    if let Some(n) = a.max_per_connection {
                        c.max_per_connection = n.max(1);
                    }
                    let p = SmtpProvider::new(c).map_err(|e| {
                        let field = match e {
                            crate::smtp::SmtpConfigError::Tls(_) => "ca_file",
                            crate::smtp::SmtpConfigError::ServerName(_) => "host",
                            crate::smtp::SmtpConfigError::AuthInClear { .. } => "tls",
                        };
                        err(k(field), e.to_string())
                    })?;
                    let spec = spec.ok_or_else(|| {
                        err(k("throttle"), "required for SMTP accounts (e.g. \"10/s\")")
                    })?;
                    (Arc::new(p), spec)
                }
                "outbox" => {
                    let dir = a
                        .dir
                        .clone()
                        .unwrap_or_else(|| data_dir.join("outbox").join(&a.name));
                    let spec = match spec {
                        Some(s) => s,
                        None => ThrottleSpec::parse("1000/s")
                            .map_err(|e| err(k("throttle"), e.to_string()))?,
                    };
                    (
                        Arc::new(crate::outbox::OutboxProvider::new(a.name.clone(), dir)),
                        spec,
                    )
                }
                other => {
                    return Err(err(
                        k("kind"),
                        format!("{other:?}: expected \"ses\", \"smtp\" or \"outbox\""),
                    ))
                }
            };
            accounts.push(Account {
                provider,
                weight,
                spec,
            });
        }
        Ok(MailSetup {
            accounts,
            compose,
            from_address,
        })
    }
}

/// One message per second and 200 a day: a new SES account's sandbox.
const SES_SANDBOX: &str = "1/s,daily=200";

/// For accounts configured without a throttle, asks the provider for its limits
/// (SES `GetAccount`) and uses them; keeps the configured ones otherwise. Failures are
/// logged and leave the conservative default.
pub async fn read_reported_limits(settings: &MailSettings, accounts: &mut [Account]) {
    for (a, s) in accounts.iter_mut().zip(settings.accounts.iter()) {
        if s.throttle.is_some() {
            continue;
        }
        match a.provider.quota().await {
            Ok(Some(q)) => {
                if let Some(spec) = ThrottleSpec::from_reported(q.max_send_rate, q.max_24_hour_send)
                {
                    tracing::info!(provider = %s.name, rate = q.max_send_rate, daily = q.max_24_hour_send, "account limits read from the provider");
                    a.spec = spec;
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(provider = %s.name, error = %e, "could not read the account's limits; using the sandbox's")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> MailSettings {
        #[derive(Deserialize)]
        struct F {
            mail: MailSettings,
        }
        toml::from_str::<F>(toml_text).unwrap().mail
    }

    const SECRET: &[u8] = b"fallback-secret-fallback-secret-";

    fn env(name: &str) -> Option<String> {
        match name {
            "K" => Some("AKIDEXAMPLE".into()),
            "S" => Some("very-secret-value".into()),
            _ => None,
        }
    }

    #[test]
    fn builds_accounts_and_names_bad_keys() {
        let ok = parse(
            r#"[mail]
            sender_name = "Friends"
            postal_address = "PO Box 1"
            [[mail.accounts]]
            kind = "ses"
            name = "ses-main"
            region = "us-east-1"
            endpoint = "http://127.0.0.1:9"
            access_key_id_env = "K"
            secret_access_key_env = "S"
            throttle = "14/s,daily=50000"
            weight = 2
            [[mail.accounts]]
            kind = "outbox"
            name = "dry"
            "#,
        );
        let s = ok
            .build(Path::new("/tmp/d"), "http://h/u/", SECRET, &env)
            .unwrap();
        assert_eq!(s.accounts.len(), 2);
        assert_eq!(s.accounts[0].weight, 2);
        assert_eq!(s.accounts[0].spec.daily(), Some(50_000));
        assert_eq!(s.accounts[1].provider.name(), "dry");
        let shown = ok.describe(&env);
        assert!(!shown.contains("very-secret-value") && !shown.contains("AKIDEXAMPLE"));
        assert!(shown.contains("\"S\" (set, value hidden)"), "{shown}");

        let bad = |text: &str, key: &str| {
            let e = parse(text)
                .build(Path::new("/tmp/d"), "http://h/u/", SECRET, &env)
                .err()
                .unwrap();
            assert_eq!(e.key, key, "{e}");
        };
        let head = "[mail]\nsender_name = \"F\"\npostal_address = \"P\"\n";
        bad(
            &format!(
                "{head}[[mail.accounts]]\nkind = \"outbox\"\nname = \"a\"\nthrottle = \"fast\""
            ),
            "mail.accounts[0].throttle",
        );
        bad(
            &format!("{head}[[mail.accounts]]\nkind = \"pigeon\"\nname = \"a\""),
            "mail.accounts[0].kind",
        );
        bad(
            &format!("{head}[[mail.accounts]]\nkind = \"ses\"\nname = \"a\"\nregion = \"r\"\naccess_key_id_env = \"K\"\nsecret_access_key_env = \"MISSING\""),
            "mail.accounts[0].secret_access_key_env",
        );
        bad(
            "[mail]\n[[mail.accounts]]\nkind = \"outbox\"\nname = \"a\"",
            "mail.postal_address",
        );
        bad(
            "[mail]\nunsubscribe_secret_env = \"S\"",
            "mail.unsubscribe_secret_env",
        );
        bad("[mail]\nfrom_address = \"nope\"", "mail.from_address");
    }

    #[test]
    fn smtp_tls_defaults_never_go_clear_to_a_remote_host() {
        let a = |tls: Option<&str>| AccountSettings {
            tls: tls.map(str::to_string),
            ..Default::default()
        };
        assert_eq!(
            a(None).smtp_tls("smtp.example.org", 587),
            Ok(TlsMode::StartTls)
        );
        assert_eq!(
            a(None).smtp_tls("smtp.example.org", 25),
            Ok(TlsMode::StartTls)
        );
        assert_eq!(
            a(None).smtp_tls("smtp.example.org", 465),
            Ok(TlsMode::Implicit)
        );
        assert_eq!(a(None).smtp_tls("127.0.0.1", 2525), Ok(TlsMode::None));
        assert_eq!(
            a(Some("none")).smtp_tls("smtp.example.org", 25),
            Ok(TlsMode::None)
        );
        assert_eq!(
            a(Some("implicit")).smtp_tls("127.0.0.1", 25),
            Ok(TlsMode::Implicit)
        );
        assert!(a(Some("STARTTLS")).smtp_tls("h", 25).is_err());
    }

    #[test]
    fn the_sandbox_default_parses() {
        assert_eq!(ThrottleSpec::parse(SES_SANDBOX).unwrap().daily(), Some(200));
    }
}
