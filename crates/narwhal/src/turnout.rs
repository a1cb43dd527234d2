//! `narwhal turnout`: election-day setup from the command line: polling places, the
//! GOTV universe, watcher logins (PIN or link) and phones, the expected curve.

use crate::config::{open_store, Settings};
use anyhow::{bail, Context};
use narwhal_domain::{PhoneE164, SegmentId};
use narwhal_turnout::live::ExpectedCurve;
use narwhal_turnout::{LoginKind, Turnout};
use std::path::PathBuf;

#[derive(clap::Subcommand, Debug)]
pub enum TurnoutCommand {
    /// Import polling places and the precincts voting at each (CSV: code,name,address,county,precincts).
    Places { file: PathBuf },
    /// Add a saved segment's people to the GOTV universe, each at their precinct's polling place.
    Universe {
        #[arg(long)]
        segment: i64,
    },
    /// Issue (or re-issue) a poll watcher's login for a polling place; the PIN or link is printed once.
    Watcher {
        username: String,
        /// The polling place code.
        #[arg(long)]
        place: String,
        /// A 6-digit PIN instead of a login link.
        #[arg(long)]
        pin: bool,
        /// Days the login works (default: until re-issued).
        #[arg(long)]
        days: Option<u32>,
        /// The watcher's mobile phone (E.164), from which SMS reports are taken.
        #[arg(long)]
        phone: Option<String>,
        /// The public address of the watcher app, for the printed link.
        #[arg(long, default_value = "https://localhost")]
        base_url: String,
    },
    /// Set or clear (--clear) a watcher's mobile phone for SMS reports.
    Phone {
        username: String,
        phone: Option<String>,
        #[arg(long)]
        clear: bool,
    },
    /// Set the expected turnout curve: when polls open and the cumulative percent voted by each hour's end.
    Curve {
        /// Poll opening, ms since the epoch.
        #[arg(long)]
        opens_at: i64,
        /// Comma-separated cumulative percents, one per hour, e.g. 7,13,18,23.
        #[arg(long)]
        hourly: String,
    },
}

pub async fn run(settings: &Settings, cmd: TurnoutCommand) -> anyhow::Result<()> {
    let store = open_store(settings).await?;
    let t = Turnout::new(store.clone());
    match cmd {
        TurnoutCommand::Places { file } => {
            let n = t
                .import_places_file(&file)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{n} polling places imported");
        }
        TurnoutCommand::Universe { segment } => {
            let b = t
                .build_universe(SegmentId(segment))
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "{} supporters added to the GOTV universe ({} skipped: their precinct has no polling place)",
                b.added, b.unassigned
            );
        }
        TurnoutCommand::Watcher {
            username,
            place,
            pin,
            days,
            phone,
            base_url,
        } => {
            let phone = phone
                .map(|p| PhoneE164::parse(&p).map_err(|e| anyhow::anyhow!("--phone: {e}")))
                .transpose()?;
            let kind = if pin { LoginKind::Pin } else { LoginKind::Link };
            let ttl = days.map(|d| i64::from(d) * 86_400_000);
            let issued = t
                .issue_watcher(&username, &place, kind, ttl)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if let Some(p) = &phone {
                t.set_watcher_phone(issued.user, Some(p))
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            println!(
                "watcher {} for polling place {}",
                issued.username, issued.polling_place
            );
            match kind {
                LoginKind::Pin => println!("PIN (shown once): {}", issued.secret.expose()),
                LoginKind::Link => println!(
                    "login link (shown once): {}/watch/#t={}",
                    base_url.trim_end_matches('/'),
                    issued.secret.expose()
                ),
            }
        }
        TurnoutCommand::Phone {
            username,
            phone,
            clear,
        } => {
            let user = store
                .user_by_name(&username)
                .await?
                .with_context(|| format!("no user {username}"))?;
            let phone = match (phone, clear) {
                (Some(p), false) => {
                    Some(PhoneE164::parse(&p).map_err(|e| anyhow::anyhow!("phone: {e}"))?)
                }
                (None, true) => None,
                _ => bail!("give a phone number, or --clear"),
            };
            t.set_watcher_phone(user.id, phone.as_ref())
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("phone {}", if phone.is_some() { "set" } else { "cleared" });
        }
        TurnoutCommand::Curve { opens_at, hourly } => {
            let hourly_pct = hourly
                .split(',')
                .map(|v| v.trim().parse::<f64>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| anyhow::anyhow!("--hourly: comma-separated numbers"))?;
            let c = ExpectedCurve {
                opens_at,
                hourly_pct,
            };
            narwhal_turnout::live::set_curve(&store, &c)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("expected curve set ({} hours)", c.hourly_pct.len());
        }
    }
    Ok(())
}
