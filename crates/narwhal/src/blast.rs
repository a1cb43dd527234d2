//! `narwhal blast`: a blast's progress (`status ID [--watch]`) and its controls
//! (`pause`, `resume`, `cancel`), straight against the database, so they work while
//! any node (or none) is serving.

use crate::config::{open_store, Settings};
use narwhal_store::blasts::{Blast, BlastId, BlastState};
use narwhal_store::{now_ms, Store};
use std::time::Duration;

#[derive(clap::Subcommand, Debug)]
pub enum BlastCommand {
    /// Sent, failed, throttled-and-waiting, pending and ETA of a blast.
    Status {
        id: i64,
        /// Keep a progress bar up until the blast is done, paused or cancelled.
        #[arg(long)]
        watch: bool,
    },
    /// Pause a scheduled or sending blast (workers stop within one slice).
    Pause { id: i64 },
    /// Resume a paused blast.
    Resume { id: i64 },
    /// Cancel a blast that is not finished.
    Cancel { id: i64 },
}

pub async fn run(settings: &Settings, cmd: BlastCommand) -> anyhow::Result<()> {
    let store = open_store(settings).await?;
    let r = match cmd {
        BlastCommand::Status { id, watch } => status(&store, BlastId(id), watch).await,
        BlastCommand::Pause { id } => {
            store
                .pause_blast(BlastId(id), Some("paused from the CLI"))
                .await?;
            println!("blast {id} paused");
            Ok(())
        }
        BlastCommand::Resume { id } => {
            store.resume_blast(BlastId(id), 1).await?;
            println!("blast {id} resumed");
            Ok(())
        }
        BlastCommand::Cancel { id } => {
            store.cancel_blast(BlastId(id)).await?;
            println!("blast {id} cancelled");
            Ok(())
        }
    };
    store.close().await;
    r
}

/// The figures of one blast at one moment.
struct Figures {
    sent: i64,
    failed: i64,
    skipped: i64,
    waiting: i64,
    pending: i64,
    total: i64,
    eta: Option<u64>,
}

async fn figures(store: &Store, b: &Blast) -> anyhow::Result<Figures> {
    let (_, waiting) = if b.materialized {
        store.blast_unfinished(b.id).await?
    } else {
        (0, 0)
    };
    let pending = b.counts.pending();
    let done = b.counts.sent + b.counts.failed + b.counts.skipped + b.counts.ambiguous;
    // The average rate since it started, for an estimate.
    let eta = match (b.state, b.scheduled_at) {
        (BlastState::Done, _) => Some(0),
        (BlastState::Sending, Some(start)) if done > 0 => {
            let secs = ((now_ms() - start).max(1) as f64) / 1000.0;
            let rate = done as f64 / secs;
            Some((pending as f64 / rate).ceil() as u64)
        }
        _ => None,
    };
    Ok(Figures {
        sent: b.counts.sent,
        failed: b.counts.failed,
        skipped: b.counts.skipped,
        waiting,
        pending,
        total: b.counts.total,
        eta,
    })
}

fn line(f: &Figures) -> String {
    format!(
        "sent {}  failed {}  skipped {}  throttled-waiting {}  pending {}  ETA {}",
        f.sent,
        f.failed,
        f.skipped,
        f.waiting,
        f.pending,
        f.eta.map(|s| format!("{s}s")).unwrap_or_else(|| "-".into())
    )
}

async fn status(store: &Store, id: BlastId, watch: bool) -> anyhow::Result<()> {
    let b = store.blast(id).await?;
    println!("blast {} {:?}: {}", b.id, b.name, b.state.as_str());
    if let Some(r) = &b.state_reason {
        println!("reason: {r}");
    }
    let f = figures(store, &b).await?;
    if !watch {
        println!("total {}  {}", f.total, line(&f));
        return Ok(());
    }
    let bar = indicatif::ProgressBar::new(u64::try_from(f.total).unwrap_or(0));
    if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}") {
        bar.set_style(style);
    }
    let mut b = b;
    loop {
        let f = figures(store, &b).await?;
        bar.set_length(u64::try_from(f.total).unwrap_or(0));
        bar.set_position(u64::try_from(f.total - f.pending).unwrap_or(0));
        bar.set_message(line(&f));
        if matches!(
            b.state,
            BlastState::Done | BlastState::Cancelled | BlastState::Paused | BlastState::Draft
        ) {
            bar.finish();
            println!("{}: total {}  {}", b.state.as_str(), f.total, line(&f));
            if let Some(r) = &b.state_reason {
                println!("reason: {r}");
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        b = store.blast(id).await?;
    }
}
