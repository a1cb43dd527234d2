//! The poll-watcher app end to end in headless Chromium: log in by link, mark a
//! voter online and see the server count it; go offline (a proxy the test controls
//! drops every connection), mark another, reload the page while still offline (the
//! service worker serves the app and the list; IndexedDB keeps the report), come back
//! online and see the report arrive exactly once.

use crate::browser::{start_driver, Session};
use crate::helpers::TestApp;
use narwhal_domain::SegmentFilter;
use narwhal_store::Backend;
use narwhal_turnout::{LoginKind, Turnout};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

/// A TCP proxy in front of the app that can cut the network: when offline it closes
/// every open connection and every new one.
struct Proxy {
    base: String,
    offline: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let offline = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (off, cs) = (offline.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                if off.load(Ordering::SeqCst) {
                    drop(down);
                    continue;
                }
                let up = upstream.clone();
                let h = tokio::spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(&up).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
                cs.lock().unwrap().push(h.abort_handle());
            }
        });
        Proxy {
            base,
            offline,
            conns,
            accept,
        }
    }

    fn set_offline(&self, off: bool) {
        self.offline.store(off, Ordering::SeqCst);
        if off {
            for h in self.conns.lock().unwrap().drain(..) {
                h.abort();
            }
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.set_offline(true);
    }
}

/// Runs a script in the page and returns its value.
async fn js(s: &Session, script: &str) -> Value {
    s.call(
        reqwest::Method::POST,
        "/execute/sync",
        Some(json!({"script": script, "args": []})),
    )
    .await
}

/// The text of an element (empty when missing).
async fn text(s: &Session, id: &str) -> String {
    js(
        s,
        &format!("var e = document.getElementById('{id}'); return e ? e.textContent : '';"),
    )
    .await
    .as_str()
    .unwrap_or_default()
    .to_string()
}

/// Waits until the element's text satisfies `ok`.
async fn wait_text(s: &Session, id: &str, secs: u64, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let t = text(s, id).await;
        if ok(&t) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "#{id} never became what was expected; it says {t:?}\n{}",
            s.source().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_voted(app: &TestApp, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.store.voted_count().await.unwrap() != n {
        assert!(Instant::now() < deadline, "the server never counted {n}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_app_reports_survive_offline_and_reload() {
    let Some(driver) = start_driver().await else {
        return;
    };
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let t = Turnout::new(app.store.clone());
    t.import_places(
        "places.csv",
        "code,name,address,county,precincts\nP1,Lincoln Elementary,12 Main St,FRANKLIN,FRA-001\n"
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut ids = Vec::new();
    for (i, name) in ["Ada", "Grace", "Hedy"].iter().enumerate() {
        ids.push(
            app.person(json!({"voter_id": format!("OH-{i}"), "first_name": name, "last_name": "Tester",
                "address": {"state": "OH", "county": "FRANKLIN", "precinct": "FRA-001"}, "tags": ["supporter"]}))
                .await,
        );
    }
    let seg = app
        .store
        .create_segment(
            "gotv",
            &SegmentFilter::parse(&json!({"tag": "supporter"})).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(t.build_universe(seg).await.unwrap().added, 3);
    let issued = t
        .issue_watcher("w1", "P1", LoginKind::Link, None)
        .await
        .unwrap();
    let upstream = app.base.trim_start_matches("http://").to_string();
    let proxy = Proxy::start(upstream).await;
    let profile = tempfile::tempdir().unwrap();
    let s = Session::new(&driver, profile.path()).await;

    // Log in by link; the readiness line and the list show; the worker takes over.
    s.goto(&proxy.url(&format!("/watch/#t={}", issued.secret.expose())))
        .await;
    s.wait_for("your list has 3 voters").await;
    s.wait_for(&format!("mark-{}", ids[2])).await;
    wait_text(&s, "sw", 10, |t| t == "works offline").await;
    // The token left the address bar.
    let href = js(&s, "return location.href;").await;
    assert!(!href.as_str().unwrap().contains("nwt_"), "{href}");

    // Online: search by name, mark; the server counts it and the app says synced.
    s.type_into("#q", "Ada").await;
    s.wait_for(&format!("mark-{}", ids[0])).await;
    let page = s.source().await;
    assert!(
        !page.contains(&format!("mark-{}", ids[1])),
        "search filters"
    );
    s.click(&format!("#mark-{}", ids[0])).await;
    wait_voted(&app, 1).await;
    wait_text(&s, "pending", 10, |t| t == "0 not synced").await;

    // Offline: mark Grace; it stays on the device.
    proxy.set_offline(true);
    js(&s, "document.getElementById('q').value = ''; document.getElementById('q').dispatchEvent(new Event('input')); return 1;").await;
    s.click(&format!("#mark-{}", ids[1])).await;
    wait_text(&s, "pending", 10, |t| t == "1 not synced").await;
    wait_text(&s, "net", 10, |t| t.starts_with("offline")).await;
    assert_eq!(app.store.voted_count().await.unwrap(), 1);

    // Reload while offline: the worker serves the app, IndexedDB the pending report.
    js(&s, "location.reload(); return 1;").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    wait_text(&s, "pending", 10, |t| t == "1 not synced").await;
    wait_text(&s, "net", 10, |t| t.starts_with("offline")).await;
    s.wait_for(&format!("marked-{}", ids[1])).await;
    s.wait_for(&format!("mark-{}", ids[2])).await;
    assert_eq!(app.store.voted_count().await.unwrap(), 1);

    // Back online: the backoff timer sends it, once.
    proxy.set_offline(false);
    wait_text(&s, "pending", 40, |t| t == "0 not synced").await;
    wait_voted(&app, 2).await;
    assert_eq!(app.store.report_rows().await.unwrap(), 2, "no duplicate");

    // Undo Ada: she is back on the list and no longer counted.
    s.click(&format!("#undo-{}", ids[0])).await;
    wait_voted(&app, 1).await;
    s.wait_for(&format!("mark-{}", ids[0])).await;
    wait_text(&s, "pending", 10, |t| t == "0 not synced").await;
    assert_eq!(app.store.report_rows().await.unwrap(), 2);

    s.end().await;
    drop(proxy);
    app.stop().await;
}
