//! `narwhal donations`: work on donations from the command line, straight against the
//! database and the processors in `[donations]`, so it runs whether or not a node is
//! serving.
//!
//! `narwhal donations reconcile [--since T] [--json]` compares every processor's
//! payments with our donations ([`narwhal_pay::reconcile`]), prints a summary table
//! (and each payment that is not a match), stores the run for the console, and exits
//! 1 when anything is not a match or a processor could not be listed.

use crate::config::{open_store, Settings};
use narwhal_pay::processor::Processor;
use narwhal_pay::reconcile::{reconcile, Report, CLASSES};
use std::sync::Arc;

#[derive(clap::Subcommand, Debug)]
pub enum DonationsCommand {
    /// Compare each processor's payments with our ledger: match, mismatch, missing,
    /// duplicate. Stores the run (the console shows the latest).
    Reconcile {
        /// Payments created since: Unix seconds, `YYYY-MM-DD` (UTC), or a duration
        /// ago such as `24h`, `7d`. Default: 7 days ago.
        #[arg(long, default_value = "7d")]
        since: String,
        /// Print the whole report as JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
}

/// Unix seconds from `--since`.
pub fn parse_since(s: &str, now_secs: i64) -> anyhow::Result<i64> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i64>() {
        return Ok(n);
    }
    if let Some((num, unit)) = s
        .strip_suffix(['h', 'd', 'm'])
        .map(|n| (n, s.as_bytes()[s.len() - 1]))
    {
        let n: i64 = num
            .parse()
            .map_err(|_| anyhow::anyhow!("--since: {s:?} is not a number of h, d or m"))?;
        let unit = match unit {
            b'm' => 60,
            b'h' => 3_600,
            _ => 86_400,
        };
        return Ok(now_secs - n * unit);
    }
    let bad = || {
        anyhow::anyhow!("--since: expected Unix seconds, YYYY-MM-DD or a duration like 24h or 7d")
    };
    let parts: Vec<i64> = s
        .split('-')
        .map(|p| p.parse::<i64>().map_err(|_| bad()))
        .collect::<anyhow::Result<_>>()?;
    let [y, m, d] = parts[..] else {
        return Err(bad());
    };
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return Err(bad());
    }
    let (m, d) = (
        u32::try_from(m).map_err(|_| bad())?,
        u32::try_from(d).map_err(|_| bad())?,
    );
    Ok(narwhal_domain::civil::days_from_civil(y, m, d) * 86_400)
}

pub async fn run(settings: &Settings, cmd: DonationsCommand) -> anyhow::Result<()> {
    match cmd {
        DonationsCommand::Reconcile { since, json } => {
            let since = parse_since(&since, narwhal_store::now_ms() / 1000)?;
            if !settings.donations.enabled() {
                anyhow::bail!("no [[donations.processors]] configured: nothing to reconcile");
            }
            let store = open_store(settings).await?;
            let env = |k: &str| std::env::var(k).ok();
            let edge = settings.donations.build(&store, &env)?;
            let router = &edge.service.router;
            let processors: Vec<Arc<dyn Processor>> = (0..router.len())
                .map(|i| router.processor(i).clone())
                .collect();
            let report = reconcile(&store, &processors, since).await;
            store.close().await;
            let report = report?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", table(&report));
            }
            let clean = report.run.mismatched + report.run.missing + report.run.duplicate == 0
                && report.run.errors.is_empty();
            if !clean {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

/// The summary table and the payments that need a look.
pub fn table(report: &Report) -> String {
    let r = &report.run;
    let mut out = format!(
        "reconciliation #{} of {} since {} (Unix s)\n\n{:<10} {:>8}\n",
        r.id,
        r.processors.join(", "),
        r.since_ms / 1000,
        "class",
        "payments"
    );
    for (class, n) in CLASSES
        .iter()
        .zip([r.matched, r.mismatched, r.missing, r.duplicate])
    {
        out.push_str(&format!("{class:<10} {n:>8}\n"));
    }
    for e in &r.errors {
        out.push_str(&format!("\nerror: could not list {e}\n"));
    }
    let odd: Vec<_> = report.items.iter().filter(|i| i.class != "match").collect();
    if !odd.is_empty() {
        out.push_str(&format!(
            "\n{:<10} {:<16} {:<28} {:<30} {:>10} {:>10}  detail\n",
            "class", "processor", "payment", "donation", "ours", "theirs"
        ));
        let cents =
            |c: Option<i64>| c.map_or("-".to_string(), |c| format!("{}.{:02}", c / 100, c % 100));
        for i in odd {
            out.push_str(&format!(
                "{:<10} {:<16} {:<28} {:<30} {:>10} {:>10}  {}\n",
                i.class,
                i.processor,
                i.processor_ref.as_deref().unwrap_or("-"),
                i.donation.as_deref().unwrap_or("-"),
                cents(i.our_cents),
                cents(i.their_cents),
                i.detail
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_seconds_dates_and_durations() {
        assert_eq!(parse_since("1700000000", 0).ok(), Some(1_700_000_000));
        assert_eq!(parse_since("2d", 1_000_000).ok(), Some(1_000_000 - 172_800));
        assert_eq!(parse_since("24h", 100_000).ok(), Some(100_000 - 86_400));
        assert_eq!(parse_since("2026-01-01", 0).ok(), Some(1_767_225_600));
        assert!(parse_since("yesterday", 0).is_err());
    }
}
