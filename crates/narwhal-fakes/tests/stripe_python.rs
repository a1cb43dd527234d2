#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Stripe's official Python library (unmodified, pinned in scripts/install-deps)
//! against the fake Stripe: if the fake speaks the wire format well enough for the
//! vendor's own client, Narwhal's adapter is tested against something real-shaped.
//!
//! Without Python or the `stripe` package this test fails under `CI=true` and is
//! skipped, loudly, elsewhere. Run `scripts/install-deps` to get them.

use narwhal_fakes::stripe::{FakeStripe, FakeStripeConfig, DEFAULT_KEY};
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A Python that can `import stripe`: the project's `.venv` first, then `python3`.
fn python_with_stripe() -> Option<PathBuf> {
    let candidates = [
        repo_root().join(".venv/bin/python"),
        PathBuf::from("python3"),
    ];
    candidates.into_iter().find(|py| {
        Command::new(py)
            .args(["-c", "import stripe"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_library_works_against_the_fake() {
    let Some(python) = python_with_stripe() else {
        let msg = "Python with the `stripe` package not found (run scripts/install-deps)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg}");
        }
        eprintln!("SKIPPED the official Stripe client check: {msg}");
        return;
    };
    let fake = FakeStripe::start(FakeStripeConfig::default())
        .await
        .unwrap();
    let script = repo_root().join("tests/stripe-py/check_stripe.py");
    let url = fake.url();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(url)
            .arg(DEFAULT_KEY)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "check_stripe.py failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("7 passed, 0 failed"), "{stdout}");
    // What the library did is what the fake's books show: one charge, fully refunded,
    // and one decline.
    let ledger = fake.ledger();
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    assert_eq!((ledger[0].amount, ledger[0].refunded), (5500, 5500));
    assert_eq!(fake.stats().declines, 1);
    assert!(fake.stats().replayed >= 1);
}
