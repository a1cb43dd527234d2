use crate::helpers::{assert_error, TestApp};
use reqwest::Method;
use serde_json::json;

crate::api_tests!(segments_count_page_and_export);

async fn segments_count_page_and_export(app: TestApp) {
    for (i, tag) in ["donor", "donor", "volunteer"].iter().enumerate() {
        app.person(json!({"first_name": format!("P{i}"), "emails": [format!("p{i}@example.org")], "tags": [tag]})).await;
    }
    let (s, v) = app
        .send_json(
            Method::POST,
            "/api/v1/segments/preview",
            json!({"filter": {"tag": "donor"}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["count"], 2);
    let (s, v) = app
        .send_json(
            Method::POST,
            "/api/v1/segments/preview",
            json!({"filter": {"all": []}}),
        )
        .await;
    assert_eq!(s, 422);
    assert_error(&v, "invalid_field");

    let (s, v) = app
        .send_json(
            Method::POST,
            "/api/v1/segments",
            json!({"name": "Donors", "filter": {"tag": "donor"}}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_i64().unwrap();
    assert_eq!(
        app.get_json(&format!("/api/v1/segments/{id}/count")).await["count"],
        2
    );
    let v = app
        .get_json(&format!("/api/v1/segments/{id}/people?limit=1"))
        .await;
    assert_eq!(v["people"].as_array().unwrap().len(), 1);
    let csv = app
        .req(Method::GET, &format!("/api/v1/segments/{id}/export.csv"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");

    let (s, v) = app
        .send_json(
            Method::PUT,
            &format!("/api/v1/segments/{id}"),
            json!({"filter": {"not": {"tag": "donor"}}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        app.get_json(&format!("/api/v1/segments/{id}/count")).await["count"],
        1
    );
    assert_eq!(
        app.get_json("/api/v1/segments").await["segments"][0]["name"],
        "Donors"
    );
    let r = app
        .req(Method::DELETE, &format!("/api/v1/segments/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = app
        .req(Method::GET, &format!("/api/v1/segments/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
