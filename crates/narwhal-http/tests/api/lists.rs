use crate::helpers::TestApp;
use reqwest::Method;
use serde_json::json;

crate::api_tests!(lists_members_and_csv);

async fn lists_members_and_csv(app: TestApp) {
    let a = app
        .person(
            json!({"first_name": "Zed", "last_name": "Quote\"s", "emails": ["zed@example.org"]}),
        )
        .await;
    let b = app
        .person(json!({"first_name": "=cmd", "last_name": "Y", "emails": ["y@example.org"]}))
        .await;
    let (s, v) = app
        .send_json(
            Method::POST,
            "/api/v1/lists",
            json!({"name": "Walkers", "description": "Saturday"}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_i64().unwrap();
    let (s, _) = app
        .send_json(Method::POST, "/api/v1/lists", json!({"name": "Walkers"}))
        .await;
    assert_eq!(s, 409);
    let (s, v) = app
        .send_json(
            Method::POST,
            &format!("/api/v1/lists/{id}/members"),
            json!({"people": [a, b]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["added"], 2);
    let v = app.get_json(&format!("/api/v1/lists/{id}")).await;
    assert_eq!(v["members"], 2);
    let v = app
        .get_json(&format!("/api/v1/lists/{id}/members?limit=1"))
        .await;
    assert_eq!(v["people"].as_array().unwrap().len(), 1);
    let after = v["next_after"].as_i64().unwrap();
    let v = app
        .get_json(&format!("/api/v1/lists/{id}/members?after={after}"))
        .await;
    assert_eq!(v["people"][0]["id"], b);

    let r = app
        .req(Method::GET, &format!("/api/v1/lists/{id}/export.csv"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let csv = r.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(lines[0].starts_with("id,voter_id,first_name"));
    assert!(lines[1].contains("\"Quote\"\"s\""), "{csv}");
    assert!(lines[2].contains("\"'=cmd\""), "{csv}");

    let (s, v) = app
        .send_json(
            Method::DELETE,
            &format!("/api/v1/lists/{id}/members"),
            json!({"people": [a]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["removed"], 1);
    let v = app.get_json("/api/v1/lists").await;
    assert_eq!(v["lists"][0]["members"], 1);
    // The export was audited.
    let v = app
        .get_json(&format!("/api/v1/audit?entity=list&id={id}"))
        .await;
    assert!(
        v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "list.export"),
        "{v}"
    );
}
