//! The verifier's self-test: a front for one node that, while armed, answers a
//! fraction of turnout report batches `200 accepted` without passing them on, which
//! is exactly "acknowledged before (or without) a commit". Every other request is
//! forwarded unchanged. A run with it armed must make the reports invariant FAIL;
//! `crates/narwhal/tests/gameday.rs` proves it does.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug)]
struct Shared {
    upstream: String,
    http: reqwest::Client,
    /// The fraction of report batches dropped, in millionths (0: disarmed).
    drop_ppm: AtomicU64,
    seen: AtomicU64,
}

/// A running front; dropping it stops it.
#[derive(Debug)]
pub struct Front {
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Front {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Front {
    pub async fn start(upstream: String) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            upstream,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            drop_ppm: AtomicU64::new(0),
            seen: AtomicU64::new(0),
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Drops this fraction of report batches from now on (0 disarms).
    pub fn arm(&self, fraction: f64) {
        let ppm = (fraction.clamp(0.0, 1.0) * 1e6) as u64;
        self.shared.drop_ppm.store(ppm, Ordering::Relaxed);
    }
}

async fn forward(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ppm = s.drop_ppm.load(Ordering::Relaxed);
    if ppm > 0 && method == Method::POST && uri.path() == "/api/v1/turnout/reports" {
        // Evenly spread: every batch whose running count crosses a multiple of
        // 1/fraction is dropped.
        let n = s.seen.fetch_add(1, Ordering::Relaxed);
        if (n + 1) * ppm / 1_000_000 > n * ppm / 1_000_000 {
            let count = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["reports"].as_array().map(Vec::len))
                .unwrap_or(0);
            return axum::Json(serde_json::json!({
                "accepted": count, "duplicates": 0, "rejected": 0, "results": []
            }))
            .into_response();
        }
    }
    let url = format!(
        "{}{}",
        s.upstream,
        uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut req = s.http.request(method, url).body(body);
    for (k, v) in &headers {
        if k != "host" && k != "content-length" {
            req = req.header(k, v);
        }
    }
    match req.send().await {
        Ok(r) => {
            let status = r.status();
            let mut out = HeaderMap::new();
            for (k, v) in r.headers() {
                if k != "transfer-encoding" && k != "connection" && k != "content-length" {
                    out.append(k, v.clone());
                }
            }
            let bytes = r.bytes().await.unwrap_or_default();
            (status, out, bytes).into_response()
        }
        Err(_) => (StatusCode::BAD_GATEWAY, "upstream unreachable").into_response(),
    }
}
