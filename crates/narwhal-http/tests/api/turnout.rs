//! Election day over HTTP: watcher login, readiness, the remaining list, batch
//! ingest with per-item outcomes, the staff summary, and who may call what.

use crate::helpers::{assert_error, password_hash, split, TestApp, ADMIN_PASSWORD};
use crate::openapi::conforms;
use narwhal_domain::{Role, SegmentFilter};
use narwhal_turnout::{LoginKind, Turnout};
use reqwest::Method;
use serde_json::{json, Value};

crate::api_tests!(
    watcher_reads_readiness_and_list,
    batch_ingest_over_http,
    who_may_call_turnout_routes,
    a_watcher_session_is_reread_within_its_cache_time,
);

const PLACES: &str = "code,name,address,county,precincts
P1,Lincoln Elementary,12 Main St,FRANKLIN,FRA-001
P2,Oak Library,3 Oak Ave,FRANKLIN,FRA-002
";

/// Two supporters at P1, one at P2; a watcher for P1. Returns the watcher's cookie
/// and each voter's code.
pub(crate) async fn setup(app: &TestApp) -> (String, Vec<String>) {
    let t = Turnout::new(app.store.clone());
    t.import_places("places.csv", PLACES.as_bytes())
        .await
        .unwrap();
    let mut ids = Vec::new();
    for (i, p) in ["FRA-001", "FRA-001", "FRA-002"].iter().enumerate() {
        ids.push(
            app.person(json!({"voter_id": format!("OH-{i}"), "first_name": format!("V{i}"),
                "address": {"state": "OH", "county": "FRANKLIN", "precinct": p}, "tags": ["supporter"]}))
                .await,
        );
    }
    let seg = app
        .store
        .create_segment(
            "gotv",
            &SegmentFilter::parse(&json!({"tag": "supporter"})).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(t.build_universe(seg).await.unwrap().added, 3);
    let mut codes = Vec::new();
    for id in ids {
        codes.push(
            t.voter_code(narwhal_domain::PersonId(id))
                .await
                .unwrap()
                .unwrap()
                .to_string(),
        );
    }
    let issued = t
        .issue_watcher("w1", "P1", LoginKind::Link, None)
        .await
        .unwrap();
    let cookie = login(app, json!({"token": issued.secret.expose()})).await;
    (cookie, codes)
}

async fn login(app: &TestApp, body: Value) -> String {
    let r = app
        .client
        .post(app.url("/api/v1/turnout/sessions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let c = r.headers()["set-cookie"].to_str().unwrap().to_string();
    c.split(';').next().unwrap().to_string()
}

async fn doc(app: &TestApp) -> Value {
    app.client
        .get(app.url("/api/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn schema(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

async fn as_watcher(
    app: &TestApp,
    cookie: &str,
    m: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = app
        .client
        .request(m, app.url(path))
        .header("cookie", cookie);
    if let Some(b) = body {
        r = r.json(&b);
    }
    split(r.send().await.unwrap()).await
}

async fn watcher_reads_readiness_and_list(app: TestApp) {
    let (cookie, codes) = setup(&app).await;
    let doc = doc(&app).await;
    let (s, v) = as_watcher(&app, &cookie, Method::GET, "/api/v1/turnout/me", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["polling_place"]["code"], "P1");
    assert_eq!(v["polling_place"]["universe"], 2);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("your list has 2 voters"),
        "{v}"
    );
    conforms(&doc, &schema("Readiness"), &v, "readiness");
    let (s, v) = as_watcher(&app, &cookie, Method::GET, "/api/v1/turnout/list", None).await;
    assert_eq!(s, 200, "{v}");
    conforms(&doc, &schema("TurnoutList"), &v, "list");
    let listed: Vec<&str> = v["voters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["voter_code"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 2);
    assert!(listed.contains(&codes[0].as_str()) && listed.contains(&codes[1].as_str()));
    assert!(
        !listed.contains(&codes[2].as_str()),
        "another place's voter is not listed"
    );
    // A PIN login works too; a wrong PIN and an expired link get a clear 401.
    let t = Turnout::new(app.store.clone());
    let pin = t
        .issue_watcher("w2", "P2", LoginKind::Pin, None)
        .await
        .unwrap();
    let c2 = login(&app, json!({"username": "w2", "pin": pin.secret.expose()})).await;
    let (_, v) = as_watcher(&app, &c2, Method::GET, "/api/v1/turnout/me", None).await;
    assert_eq!(v["polling_place"]["code"], "P2");
    let wrong = if pin.secret.expose() == "000000" {
        "000001"
    } else {
        "000000"
    };
    let (s, v) = split(
        app.client
            .post(app.url("/api/v1/turnout/sessions"))
            .json(&json!({"username": "w2", "pin": wrong}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 401);
    assert_error(&v, "unauthenticated");
    let old = t
        .issue_watcher("w3", "P1", LoginKind::Link, Some(-1))
        .await
        .unwrap();
    let (s, v) = split(
        app.client
            .post(app.url("/api/v1/turnout/sessions"))
            .json(&json!({"token": old.secret.expose()}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 401);
    assert_error(&v, "login_expired");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("coordinator"));
}

async fn batch_ingest_over_http(app: TestApp) {
    let (cookie, codes) = setup(&app).await;
    let doc = doc(&app).await;
    let batch = json!({"reports": [
        {"report_id": "r-1", "voter_code": codes[0]},
        {"report_id": "r-1", "voter_code": codes[0]},
        {"report_id": "r-2", "voter_code": codes[2]},
        {"report_id": "r-3", "voter_code": "00000000"},
    ]});
    let (s, v) = as_watcher(
        &app,
        &cookie,
        Method::POST,
        "/api/v1/turnout/reports",
        Some(batch.clone()),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    conforms(&doc, &schema("BatchResult"), &v, "batch");
    let outcomes: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["accepted", "duplicate", "rejected", "rejected"]);
    assert_eq!(v["results"][2]["reason"], "other_polling_place");
    assert_eq!(v["results"][3]["reason"], "unknown_voter");
    // The retry of the whole batch changes nothing.
    let (_, v) = as_watcher(
        &app,
        &cookie,
        Method::POST,
        "/api/v1/turnout/reports",
        Some(batch),
    )
    .await;
    assert_eq!(
        (v["accepted"].as_i64(), v["duplicates"].as_i64()),
        (Some(0), Some(2))
    );
    // The list flushed the voter.
    let (_, v) = as_watcher(&app, &cookie, Method::GET, "/api/v1/turnout/list", None).await;
    let left: Vec<&str> = v["voters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["voter_code"].as_str().unwrap())
        .collect();
    assert_eq!(left, [codes[1].as_str()]);
    // Undo brings them back; staff see the totals.
    let (_, v) = as_watcher(&app, &cookie, Method::POST, "/api/v1/turnout/reports",
        Some(json!({"reports": [{"report_id": "r-4", "voter_code": codes[1]}, {"report_id": "r-1", "voter_code": codes[0], "undo": true}]}))).await;
    assert_eq!(v["accepted"], 2, "{v}");
    let v = app.get_json("/api/v1/turnout/summary").await;
    conforms(&doc, &schema("TurnoutSummary"), &v, "summary");
    assert_eq!(
        (v["universe"].as_i64(), v["voted"].as_i64()),
        (Some(3), Some(1))
    );
    let p1 = &v["precincts"][0];
    assert_eq!(
        (p1["precinct"].as_str(), p1["voted"].as_i64()),
        (Some("FRA-001"), Some(1))
    );
    // Oversized batches and bad shapes get a clear answer.
    let big: Vec<Value> = (0..1001)
        .map(|i| json!({"report_id": format!("b{i}"), "voter_code": codes[1]}))
        .collect();
    let (s, v) = as_watcher(
        &app,
        &cookie,
        Method::POST,
        "/api/v1/turnout/reports",
        Some(json!({"reports": big})),
    )
    .await;
    assert_eq!(s, 422);
    assert_error(&v, "invalid");
    let (s, v) = as_watcher(
        &app,
        &cookie,
        Method::POST,
        "/api/v1/turnout/reports",
        Some(json!({"reports": [{"id": 1}]})),
    )
    .await;
    assert_eq!(s, 422);
    assert_error(&v, "invalid_field");
}

async fn who_may_call_turnout_routes(app: TestApp) {
    let (cookie, codes) = setup(&app).await;
    // No credentials: 401 everywhere.
    for (m, p) in [
        (Method::GET, "/api/v1/turnout/me"),
        (Method::GET, "/api/v1/turnout/list"),
        (Method::POST, "/api/v1/turnout/reports"),
        (Method::GET, "/api/v1/turnout/summary"),
    ] {
        let (s, v) = split(
            app.client
                .request(m, app.url(p))
                .json(&json!({"reports": []}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(s, 401, "{p}");
        assert_error(&v, "unauthenticated");
    }
    // A staff token is not a watcher; a volunteer without a watcher row neither.
    let (s, v) = app
        .send_json(
            Method::POST,
            "/api/v1/turnout/reports",
            json!({"reports": [{"report_id": "z", "voter_code": codes[0]}]}),
        )
        .await;
    assert_eq!(s, 403, "{v}");
    assert_error(&v, "forbidden");
    app.store
        .create_user("vol", password_hash(), Role::Volunteer)
        .await
        .unwrap();
    let r = app
        .client
        .post(app.url("/api/v1/sessions"))
        .json(&json!({"username": "vol", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    let vol = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let (s, _) = as_watcher(&app, &vol, Method::GET, "/api/v1/turnout/me", None).await;
    assert_eq!(s, 403);
    // A watcher cannot read the staff summary.
    let (s, v) = as_watcher(&app, &cookie, Method::GET, "/api/v1/turnout/summary", None).await;
    assert_eq!(s, 403);
    assert_error(&v, "forbidden");
    // Nothing was written by the refused calls.
    assert_eq!(app.store.report_rows().await.unwrap(), 0);
}

async fn a_watcher_session_is_reread_within_its_cache_time(app: TestApp) {
    let (cookie, _) = setup(&app).await;
    let (s, v) = as_watcher(&app, &cookie, Method::GET, "/api/v1/turnout/me", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["polling_place"]["code"], "P1");
    // Re-issued elsewhere (the command line) to another place: this node learns it
    // within the cache time, whatever it remembered.
    Turnout::new(app.store.clone())
        .issue_watcher("w1", "P2", LoginKind::Link, None)
        .await
        .unwrap();
    tokio::time::sleep(
        narwhal_http::turnout::WATCHER_LOGIN_TTL + std::time::Duration::from_millis(50),
    )
    .await;
    let (s, v) = as_watcher(&app, &cookie, Method::GET, "/api/v1/turnout/me", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["polling_place"]["code"], "P2");
    // Logging out on this node ends the session at once.
    let r = app
        .client
        .delete(app.url("/api/v1/sessions"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (s, v) = as_watcher(&app, &cookie, Method::GET, "/api/v1/turnout/me", None).await;
    assert_eq!(s, 401, "{v}");
    assert_error(&v, "unauthenticated");
}
