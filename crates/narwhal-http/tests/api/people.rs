use crate::helpers::{assert_error, TestApp};
use reqwest::Method;
use serde_json::json;

crate::api_tests!(create_search_get_patch, merge_and_undo);

async fn create_search_get_patch(app: TestApp) {
    let body = json!({"first_name": "Grace", "last_name": "Hopper", "emails": ["grace@example.org"], "tags": ["volunteer"]});
    let (s, v) = app
        .send_json(Method::POST, "/api/v1/people", body.clone())
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["outcome"], "created");
    let id = v["id"].as_i64().unwrap();
    // The same record again resolves to the same person.
    let (s, v) = app.send_json(Method::POST, "/api/v1/people", body).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["id"], id);
    assert_ne!(v["outcome"], "created");

    for q in ["grace", "Grace Hop", "hopper", "GRACE@example.org"] {
        let v = app
            .get_json(&format!("/api/v1/people?q={}", q.replace(' ', "%20")))
            .await;
        let ids: Vec<i64> = v["people"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_i64().unwrap())
            .collect();
        assert_eq!(ids, vec![id], "q={q}");
    }
    let v = app.get_json("/api/v1/people?q=nobody").await;
    assert!(v["people"].as_array().unwrap().is_empty());

    let v = app.get_json(&format!("/api/v1/people/{id}")).await;
    assert_eq!(v["person"]["first_name"], "Grace");
    assert_eq!(v["person"]["emails"], json!(["grace@example.org"]));
    assert!(!v["history"].as_array().unwrap().is_empty(), "{v}");
    assert_eq!(v["history"][0]["actor"], "token:admin-token");

    let (s, v) = app
        .send_json(
            Method::PATCH,
            &format!("/api/v1/people/{id}"),
            json!({"first_name": "Amazing Grace", "add_tags": ["donor"]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let v = app.get_json(&format!("/api/v1/people/{id}")).await;
    assert_eq!(v["person"]["first_name"], "Amazing Grace");
    assert!(v["person"]["tags"]
        .as_array()
        .unwrap()
        .contains(&json!("donor")));
    let (s, v) = app
        .send_json(
            Method::PATCH,
            &format!("/api/v1/people/{id}"),
            json!({"favourite_colour": "blue"}),
        )
        .await;
    assert_eq!(s, 422);
    assert_error(&v, "invalid_field");
    let (s, _) = app
        .send_json(
            Method::PATCH,
            "/api/v1/people/99999",
            json!({"first_name": "X"}),
        )
        .await;
    assert_eq!(s, 404);
}

async fn merge_and_undo(app: TestApp) {
    let a = app
        .person(json!({"first_name": "Ann", "last_name": "Lee", "emails": ["ann@example.org"]}))
        .await;
    let b = app
        .person(json!({"first_name": "Annie", "last_name": "Lee", "phones": ["+16145550100"]}))
        .await;
    assert_ne!(a, b);
    let (s, v) = app
        .send_json(
            Method::POST,
            &format!("/api/v1/people/{a}/merge"),
            json!({"other": b, "reason": "same person"}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let merge = v["merge_id"].as_i64().unwrap();
    let r = app
        .req(Method::GET, &format!("/api/v1/people/{b}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v = app.get_json(&format!("/api/v1/people/{a}")).await;
    assert_eq!(v["merges"][0]["id"], merge);
    assert!(v["person"]["phones"]
        .as_array()
        .unwrap()
        .contains(&json!("+16145550100")));
    // Merging into oneself is refused.
    let (s, _) = app
        .send_json(
            Method::POST,
            &format!("/api/v1/people/{a}/merge"),
            json!({"other": a}),
        )
        .await;
    assert_eq!(s, 422);

    let (s, v) = app
        .send_json(
            Method::POST,
            &format!("/api/v1/merges/{merge}/undo"),
            json!({}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let v = app.get_json(&format!("/api/v1/people/{b}")).await;
    assert_eq!(v["person"]["first_name"], "Annie");
    let v = app.get_json(&format!("/api/v1/people/{a}")).await;
    assert!(!v["person"]["phones"]
        .as_array()
        .unwrap()
        .contains(&json!("+16145550100")));
    // Undoing twice is refused.
    let (s, _) = app
        .send_json(
            Method::POST,
            &format!("/api/v1/merges/{merge}/undo"),
            json!({}),
        )
        .await;
    assert!(s == 422 || s == 409, "{s}");
}
