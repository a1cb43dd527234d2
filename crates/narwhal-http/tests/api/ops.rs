use crate::auth::concrete;
use crate::helpers::{split, TestApp};
use reqwest::Method;
use serde_json::json;

crate::api_tests!(health_ready_metrics, openapi_matches_the_router);

async fn health_ready_metrics(app: TestApp) {
    let r = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    app.get_json("/api/v1/people?q=someone%40example.org").await;
    let r = app
        .req(Method::GET, "/api/v1/people/5")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    app.req(Method::POST, "/api/v1/inbound/crm")
        .header("idempotency-key", "m1")
        .json(&json!({"a": 1}))
        .send()
        .await
        .unwrap();
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(
            "http_requests_total{method=\"GET\",route=\"/api/v1/people\",status=\"200\"} 1"
        ),
        "{text}"
    );
    assert!(text.contains(
        "http_requests_total{method=\"GET\",route=\"/api/v1/people/{id}\",status=\"404\"} 1"
    ));
    assert!(text.contains("http_request_duration_seconds_count{route=\"/api/v1/people\"} 1"));
    assert!(
        text.contains("narwhal_jobs{kind=\"inbound.person\",state=\"queued\"} 1"),
        "{text}"
    );
    // Query strings (which may hold PII) never become labels.
    assert!(!text.contains("example.org"));
    app.stop().await;
}

async fn openapi_matches_the_router(app: TestApp) {
    let doc: serde_json::Value = app
        .client
        .get(app.url("/api/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let documented: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(documented, narwhal_http::routes::ROUTES.len());
    for r in narwhal_http::routes::ROUTES {
        assert!(
            doc["paths"][r.path][r.method.to_lowercase()].is_object(),
            "{} {}",
            r.method,
            r.path
        );
    }
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = app
                .req(m, &concrete(path))
                .header("idempotency-key", "k")
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            // A live stream never ends: answering it at all shows the route exists.
            if r.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| t.starts_with("text/event-stream"))
            {
                assert!(r.status().is_success(), "{method} {path}");
                continue;
            }
            let (s, v) = split(r).await;
            // A 404 may mean "no row 1", never "no such route".
            assert_ne!(v["error"]["message"], "no such route", "{method} {path}");
            assert_ne!(s, 405, "{method} {path}");
        }
    }
    // And the fallback does say so for a path that is not in the table.
    let (s, v) = split(
        app.req(Method::GET, "/api/v1/peoples")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 404);
    assert_eq!(v["error"]["message"], "no such route");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_gone_is_503() {
    let app = TestApp::spawn(narwhal_store::Backend::Sqlite)
        .await
        .unwrap();
    app.store.close().await;
    let r = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let r = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = app.req(Method::GET, "/api/v1/people").send().await.unwrap();
    assert_eq!(
        r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1"),
        "a 503 says when to come back"
    );
    let (s, v) = split(r).await;
    assert_eq!(s, 503);
    crate::helpers::assert_error(&v, "unavailable");
}
