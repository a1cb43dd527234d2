//! `TestApp`: the real server on port 0 with a fresh database and an admin token.

use narwhal_domain::{Role, Scope};
use narwhal_http::{AppState, HttpConfig};
use narwhal_store::test_support::TestDb;
use narwhal_store::{Backend, Store};
use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;
use std::sync::OnceLock;

pub const ADMIN_PASSWORD: &str = "admin password for tests";

/// One Argon2 hash per test binary: hashing is deliberately slow.
pub fn password_hash() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| narwhal_http::hash_password(ADMIN_PASSWORD).unwrap())
}

/// Mail settings and the environment they read secrets from.
type MailWith = (
    narwhal_mail::accounts::MailSettings,
    fn(&str) -> Option<String>,
);

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    /// An admin token with every scope.
    pub token: String,
    pub store: Store,
    pub upload: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// The blast worker, when started with [`TestApp::spawn_mail`].
    blasts: Option<(
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    )>,
    /// The mail side the server runs with (always set: no accounts by default).
    pub mail: narwhal_http::blasts::MailEdge,
    _db: TestDb,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Option<Self> {
        Self::spawn_with(backend, |_| {}).await
    }

    pub async fn spawn_with(backend: Backend, tweak: impl FnOnce(&mut HttpConfig)) -> Option<Self> {
        Self::spawn_inner(backend, tweak, None).await
    }

    /// With `[mail]` settings built the way `narwhal serve` builds them (`env` stands
    /// for the environment), and the blast worker running beside the server.
    pub async fn spawn_mail(
        backend: Backend,
        mail: narwhal_mail::accounts::MailSettings,
        env: fn(&str) -> Option<String>,
    ) -> Option<Self> {
        Self::spawn_inner(backend, |_| {}, Some((mail, env))).await
    }

    async fn spawn_inner(
        backend: Backend,
        tweak: impl FnOnce(&mut HttpConfig),
        mail: Option<MailWith>,
    ) -> Option<Self> {
        let db = TestDb::new(backend).await?;
        let store = db.store.clone();
        let upload = tempfile::tempdir().unwrap();
        let mut config = HttpConfig {
            upload_dir: upload.path().to_path_buf(),
            ..HttpConfig::default()
        };
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let run_worker = mail.is_some();
        let (settings, env) = mail.unwrap_or_else(|| (Default::default(), |_| None));
        let setup = settings
            .build(
                upload.path(),
                &format!("{base}/u/"),
                b"test-unsubscribe-key-test-unsubscribe-key",
                &env,
            )
            .unwrap();
        let mut send = narwhal_mail::blast::SendConfig::new("test-node", setup.compose);
        send.job_lease_ms = 5_000;
        send.slice_lease_ms = 5_000;
        let edge = narwhal_http::blasts::MailEdge {
            sender: narwhal_mail::blast::BlastSender::new(store.clone(), setup.accounts, send),
            default_from: setup.from_address,
        };
        let blasts = run_worker.then(|| {
            let (tx, rx) = tokio::sync::watch::channel(false);
            (tx, narwhal_mail::blast::spawn(edge.sender.clone(), rx))
        });
        let state = AppState::new(store.clone(), config).with_mail(edge.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(narwhal_http::serve(listener, state, async move {
            let _ = rx.await;
        }));
        store
            .create_user("admin", password_hash(), Role::Admin)
            .await
            .unwrap();
        let (token, hash) = narwhal_http::new_token();
        store
            .create_token("admin-token", &hash, &Scope::ALL, "test")
            .await
            .unwrap();
        Some(Self {
            base,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            token,
            store,
            upload,
            shutdown: Some(tx),
            server: Some(server),
            blasts,
            mail: edge,
            _db: db,
        })
    }

    /// The SQLite data directory (`narwhal.db` inside); `None` on PostgreSQL.
    pub fn sqlite_dir(&self) -> Option<&std::path::Path> {
        self._db.dir.as_ref().map(|d| d.path())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A token with just these scopes.
    pub async fn token_with(&self, scopes: &[Scope]) -> String {
        let (token, hash) = narwhal_http::new_token();
        self.store
            .create_token("limited", &hash, scopes, "test")
            .await
            .unwrap();
        token
    }

    /// A request as the admin token.
    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(&self.token)
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let r = self.req(Method::GET, path).send().await.unwrap();
        assert_eq!(r.status(), 200, "GET {path}");
        r.json().await.unwrap()
    }

    pub async fn send_json(&self, method: Method, path: &str, body: Value) -> (u16, Value) {
        let r = self.req(method, path).json(&body).send().await.unwrap();
        split(r).await
    }

    /// Creates a person through the API and returns their id.
    pub async fn person(&self, body: Value) -> i64 {
        let (s, v) = self.send_json(Method::POST, "/api/v1/people", body).await;
        assert!(s == 201 || s == 200, "{s} {v}");
        v["id"].as_i64().unwrap()
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.server.take() {
            h.await.unwrap().unwrap();
        }
        if let Some((tx, h)) = self.blasts.take() {
            let _ = tx.send(true);
            let _ = h.await;
        }
    }
}

pub async fn split(r: Response) -> (u16, Value) {
    let s = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        s,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Asserts the error shape and code.
pub fn assert_error(v: &Value, code: &str) {
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
    assert!(
        v["error"]["request_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{v}"
    );
}

/// Runs each `async fn NAME(app: TestApp)` on SQLite and on PostgreSQL.
#[macro_export]
macro_rules! api_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let app = $crate::helpers::TestApp::spawn(narwhal_store::Backend::Sqlite).await.expect("sqlite");
                    super::$name(app).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(app) = $crate::helpers::TestApp::spawn(narwhal_store::Backend::Postgres).await {
                        super::$name(app).await;
                    }
                }
            )*
        }
    };
}
