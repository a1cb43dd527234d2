use crate::helpers::{assert_error, split, TestApp};
use narwhal_store::Backend;
use reqwest::Method;
use serde_json::{json, Value};

crate::api_tests!(
    json_body_errors,
    unknown_routes_and_methods,
    request_ids_are_echoed
);

async fn json_body_errors(app: TestApp) {
    let post = |body: &'static str, ct: &'static str| {
        app.req(Method::POST, "/api/v1/people")
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let (s, v) = split(post("{\"first_name\": ", "application/json").await.unwrap()).await;
    assert_eq!(s, 400);
    assert_error(&v, "malformed_json");
    let (s, v) = split(
        post("{\"shoe_size\": 11}", "application/json")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 422);
    assert_error(&v, "invalid_field");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("shoe_size"),
        "{v}"
    );
    let (s, v) = split(
        post("{\"emails\": [\"not an email\"]}", "application/json")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 422);
    assert_error(&v, "invalid_field");
    let (s, v) = split(post("{}", "text/plain").await.unwrap()).await;
    assert_eq!(s, 415);
    assert_error(&v, "unsupported_media_type");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_413() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| c.max_body_bytes = 1024)
        .await
        .unwrap();
    let big = json!({"source": "x".repeat(4096)});
    for path in ["/api/v1/people", "/api/v1/inbound/crm"] {
        let r = app
            .req(Method::POST, path)
            .header("idempotency-key", "k1")
            .json(&big)
            .send()
            .await
            .unwrap();
        let (s, v) = split(r).await;
        assert_eq!(s, 413, "{path}: {v}");
        assert_error(&v, "body_too_large");
    }
    app.stop().await;
}

async fn unknown_routes_and_methods(app: TestApp) {
    let (s, v) = split(
        app.req(Method::GET, "/api/v1/nothing-here")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 404);
    assert_error(&v, "not_found");
    let (s, v) = split(app.req(Method::PUT, "/api/v1/people").send().await.unwrap()).await;
    assert_eq!(s, 405);
    assert_error(&v, "method_not_allowed");
    let (s, v) = split(
        app.req(Method::GET, "/api/v1/people/999999")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 404);
    assert_error(&v, "not_found");
    let (s, v) = split(
        app.req(Method::GET, "/api/v1/people/abc")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 400);
    assert_error(&v, "invalid_path");
}

async fn request_ids_are_echoed(app: TestApp) {
    let r = app
        .req(Method::GET, "/api/v1/people/424242")
        .header("x-request-id", "trace-me-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-me-123");
    let (_, v) = split(r).await;
    assert_eq!(v["error"]["request_id"], "trace-me-123");
    let r = app.client.get(app.url("/healthz")).send().await.unwrap();
    let generated = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(generated.len() >= 16);
    let r = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_ne!(r.headers()["x-request-id"].to_str().unwrap(), generated);
}

/// A request that cannot finish within `request_timeout` gets 503 `timeout` promptly,
/// and what it was doing is not committed. Here another connection holds SQLite's write
/// lock, so creating a list waits on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_requests_time_out_with_503() {
    use sqlx::{Connection, Executor};
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.request_timeout = std::time::Duration::from_millis(300)
    })
    .await
    .unwrap();
    let db = app.sqlite_dir().unwrap().join("narwhal.db");
    let mut holder = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    holder.execute("BEGIN IMMEDIATE").await.unwrap();

    let started = std::time::Instant::now();
    let (s, v) = app
        .send_json(Method::POST, "/api/v1/lists", json!({"name": "Blocked"}))
        .await;
    assert_eq!(s, 503, "{v}");
    assert_error(&v, "timeout");
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    // Reads do not wait for the writer.
    let (s, _) = split(app.req(Method::GET, "/api/v1/lists").send().await.unwrap()).await;
    assert_eq!(s, 200);

    holder.execute("ROLLBACK").await.unwrap();
    drop(holder);
    let mut created = (0, Value::Null);
    // The abandoned statement may still hold the write connection for a moment.
    for _ in 0..50 {
        created = app
            .send_json(Method::POST, "/api/v1/lists", json!({"name": "After"}))
            .await;
        if created.0 == 201 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(created.0, 201, "{}", created.1);
    let names: Vec<Value> = app.get_json("/api/v1/lists").await["lists"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].clone())
        .collect();
    assert_eq!(
        names,
        vec![json!("After")],
        "the timed-out write was not committed"
    );
    app.stop().await;
}
