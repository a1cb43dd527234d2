//! The real binary, end to end, on the embedded SQLite default.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn narwhal(dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_narwhal"))
        .args(args)
        .current_dir(dir)
        .env_remove("NARWHAL_DATABASE_URL")
        .env("NARWHAL_DATA_DIR", dir.join("data"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn demo_builds_a_campaign_and_import_reports_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ok, out, _) = narwhal(d, &["migrate"]);
    assert!(
        ok && out.starts_with("applied ") && !out.starts_with("applied 0 "),
        "{out}"
    );
    let (ok, out, _) = narwhal(d, &["migrate"]);
    assert!(ok && out.contains("applied 0 migration(s)"), "{out}");
    let (ok, out, err) = narwhal(d, &["demo", "--people", "300", "--no-serve"]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("Staff login: demo-admin / "), "{out}");
    assert!(
        out.contains("created 300 people") || out.contains("created 29"),
        "{out}"
    );

    // A broken mapping names the file and the line.
    std::fs::write(
        d.join("m.toml"),
        "[source]\nname = \"x\"\n[fields]\nvoter_id = 7\n",
    )
    .unwrap();
    std::fs::write(d.join("f.csv"), "V\nOH1\n").unwrap();
    let (ok, _, err) = narwhal(d, &["import", "people", "f.csv", "--mapping", "m.toml"]);
    assert!(!ok);
    assert!(err.contains("m.toml: line 4"), "{err}");

    // An empty file names the file.
    std::fs::write(
        d.join("m.toml"),
        "[source]\nname = \"x\"\n[fields]\nvoter_id = \"V\"\n",
    )
    .unwrap();
    std::fs::write(d.join("empty.csv"), "").unwrap();
    let (ok, _, err) = narwhal(d, &["import", "people", "empty.csv", "--mapping", "m.toml"]);
    assert!(!ok);
    assert!(err.contains("empty.csv: the file is empty"), "{err}");

    // A good file imports, reports its rejects, and a second run changes nothing.
    std::fs::write(d.join("f.csv"), "V\nOH1\nbad id!\nOH2\n").unwrap();
    let (ok, out, err) = narwhal(d, &["import", "people", "f.csv", "--mapping", "m.toml"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("3 rows read") && out.contains("2 new") && out.contains("1 rejected"),
        "{out}"
    );
    let rejects = std::fs::read_to_string(d.join("f.csv.rejects.csv")).unwrap();
    assert!(
        rejects.contains("3,\"column V: invalid voter id"),
        "{rejects}"
    );
    let (ok, out, _) = narwhal(d, &["import", "people", "f.csv", "--mapping", "m.toml"]);
    assert!(ok && out.contains("0 new, 0 updated, 2 unchanged"), "{out}");

    // Backup makes a copy; config hides secrets.
    let (ok, out, err) = narwhal(d, &["admin", "backup", "copy.db"]);
    assert!(ok && out.contains("backed up"), "{err}");
    assert!(d.join("copy.db").exists());
    let out = Command::new(env!("CARGO_BIN_EXE_narwhal"))
        .args([
            "admin",
            "config",
            "--database",
            "postgres://u:hunter2@127.0.0.1/x",
        ])
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("postgres://u:***@127.0.0.1/x") && !s.contains("hunter2"),
        "{s}"
    );
    assert!(s.contains("api_token_cache_ms = 2000"), "the default: {s}");
    // `[http] api_token_cache_ms` from narwhal.toml.
    let conf = tempfile::tempdir().unwrap();
    std::fs::write(
        conf.path().join("narwhal.toml"),
        "[http]\napi_token_cache_ms = 0\n",
    )
    .unwrap();
    let (ok, out, err) = narwhal(conf.path(), &["admin", "config"]);
    assert!(ok && out.contains("api_token_cache_ms = 0"), "{out}{err}");
    let (ok, _, err) = narwhal(
        d,
        &[
            "admin",
            "create-token",
            "crm",
            "--scopes",
            "people:read,root",
        ],
    );
    assert!(!ok && err.contains("--scopes"), "{err}");
    let (ok, out, _) = narwhal(
        d,
        &["admin", "create-token", "crm", "--scopes", "people:read"],
    );
    assert!(ok && out.contains("shown once"), "{out}");
}

/// The donations bench, briefly and slowly, on SQLite: its fakes run on a runtime of
/// their own and are shut down cleanly, every gift offered is acknowledged through
/// the outage, and the line reports nothing lost or charged twice, checked against
/// the fakes' ledgers; `--timeline` prints a line per half second.
#[test]
fn the_donations_bench_reports_a_clean_run() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out, err) = narwhal(
        dir.path(),
        &[
            "bench",
            "donations",
            "--backend",
            "sqlite",
            "--seconds",
            "3",
            "--rate",
            "50",
            "--timeline",
        ],
    );
    assert!(ok, "{out}\n{err}");
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(line["bench"], "donations");
    assert_eq!(line["lost"], 0, "{line}");
    assert_eq!(line["double_charges"], 0, "{line}");
    assert_eq!(line["errors"], 0, "{line}");
    let acked = line["acknowledged"].as_u64().unwrap();
    assert!((140..=160).contains(&acked), "3 s at 50/s: {line}");
    assert!(line["via_backup"].as_u64().unwrap() > 0, "{line}");
    assert!(
        err.contains("  1.0 s:") && err.contains("requests, p50"),
        "{err}"
    );
}
