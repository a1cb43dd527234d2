//! Election-day ingest keeps its capacity while a big import and a blast-like write
//! load run, on both backends. The load runs on a pool of its own, as `narwhal serve`
//! runs background work (`store.dedicated(BULK_POOL)`); reports go through the API,
//! with their login, on the node's pools.

use crate::helpers::{split, TestApp};
use narwhal_people::import::{self, ImportOptions};
use narwhal_people::mapping::Mapping;
use narwhal_people::{synth, Hub};
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

crate::api_tests!(ingest_keeps_its_capacity_during_an_import_and_a_blast_load);

async fn ingest_keeps_its_capacity_during_an_import_and_a_blast_load(app: TestApp) {
    // 3,000 supporters at one polling place, and its watcher.
    let places = app.store.bench_seed_universe(3_000, 1).await.unwrap();
    let t = narwhal_turnout::Turnout::new(app.store.clone());
    let issued = t
        .issue_watcher("cap", &places[0], narwhal_turnout::LoginKind::Link, None)
        .await
        .unwrap();
    let r = app
        .client
        .post(app.url("/api/v1/turnout/sessions"))
        .json(&json!({"token": issued.secret.expose()}))
        .send()
        .await
        .unwrap();
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let codes: Vec<String> = t
        .remaining(&places[0], None, 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.voter_code)
        .collect();
    assert_eq!(codes.len(), 3_000);

    // The load: a 40,000-row import and writers rewriting people rows, as a blast's
    // ledger writes would, all on the background pool.
    let bulk = app.store.dedicated(4);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("voters.csv");
    synth::write_csv(&file, 7, 40_000, &|_| {}).unwrap();
    let mapping = Mapping::parse(synth::MAPPING).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let importer = {
        let hub = Hub::new(bulk.clone());
        let file = file.clone();
        tokio::spawn(async move {
            import::run(
                &hub,
                &file,
                &mapping,
                &ImportOptions::beside(&file),
                "load",
                &|_| {},
            )
            .await
            .unwrap()
        })
    };
    let mut writers = Vec::new();
    for k in 0..2i64 {
        let (bulk, stop, writes) = (bulk.clone(), stop.clone(), writes.clone());
        writers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                bulk.bench_touch_people(k, 2).await.unwrap();
                writes.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Let the import get going, then report 30 batches of 100 while it runs.
    let before = app.store.count_people().await.unwrap();
    while app.store.count_people().await.unwrap() < before + 5_000 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut lat = Vec::new();
    for (k, chunk) in codes.chunks(100).enumerate() {
        let body = json!({"reports": chunk.iter().enumerate().map(|(i, c)| json!({
            "report_id": format!("cap-{k}-{i}"), "voter_code": c})).collect::<Vec<_>>()});
        let t0 = Instant::now();
        let r = app
            .client
            .post(app.url("/api/v1/turnout/reports"))
            .header("cookie", &cookie)
            .json(&body)
            .send()
            .await
            .unwrap();
        let (s, v) = split(r).await;
        lat.push(t0.elapsed());
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["accepted"], chunk.len(), "{v}");
    }
    let during = app.store.count_people().await.unwrap();
    let import_running = !importer.is_finished();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let counts = importer.await.unwrap();
    assert_eq!(counts.rows_read, 40_000);
    lat.sort();
    let median = lat[lat.len() / 2];
    let max = *lat.last().unwrap();
    // The load was real and overlapped the reports...
    assert!(
        import_running || during > before + 5_000,
        "the import ran while reports were taken"
    );
    assert!(writes.load(Ordering::Relaxed) > 0);
    // ...and every batch was taken, and fast: no batch waited for the load to finish
    // (the import alone takes far longer), the typical one well within the second
    // election day needs. On SQLite a batch may wait for one import transaction (one
    // writer); on PostgreSQL the ingest's own pool never waits for the load's. The
    // bounds leave room for a test machine running other tests at the same time.
    assert!(
        median < Duration::from_secs(1),
        "median {median:?} (max {max:?})"
    );
    assert!(
        max < Duration::from_secs(5),
        "max {max:?} (median {median:?})"
    );
    let place = app.store.polling_place(&places[0]).await.unwrap();
    assert_eq!(place.remaining, 0);
}
