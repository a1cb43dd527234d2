//! The background worker: claims `import.people` and `inbound.person` jobs with
//! leases, so that any node can run them and a crashed node's work is picked up.

use crate::hub::Hub;
use crate::import::{self, ImportOptions};
use crate::mapping::Mapping;
use narwhal_domain::{ImportId, InboundId, PersonDraft};
use narwhal_store::imports::ImportCounts;
use narwhal_store::jobs::Job;
use narwhal_store::Store;
use std::time::Duration;

pub const KINDS: &[&str] = &["import.people", "inbound.person"];
/// How long a claimed job stays ours without a heartbeat: after this, another node
/// takes it over. Progress renews it several times a second.
pub const DEFAULT_LEASE_MS: i64 = 60_000;

/// Runs until `shutdown` turns true. A job in progress at shutdown is left with its
/// lease, which expires so that another node (or this one, restarted) resumes it.
pub fn spawn(
    store: Store,
    node_id: String,
    lease_ms: i64,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let hub = Hub::new(store.clone());
        loop {
            if *shutdown.borrow() {
                break;
            }
            match store.claim_job(KINDS, &node_id, lease_ms).await {
                Ok(Some(job)) => {
                    let id = job.id;
                    let outcome = run_job(&hub, &job, &node_id, lease_ms).await;
                    let r = match outcome {
                        Ok(result) => store.complete_job(id, &node_id, &result).await.map(|_| ()),
                        Err((msg, permanent)) => {
                            tracing::warn!(job.id = %id, kind = %job.kind, error = %msg, "job failed");
                            store.fail_job(id, &node_id, &msg, 5_000, permanent).await
                        }
                    };
                    if let Err(e) = r {
                        tracing::error!(job.id = %id, error = %e, "could not record job outcome");
                    }
                }
                Ok(None) => {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                        _ = shutdown.changed() => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "job claim failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    })
}

/// Runs one job. `Err((message, permanent))`.
pub async fn run_job(
    hub: &Hub,
    job: &Job,
    node_id: &str,
    lease_ms: i64,
) -> Result<serde_json::Value, (String, bool)> {
    match job.kind.as_str() {
        "import.people" => {
            let id = job.payload["import_id"]
                .as_i64()
                .ok_or(("payload lacks import_id".to_string(), true))?;
            run_import_job(hub, ImportId(id), job, node_id, lease_ms).await
        }
        "inbound.person" => {
            let id = job.payload["inbound_id"]
                .as_i64()
                .ok_or(("payload lacks inbound_id".to_string(), true))?;
            process_inbound(hub, InboundId(id)).await
        }
        other => Err((format!("unknown job kind {other}"), true)),
    }
}

async fn run_import_job(
    hub: &Hub,
    id: ImportId,
    job: &Job,
    node_id: &str,
    lease_ms: i64,
) -> Result<serde_json::Value, (String, bool)> {
    let store = &hub.store;
    let run = store
        .import_run(id)
        .await
        .map_err(|e| (e.to_string(), false))?;
    let mapping = Mapping::parse(&run.mapping).map_err(|e| (format!("mapping: {e}"), true))?;
    let path = std::path::PathBuf::from(&run.path);
    let opts = ImportOptions::beside(&path);
    let rejects = opts.rejects_path.display().to_string();
    let _ = store
        .update_import(id, "running", &run.counts, Some(&rejects), None)
        .await;
    let (ptx, prx) = tokio::sync::watch::channel(run.counts.clone());
    let reporter = report_progress(
        store.clone(),
        id,
        job.id,
        node_id.to_string(),
        lease_ms,
        rejects.clone(),
        prx,
    );
    let actor = format!("import:{}", id.0);
    let res = import::run(hub, &path, &mapping, &opts, &actor, &|c| {
        let _ = ptx.send(c.clone());
    })
    .await;
    drop(ptx);
    let _ = reporter.await;
    match res {
        Ok(c) => {
            store
                .update_import(id, "done", &c, Some(&rejects), None)
                .await
                .map_err(|e| (e.to_string(), false))?;
            let entry = narwhal_store::audit::AuditEntry::new(
                &actor,
                "import.finish",
                "import",
                id,
                serde_json::json!(c),
            );
            let _ = store.audit(&entry).await;
            Ok(serde_json::json!(c))
        }
        Err(e) => {
            let msg = e.to_string();
            let permanent = !matches!(e, import::ImportError::People(crate::PeopleError::Store(_)));
            let latest = store
                .import_run(id)
                .await
                .map(|r| r.counts)
                .unwrap_or_default();
            let state = if permanent { "failed" } else { "queued" };
            let _ = store
                .update_import(id, state, &latest, Some(&rejects), Some(&msg))
                .await;
            Err((msg, permanent))
        }
    }
}

/// Writes an import's progress to its row and renews its job's lease, at most twice
/// a second, until `progress` closes. The lease is renewed on a timer too (three
/// times a lease), for the stretches when no batch commits: an import's end
/// (building the query indexes of people after a bulk load, refreshing statistics)
/// can outlast a lease on a large file, and another node would then take the job
/// over and run the import again while this one is still finishing it.
pub fn report_progress(
    store: Store,
    id: ImportId,
    job_id: narwhal_domain::JobId,
    node: String,
    lease_ms: i64,
    rejects: String,
    mut progress: tokio::sync::watch::Receiver<ImportCounts>,
) -> tokio::task::JoinHandle<()> {
    let beat = Duration::from_millis((lease_ms / 3).max(1) as u64);
    tokio::spawn(async move {
        loop {
            // Err(_) from `changed`: the import ended. A timeout: time to beat.
            if let Ok(Err(_)) = tokio::time::timeout(beat, progress.changed()).await {
                break;
            }
            let c = progress.borrow_and_update().clone();
            let _ = store
                .update_import(id, "running", &c, Some(&rejects), None)
                .await;
            let _ = store
                .heartbeat_job(job_id, &node, lease_ms, c.bytes_read, c.bytes_total)
                .await;
            tokio::time::sleep(Duration::from_millis(500).min(beat)).await;
        }
    })
}

/// Translates one stored inbound payload into a person. Idempotent: a payload
/// already processed is not processed again.
pub async fn process_inbound(
    hub: &Hub,
    id: InboundId,
) -> Result<serde_json::Value, (String, bool)> {
    let store = &hub.store;
    let p = store
        .inbound(id)
        .await
        .map_err(|e| (e.to_string(), false))?;
    if p.state != "received" {
        return Ok(serde_json::json!({"skipped": p.state}));
    }
    let draft: PersonDraft = match serde_json::from_value(p.payload.clone()) {
        Ok(d) => d,
        Err(e) => {
            let msg = format!("payload is not a person record: {e}");
            store
                .finish_inbound(id, None, Some(&msg))
                .await
                .map_err(|e| (e.to_string(), false))?;
            return Ok(serde_json::json!({"rejected": msg}));
        }
    };
    match hub
        .upsert(draft, &p.source, &format!("inbound:{}", p.source))
        .await
    {
        Ok(u) => {
            store
                .finish_inbound(id, Some(u.id), None)
                .await
                .map_err(|e| (e.to_string(), false))?;
            Ok(serde_json::json!({"person_id": u.id, "outcome": u.outcome}))
        }
        Err(crate::PeopleError::Invalid(msg)) => {
            store
                .finish_inbound(id, None, Some(&msg))
                .await
                .map_err(|e| (e.to_string(), false))?;
            Ok(serde_json::json!({"rejected": msg}))
        }
        Err(e) => Err((e.to_string(), false)),
    }
}
