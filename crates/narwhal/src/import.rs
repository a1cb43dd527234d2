//! `narwhal import people FILE --mapping MAPPING.toml`.

use crate::config::{open_store, Settings};
use anyhow::bail;
use indicatif::{ProgressBar, ProgressStyle};
use narwhal_people::import::{self, ImportOptions};
use narwhal_people::mapping::Mapping;
use narwhal_people::Hub;
use std::path::PathBuf;

#[derive(clap::Subcommand, Debug)]
pub enum ImportCommand {
    /// Import people from a CSV or TSV file of any size. Re-running the same file changes nothing.
    People {
        /// The CSV or TSV file.
        file: PathBuf,
        /// The mapping of columns to fields, custom fields and tags (TOML; see docs/imports.md).
        #[arg(long)]
        mapping: PathBuf,
        /// Where rejected rows go (default: FILE.rejects.csv).
        #[arg(long)]
        rejects: Option<PathBuf>,
        /// Rows per transaction.
        #[arg(long, default_value_t = 5000)]
        batch: usize,
    },
    /// Import a state's early-vote or absentee file: the supporters it names leave every
    /// turf and call list. Re-importing counts no one twice; unreadable rows go to
    /// FILE.rejects.csv with line and reason.
    EarlyVote {
        /// The CSV file.
        file: PathBuf,
        /// The mapping: [source] name, [columns] voter_id and (optional) voted_on.
        #[arg(long)]
        mapping: PathBuf,
    },
}

async fn early_vote(settings: &Settings, file: PathBuf, mapping: PathBuf) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&mapping)
        .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", mapping.display()))?;
    let m = narwhal_turnout::early::EarlyVoteMapping::parse(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", mapping.display()))?;
    let store = open_store(settings).await?;
    let c = narwhal_turnout::Turnout::new(store)
        .import_early_vote(&file, &m)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "early vote {}: {} rows: {} supporters off the lists, {} already reported, {} not in the universe, {} unknown voter ids, {} rejected",
        file.display(), c.rows, c.reported, c.already, c.not_in_universe, c.unknown_voter, c.rejected
    );
    if c.rejected > 0 {
        if let Some(p) = c.rejects_path {
            println!("rejected rows, with line numbers and reasons: {p}");
        }
    }
    Ok(())
}

pub async fn run(settings: &Settings, cmd: ImportCommand) -> anyhow::Result<()> {
    let (file, mapping, rejects, batch) = match cmd {
        ImportCommand::People {
            file,
            mapping,
            rejects,
            batch,
        } => (file, mapping, rejects, batch),
        ImportCommand::EarlyVote { file, mapping } => {
            return early_vote(settings, file, mapping).await
        }
    };
    let text = std::fs::read_to_string(&mapping)
        .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", mapping.display()))?;
    let m = Mapping::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", mapping.display()))?;
    // Bulk work plans each batch for its own keys (see `Store::for_bulk`).
    let store = open_store(settings).await?.for_bulk(4);
    let mut opts = ImportOptions::beside(&file);
    opts.batch_rows = batch;
    if let Some(r) = rejects {
        opts.rejects_path = r;
    }
    let id = store
        .create_import(
            &m.source.name,
            &file.display().to_string(),
            &text,
            "cli",
            false,
        )
        .await?;
    let total = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    // The bar moves on its own between batches, and while a large load builds its
    // indexes after the last one (tens of seconds for a state's voter file).
    bar.enable_steady_tick(std::time::Duration::from_millis(250));
    let started = std::time::Instant::now();
    let hub = Hub::new(store.clone());
    let actor = format!("import:{}", id.0);
    let res = import::run(&hub, &file, &m, &opts, &actor, &|c| {
        bar.set_position(c.bytes_read as u64);
        let rate = c.rows_read as f64 / started.elapsed().as_secs_f64().max(0.001);
        // After the last batch a large load still builds indexes and statistics.
        let next = if c.bytes_read >= c.bytes_total {
            ", finishing (indexes, statistics)..."
        } else {
            ""
        };
        bar.set_message(format!(
            "{} rows ({:.0}/s), {} rejected{next}",
            c.rows_read, rate, c.rejected
        ));
    })
    .await;
    bar.finish_and_clear();
    let rejects_path = opts.rejects_path.display().to_string();
    match res {
        Ok(c) => {
            store
                .update_import(id, "done", &c, Some(&rejects_path), None)
                .await?;
            let entry = narwhal_store::audit::AuditEntry::new(
                &actor,
                "import.finish",
                "import",
                id,
                serde_json::json!(c),
            );
            store.audit(&entry).await?;
            println!(
                "import {}: {} rows read in {:.1}s: {} new, {} updated, {} unchanged, {} merged, {} rejected",
                id.0,
                c.rows_read,
                started.elapsed().as_secs_f64(),
                c.inserted,
                c.updated,
                c.unchanged,
                c.merged,
                c.rejected
            );
            if c.rejected > 0 {
                println!("rejected rows, with line numbers and reasons: {rejects_path}");
            }
            Ok(())
        }
        Err(e) => {
            let _ = store
                .update_import(
                    id,
                    "failed",
                    &Default::default(),
                    Some(&rejects_path),
                    Some(&e.to_string()),
                )
                .await;
            bail!("{e}")
        }
    }
}
