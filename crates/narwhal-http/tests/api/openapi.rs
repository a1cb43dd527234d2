//! The OpenAPI document against the running server: routes declared with a JSON body
//! really read JSON (and the others do not), and real responses carry exactly the
//! properties their schemas list.

use crate::auth::concrete;
use crate::helpers::{split, TestApp};
use crate::uploads::{run_queued_job, MAPPING};
use narwhal_http::routes::{Body, ROUTES};
use reqwest::Method;
use serde_json::{json, Value};

crate::api_tests!(
    declared_bodies_match_handlers,
    responses_match_their_schemas
);

async fn declared_bodies_match_handlers(app: TestApp) {
    for r in ROUTES {
        let m = Method::from_bytes(r.method.as_bytes()).unwrap();
        let res = app
            .req(m, &concrete(r.path).replace("{name}", "body-check.csv"))
            .header("content-type", "text/plain")
            .header("idempotency-key", "k")
            .body("not json")
            .send()
            .await
            .unwrap();
        // A live stream never ends: its status is the answer; its body is not read.
        let streams = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("text/event-stream"));
        if streams {
            assert!(
                matches!(r.body, Body::None),
                "{} {} streams",
                r.method,
                r.path
            );
            assert_ne!(res.status(), 415, "{} {}", r.method, r.path);
            continue;
        }
        let (s, v) = split(res).await;
        match r.body {
            Body::Json(_) => assert_eq!(s, 415, "{} {} reads JSON: {v}", r.method, r.path),
            Body::None | Body::Raw => {
                assert_ne!(
                    s, 415,
                    "{} {} is declared without a JSON body: {v}",
                    r.method, r.path
                )
            }
        }
    }
}

/// Follows a local `$ref`.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => {
            let name = r.trim_start_matches("#/components/schemas/");
            &doc["components"]["schemas"][name]
        }
        None => schema,
    }
}

fn type_ok(ty: &Value, v: &Value) -> bool {
    let one = |t: &str| match t {
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        _ => false,
    };
    match ty {
        Value::String(t) => one(t),
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).any(one),
        _ => true,
    }
}

/// Checks `v` against `schema`: types, required properties, and that every property
/// produced is listed (for schemas that list properties). Recurses into properties
/// and array items.
pub fn conforms(doc: &Value, schema: &Value, v: &Value, at: &str) {
    let schema = resolve(doc, schema);
    assert!(
        type_ok(&schema["type"], v),
        "{at}: {v} is not {}",
        schema["type"]
    );
    if let Some(e) = schema["enum"].as_array() {
        assert!(e.contains(v), "{at}: {v} not in {e:?}");
    }
    if let (Some(props), Some(obj)) = (schema["properties"].as_object(), v.as_object()) {
        for req in schema["required"].as_array().into_iter().flatten() {
            let k = req.as_str().unwrap();
            assert!(obj.contains_key(k), "{at}: missing required {k} in {v}");
        }
        for (k, val) in obj {
            let p = props
                .get(k)
                .unwrap_or_else(|| panic!("{at}: property {k} is not in the schema"));
            conforms(doc, p, val, &format!("{at}.{k}"));
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, x) in arr.iter().enumerate() {
            conforms(doc, items, x, &format!("{at}[{i}]"));
        }
    }
}

async fn responses_match_their_schemas(app: TestApp) {
    let doc: Value = app
        .client
        .get(app.url("/api/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let check = |path: &str, v: &Value, method: &str, route: &str| {
        let op = &doc["paths"][route][method];
        let ok = op["responses"]
            .as_object()
            .unwrap()
            .iter()
            .find(|(k, _)| *k != "default")
            .unwrap()
            .1;
        let schema = &ok["content"]["application/json"]["schema"];
        assert!(schema.is_object(), "{method} {route} names a schema");
        conforms(&doc, schema, v, path);
    };
    let (s, v) = app
        .send_json(
            Method::POST,
            "/api/v1/people",
            json!({"first_name": "Ada", "last_name": "Lovelace", "voter_id": "OH-1",
                "emails": ["ada@example.org"], "phones": ["614-555-0101"],
                "address": {"line1": "12 Main St", "city": "Columbus", "state": "OH", "zip": "43215"},
                "custom": {"party": "D"}, "tags": ["volunteer"], "email_consent": "subscribed"}),
        )
        .await;
    assert_eq!(s, 201);
    check("upsert", &v, "post", "/api/v1/people");
    let ada = v["id"].as_i64().unwrap();
    let bob = app
        .person(json!({"first_name": "Bob", "emails": ["bob@example.org"]}))
        .await;
    let (_, v) = app
        .send_json(
            Method::POST,
            &format!("/api/v1/people/{ada}/merge"),
            json!({"other": bob, "reason": "same"}),
        )
        .await;
    check("merge", &v, "post", "/api/v1/people/{id}/merge");
    let (_, v) = app
        .send_json(
            Method::PATCH,
            &format!("/api/v1/people/{ada}"),
            json!({"add_tags": ["donor"], "custom": {"party": null}}),
        )
        .await;
    check("patch", &v, "patch", "/api/v1/people/{id}");
    let v = app.get_json(&format!("/api/v1/people/{ada}")).await;
    assert!(!v["merges"].as_array().unwrap().is_empty());
    assert!(!v["history"].as_array().unwrap().is_empty());
    check("person", &v, "get", "/api/v1/people/{id}");
    let v = app.get_json("/api/v1/people?q=ada").await;
    assert!(!v["people"].as_array().unwrap().is_empty());
    check("search", &v, "get", "/api/v1/people");

    let (_, v) = app
        .send_json(Method::POST, "/api/v1/lists", json!({"name": "L"}))
        .await;
    check("new list", &v, "post", "/api/v1/lists");
    let list = v["id"].as_i64().unwrap();
    let (_, v) = app
        .send_json(
            Method::POST,
            &format!("/api/v1/lists/{list}/members"),
            json!({"people": [ada]}),
        )
        .await;
    check("add", &v, "post", "/api/v1/lists/{id}/members");
    check(
        "lists",
        &app.get_json("/api/v1/lists").await,
        "get",
        "/api/v1/lists",
    );
    let filter = json!({"all": [{"state": "OH"}, {"in_list": list}, "has_email",
        {"consent": {"channel": "email", "state": "subscribed"}},
        {"field": {"key": "party", "op": "exists"}}, {"not": {"tag": "nobody"}}]});
    let (s, v) = app
        .send_json(
            Method::POST,
            "/api/v1/segments",
            json!({"name": "S", "filter": filter}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let seg = v["id"].as_i64().unwrap();
    let v = app.get_json(&format!("/api/v1/segments/{seg}")).await;
    check("segment", &v, "get", "/api/v1/segments/{id}");
    check(
        "segments",
        &app.get_json("/api/v1/segments").await,
        "get",
        "/api/v1/segments",
    );
    let v = app.get_json(&format!("/api/v1/segments/{seg}/count")).await;
    check("count", &v, "get", "/api/v1/segments/{id}/count");

    let r = app
        .req(Method::PUT, "/api/v1/uploads/schema.csv")
        .body("FIRST,EMAIL\nCy,cy@example.org\nDee,nope\n")
        .send()
        .await
        .unwrap();
    let (_, v) = split(r).await;
    check("upload", &v, "put", "/api/v1/uploads/{name}");
    let (_, v) = app
        .send_json(
            Method::POST,
            "/api/v1/imports",
            json!({"source": "s", "path": "schema.csv", "mapping": MAPPING}),
        )
        .await;
    check("import", &v, "post", "/api/v1/imports");
    run_queued_job(&app).await;
    let v = app.get_json(&format!("/api/v1/imports/{}", v["id"])).await;
    assert_eq!(v["state"], "done");
    check("import run", &v, "get", "/api/v1/imports/{id}");
    check(
        "imports",
        &app.get_json("/api/v1/imports").await,
        "get",
        "/api/v1/imports",
    );
    check(
        "audit",
        &app.get_json("/api/v1/audit").await,
        "get",
        "/api/v1/audit",
    );
    let (_, v) = split(
        app.req(Method::GET, "/api/v1/people/999999")
            .send()
            .await
            .unwrap(),
    )
    .await;
    conforms(
        &doc,
        &json!({"$ref": "#/components/schemas/Error"}),
        &v,
        "error",
    );
}
