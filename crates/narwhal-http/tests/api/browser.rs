//! One end-to-end browser test: headless Chromium, driven over the W3C WebDriver
//! protocol through chromedriver, logs in to the console and finds a person.

use crate::helpers::{TestApp, ADMIN_PASSWORD};
use narwhal_store::Backend;
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// chromedriver, killed when dropped.
pub(crate) struct Driver {
    child: Child,
    base: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal WebDriver session.
pub(crate) struct Session {
    http: reqwest::Client,
    url: String,
}

impl Session {
    pub(crate) async fn new(driver: &Driver, profile: &std::path::Path) -> Session {
        let http = reqwest::Client::new();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", format!("--user-data-dir={}", profile.display()),
            ]}
        }}});
        let v: Value = http
            .post(format!("{}/session", driver.base))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        Session {
            http,
            url: format!("{}/session/{id}", driver.base),
        }
    }

    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Value {
        let mut r = self.http.request(method, format!("{}{path}", self.url));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let v: Value = r.send().await.unwrap().json().await.unwrap();
        assert!(v["value"]["error"].is_null(), "webdriver {path}: {v}");
        v["value"].clone()
    }

    pub(crate) async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    pub(crate) async fn find(&self, css: &str) -> String {
        let v = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    pub(crate) async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    pub(crate) async fn click(&self, css: &str) {
        let e = self.find(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/click"),
            Some(json!({})),
        )
        .await;
    }

    pub(crate) async fn source(&self) -> String {
        self.call(reqwest::Method::GET, "/source", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Polls the page source until it contains `needle`.
    pub(crate) async fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.source().await;
            if s.contains(needle) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "page never showed {needle:?}:\n{s}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) async fn end(self) {
        let _ = self.http.delete(&self.url).send().await;
    }
}

pub(crate) async fn start_driver() -> Option<Driver> {
    if !std::path::Path::new(CHROMEDRIVER).exists() || !std::path::Path::new(CHROMIUM).exists() {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("CI requires {CHROMEDRIVER} and {CHROMIUM} (scripts/install-deps)");
        }
        eprintln!("\n!!! chromedriver or chromium missing: the browser test was SKIPPED !!!\n");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let driver = Driver {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = reqwest::get(format!("{}/status", driver.base)).await {
            let v: Value = r.json().await.unwrap_or_default();
            if v["value"]["ready"] == true {
                return Some(driver);
            }
        }
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_login_and_search() {
    let Some(driver) = start_driver().await else {
        return;
    };
    let app = TestApp::spawn(Backend::Sqlite).await.unwrap();
    let id = app
        .person(json!({"first_name": "Katherine", "last_name": "Johnson", "emails": ["kj@example.org"]}))
        .await;
    app.person(
        json!({"first_name": "Dorothy", "last_name": "Vaughan", "emails": ["dv@example.org"]}),
    )
    .await;
    let profile = tempfile::tempdir().unwrap();
    let s = Session::new(&driver, profile.path()).await;

    // Not logged in: the console sends us to the login page.
    s.goto(&app.url("/people")).await;
    s.wait_for("id=\"password\"").await;
    s.type_into("#username", "admin").await;
    s.type_into("#password", ADMIN_PASSWORD).await;
    s.click("#login").await;
    s.wait_for("Dashboard").await;

    s.goto(&app.url("/people")).await;
    s.type_into("#q", "Katherine").await;
    s.click("#search").await;
    let page = s.wait_for("Johnson").await;
    assert!(page.contains(&format!("/people/{id}")), "{page}");
    assert!(!page.contains("Vaughan"));

    s.click(&format!("a[href='/people/{id}']")).await;
    let page = s.wait_for("Provenance").await;
    assert!(page.contains("kj@example.org"));
    s.end().await;
    app.stop().await;
}
