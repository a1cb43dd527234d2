//! `narwhal blast status|pause|cancel` against a real SQLite database, and `admin
//! config` hiding mail secrets: the real binary, spawned.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use narwhal_domain::{Email, PersonDraft, SegmentFilter};
use narwhal_store::blasts::{BlastContent, BlastTarget, NewBlast, Outcome};
use narwhal_store::{now_ms, DatabaseTarget, Store};
use std::process::Command;

fn narwhal(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_narwhal"));
    c.args(args)
        .current_dir(dir)
        .env_remove("NARWHAL_DATABASE_URL")
        .env("NARWHAL_DATA_DIR", dir.join("data"));
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_the_ledger_figures_and_controls_work() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let store = Store::open(&DatabaseTarget::SqliteDir(d.join("data")))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let hub = narwhal_people::Hub::new(store.clone());
    let drafts: Vec<PersonDraft> = (0..5)
        .map(|i| {
            serde_json::from_value(
                serde_json::json!({"emails": [format!("c{i}@example.com")], "tags": ["v"]}),
            )
            .unwrap()
        })
        .collect();
    hub.upsert_batch(drafts, "test", "test", false)
        .await
        .unwrap();
    let id = store
        .create_blast(&NewBlast {
            name: "CLI".into(),
            target: BlastTarget::Filter(
                SegmentFilter::parse(&serde_json::json!({"tag": "v"})).unwrap(),
            ),
            content: BlastContent::Inline {
                subject: "Hi".into(),
                text: Some("t".into()),
                html: None,
            },
            from_email: Email::parse("team@campaign.example").unwrap(),
            keep_message_ids: false,
        })
        .await
        .unwrap();
    store.schedule_blast(id, now_ms(), 1).await.unwrap();
    store.start_blast(id).await.unwrap();
    store.materialize_recipients(id).await.unwrap();
    // Three sent, one failed, one left pending.
    let claim = store.claim_recipients(id, None, 4, 60_000).await.unwrap();
    let mut outcomes = Vec::new();
    for (i, r) in claim.recipients.iter().enumerate() {
        let o = if i < 3 {
            Outcome::Sent {
                account: 1,
                message_id: None,
            }
        } else {
            Outcome::Failed {
                account: Some(1),
                reason: "MessageRejected".into(),
            }
        };
        outcomes.push((r.person_id, o));
    }
    store.record_outcomes(&claim, &outcomes).await.unwrap();
    store.close().await;

    let ids = id.0.to_string();
    let (ok, out, err) = narwhal(d, &["blast", "status", &ids], &[]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("\"CLI\": sending"), "{out}");
    assert!(
        out.contains("total 5  sent 3  failed 1  skipped 0  throttled-waiting 0  pending 1"),
        "{out}"
    );
    let (ok, out, _) = narwhal(d, &["blast", "pause", &ids], &[]);
    assert!(ok && out.contains("paused"), "{out}");
    // --watch returns once the blast is paused, with the same figures.
    let (ok, out, err) = narwhal(d, &["blast", "status", &ids, "--watch"], &[]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("paused: total 5  sent 3  failed 1"), "{out}");
    let (ok, out, _) = narwhal(d, &["blast", "cancel", &ids], &[]);
    assert!(ok && out.contains("cancelled"), "{out}");
    let (ok, _, err) = narwhal(d, &["blast", "resume", &ids], &[]);
    assert!(!ok && err.contains("cancelled and cannot become"), "{err}");
    let (ok, _, err) = narwhal(d, &["blast", "status", "999"], &[]);
    assert!(!ok && err.contains("not found"), "{err}");
}

#[test]
fn mail_config_fails_fast_naming_the_key_and_hides_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("narwhal.toml"),
        "[mail]\nsender_name = \"F\"\npostal_address = \"P\"\n[[mail.accounts]]\nkind = \"ses\"\nname = \"main\"\nregion = \"us-east-1\"\nendpoint = \"http://127.0.0.1:9\"\naccess_key_id_env = \"T_KEY\"\nsecret_access_key_env = \"T_SECRET\"\nthrottle = \"14/s,daily=50000\"\n",
    )
    .unwrap();
    let env = [
        ("T_KEY", "AKIDVISIBLE"),
        ("T_SECRET", "hidden-secret-value"),
    ];
    let (ok, out, err) = narwhal(d, &["admin", "config"], &env);
    assert!(ok, "{err}");
    assert!(
        out.contains("secret_access_key_env = \"T_SECRET\" (set, value hidden)"),
        "{out}"
    );
    assert!(
        !out.contains("hidden-secret-value") && !out.contains("AKIDVISIBLE"),
        "{out}"
    );
    // A missing secret variable is named, and nothing starts.
    let (ok, _, err) = narwhal(d, &["admin", "config"], &[("T_KEY", "x")]);
    assert!(
        !ok && err.contains("mail.accounts[0].secret_access_key_env"),
        "{err}"
    );
}
