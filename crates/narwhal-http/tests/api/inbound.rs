use crate::helpers::{assert_error, split, TestApp};
use narwhal_domain::InboundId;
use reqwest::Method;
use serde_json::json;

crate::api_tests!(inbound_needs_a_key_and_dedupes);

async fn inbound_needs_a_key_and_dedupes(app: TestApp) {
    let body = json!({"first_name": "Ada", "email": "ada@example.org"});
    let (s, v) = split(
        app.req(Method::POST, "/api/v1/inbound/crm")
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 400);
    assert_error(&v, "missing_idempotency_key");
    let send = || {
        app.req(Method::POST, "/api/v1/inbound/crm")
            .header("idempotency-key", "evt-1")
            .json(&body)
            .send()
    };
    let (s, first) = split(send().await.unwrap()).await;
    assert_eq!(s, 202, "{first}");
    assert_eq!(first["duplicate"], false);
    let (s, again) = split(send().await.unwrap()).await;
    assert_eq!(s, 202);
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["id"], first["id"]);
    let stored = app
        .store
        .inbound(InboundId(first["id"].as_i64().unwrap()))
        .await
        .unwrap();
    assert_eq!(stored.payload, body);
    // Another source with the same key is a different payload.
    let (_, other) = split(
        app.req(Method::POST, "/api/v1/inbound/web")
            .header("idempotency-key", "evt-1")
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_ne!(other["id"], first["id"]);
    let (s, v) = split(
        app.req(Method::POST, "/api/v1/inbound/crm")
            .header("idempotency-key", "evt-2")
            .json(&json!([1, 2]))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 422);
    assert_error(&v, "invalid_field");
    let (s, _) = split(
        app.req(Method::POST, "/api/v1/inbound/Bad%20Source")
            .header("idempotency-key", "evt-3")
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 422);
}
