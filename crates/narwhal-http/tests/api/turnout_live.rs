//! Live turnout over HTTP: the dashboard API and its server-sent events (a report on
//! another node seen within 1 s), a watcher's live stream, turfs and call lists that
//! shed voters as they vote with their exports, the expected curve, early-vote files.

use crate::helpers::{assert_error, split, TestApp};
use crate::turnout::setup;
use narwhal_http::{AppState, HttpConfig};
use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

crate::api_tests!(
    a_report_on_another_node_reaches_the_stream_within_a_second,
    watchers_have_a_live_stream_of_their_place,
    lists_shed_voters_and_export,
    curve_and_dashboard,
    early_vote_over_the_api,
);

/// Reads server-sent events from a streaming response.
struct Events {
    r: reqwest::Response,
    buf: String,
}

impl Events {
    async fn open(req: reqwest::RequestBuilder) -> Self {
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        Self {
            r,
            buf: String::new(),
        }
    }

    /// The next event's name and JSON data (comments and keep-alives skipped).
    async fn next(&mut self) -> (String, Value) {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut name = String::new();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if !data.is_empty() {
                    return (name, serde_json::from_str(&data).unwrap());
                }
                continue;
            }
            let chunk = self.r.chunk().await.unwrap().expect("the stream ended");
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

async fn report(app: &TestApp, base: &str, cookie: &str, rid: &str, code: &str) {
    let r = app
        .client
        .post(format!("{base}/api/v1/turnout/reports"))
        .header("cookie", cookie)
        .json(&json!({"reports": [{"report_id": rid, "voter_code": code}]}))
        .send()
        .await
        .unwrap();
    let (s, v) = split(r).await;
    assert_eq!((s, v["accepted"].as_u64()), (200, Some(1)), "{v}");
}

async fn a_report_on_another_node_reaches_the_stream_within_a_second(app: TestApp) {
    let (cookie, codes) = setup(&app).await;
    // A second node on the same database, with its own pool and live figures.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other = format!("http://{}", listener.local_addr().unwrap());
    let state = AppState::new(
        app.store.dedicated(3),
        HttpConfig {
            upload_dir: app.upload.path().to_path_buf(),
            ..HttpConfig::default()
        },
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let node = tokio::spawn(narwhal_http::serve(listener, state, async move {
        let _ = stopped.await;
    }));
    let mut ev = Events::open(app.req(Method::GET, "/api/v1/turnout/live")).await;
    let (name, first) = ev.next().await;
    assert_eq!(name, "turnout");
    assert_eq!(first["state"]["universe"], 3);
    assert_eq!(first["state"]["voted"], 0);
    // The watcher's report goes to the other node.
    let started = Instant::now();
    report(&app, &other, &cookie, "n2-1", &codes[0]).await;
    let seen = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            let (_, d) = ev.next().await;
            if d["state"]["voted"] == 1 {
                return d;
            }
        }
    })
    .await
    .expect("the stream shows the report within 1 s");
    assert!(started.elapsed() < Duration::from_secs(1));
    let p1 = seen["polling_places"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["polling_place"] == "P1")
        .unwrap();
    assert_eq!(
        (p1["voted"].as_i64(), p1["universe"].as_i64()),
        (Some(1), Some(2))
    );
    // The API serves the same figures.
    let d = app.get_json("/api/v1/turnout/dashboard").await;
    assert_eq!(d["state"], seen["state"]);
    let _ = stop.send(());
    node.await.unwrap().unwrap();
}

async fn watchers_have_a_live_stream_of_their_place(app: TestApp) {
    let (cookie, codes) = setup(&app).await;
    let mut ev = Events::open(
        app.client
            .get(app.url("/api/v1/turnout/me/live"))
            .header("cookie", &cookie),
    )
    .await;
    let (name, first) = ev.next().await;
    assert_eq!(name, "place");
    assert_eq!(
        first,
        json!({"polling_place": "P1", "universe": 2, "voted": 0, "remaining": 2})
    );
    report(&app, &app.base, &cookie, "m-1", &codes[1]).await;
    let (_, next) = tokio::time::timeout(Duration::from_secs(1), ev.next())
        .await
        .unwrap();
    assert_eq!(next["remaining"], 1);
    // Staff are no watchers.
    let (s, v) = split(
        app.req(Method::GET, "/api/v1/turnout/me/live")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 403);
    assert_error(&v, "forbidden");
}

async fn lists_shed_voters_and_export(app: TestApp) {
    let (cookie, codes) = setup(&app).await;
    let (s, turf) = app
        .send_json(
            Method::POST,
            "/api/v1/turnout/lists",
            json!({"name": "P1 doors", "kind": "turf", "polling_place": "P1"}),
        )
        .await;
    assert_eq!(s, 201, "{turf}");
    assert_eq!(
        (turf["members"].as_i64(), turf["remaining"].as_i64()),
        (Some(2), Some(2))
    );
    let (s, calls) = app
        .send_json(
            Method::POST,
            "/api/v1/turnout/lists",
            json!({"name": "Everyone", "kind": "calls"}),
        )
        .await;
    assert_eq!(s, 201);
    let everyone: Vec<i64> = app
        .get_json(&format!("/api/v1/turnout/lists/{}", turf["id"]))
        .await["voters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["person_id"].as_i64().unwrap())
        .collect();
    let (s, v) = app
        .send_json(
            Method::POST,
            &format!("/api/v1/turnout/lists/{}/members", calls["id"]),
            json!({"person_ids": everyone}),
        )
        .await;
    assert_eq!((s, v["added"].as_i64()), (200, Some(2)));
    // Bad input: two sources, an unknown place, a taken name.
    for (body, code) in [
        (
            json!({"name": "x", "kind": "turf", "polling_place": "P1", "segment": 1}),
            "invalid",
        ),
        (
            json!({"name": "y", "kind": "turf", "polling_place": "NOPE"}),
            "not_found",
        ),
        (json!({"name": "P1 doors", "kind": "turf"}), "invalid"),
    ] {
        let (s, v) = app
            .send_json(Method::POST, "/api/v1/turnout/lists", body)
            .await;
        assert!(s == 400 || s == 404 || s == 422, "{s} {v}");
        assert_error(&v, code);
    }
    // A report takes the voter off both lists at once.
    report(&app, &app.base, &cookie, "l-1", &codes[0]).await;
    let page = app
        .get_json(&format!("/api/v1/turnout/lists/{}", turf["id"]))
        .await;
    assert_eq!(page["list"]["remaining"], 1);
    assert_eq!(page["voters"].as_array().unwrap().len(), 1);
    assert_eq!(page["voters"][0]["voter_code"], codes[1].as_str());
    let lists = app.get_json("/api/v1/turnout/lists").await;
    assert!(
        lists["lists"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["remaining"] == 1),
        "{lists}"
    );
    let r = app
        .req(
            Method::GET,
            &format!("/api/v1/turnout/lists/{}/export.csv", turf["id"]),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let csv = r.text().await.unwrap();
    assert!(
        csv.starts_with("voter_code,first_name,last_name,address"),
        "{csv}"
    );
    assert_eq!(csv.lines().count(), 2);
    assert!(csv.contains(&codes[1]) && !csv.contains(&codes[0]));
    // The console pages render for staff.
    let login = app
        .client
        .post(app.url("/api/v1/sessions"))
        .json(&json!({"username": "admin", "password": crate::helpers::ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    let staff = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    for path in [
        "/turnout",
        "/turnout/lists",
        &format!("/turnout/lists/{}", turf["id"]),
        "/turnout/early-vote",
    ] {
        let r = app
            .client
            .get(app.url(path))
            .header("cookie", &staff)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let html = r.text().await.unwrap();
        assert!(html.contains("<h1>"), "{path}");
    }
}

async fn curve_and_dashboard(app: TestApp) {
    let (cookie, codes) = setup(&app).await;
    let now = narwhal_store::now_ms();
    // Polls opened 1.5 hours ago; 20% expected after the first hour, 40% after two.
    let curve = json!({"opens_at": now - 5_400_000, "hourly_pct": [20.0, 40.0, 60.0]});
    let (s, v) = app
        .send_json(Method::PUT, "/api/v1/turnout/curve", curve.clone())
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(app.get_json("/api/v1/turnout/curve").await, curve);
    for bad in [
        json!({"opens_at": now, "hourly_pct": [30.0, 20.0]}),
        json!({"opens_at": now, "hourly_pct": []}),
        json!({"opens_at": now, "hourly_pct": [120.0]}),
    ] {
        let (s, v) = app
            .send_json(Method::PUT, "/api/v1/turnout/curve", bad)
            .await;
        assert_eq!(s, 422, "{v}");
        assert_error(&v, "invalid");
    }
    report(&app, &app.base, &cookie, "c-1", &codes[0]).await;
    let d = app.get_json("/api/v1/turnout/dashboard").await;
    assert_eq!(d["state"]["universe"], 3);
    assert_eq!(d["state"]["voted"], 1);
    // 30% of 3 expected now, rounded: 1; the series covers hours 0 and 1.
    assert!(
        (d["expected_pct"].as_f64().unwrap() - 30.0).abs() < 0.2,
        "{d}"
    );
    assert_eq!(d["state"]["expected"], 1);
    assert_eq!(d["state"]["series"], json!([0, 1]));
    let fr = &d["counties"][0];
    assert_eq!(
        (fr["county"].as_str(), fr["voted"].as_i64()),
        (Some("FRANKLIN"), Some(1))
    );
    assert_eq!(d["precincts"].as_array().unwrap().len(), 2);
    // Needs a scope: a token without lists:read is refused.
    let t = app.token_with(&[narwhal_domain::Scope::PeopleRead]).await;
    let r = app
        .client
        .get(app.url("/api/v1/turnout/dashboard"))
        .bearer_auth(t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

async fn early_vote_over_the_api(app: TestApp) {
    let (_cookie, _codes) = setup(&app).await;
    let file = "OH_ID,RETURNED\nOH-0,2024-10-30\nOH-2,2024-10-31\nOH-404,2024-10-31\n,2024-10-31\n";
    let r = app
        .req(Method::PUT, "/api/v1/uploads/absentee.csv")
        .body(file)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let mapping = "[source]\nname = \"oh-absentee\"\n[columns]\nvoter_id = \"OH_ID\"\nvoted_on = \"RETURNED\"\n";
    let (s, v) = app
        .send_json(
            Method::POST,
            "/api/v1/turnout/early-vote",
            json!({"path": "absentee.csv", "mapping": mapping}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (
            v["rows"].as_u64(),
            v["reported"].as_u64(),
            v["unknown_voter"].as_u64(),
            v["rejected"].as_u64()
        ),
        (Some(4), Some(2), Some(1), Some(1)),
        "{v}"
    );
    let (s, v) = app
        .send_json(
            Method::POST,
            "/api/v1/turnout/early-vote",
            json!({"path": "absentee.csv", "mapping": mapping}),
        )
        .await;
    assert_eq!(
        (s, v["reported"].as_u64(), v["already"].as_u64()),
        (200, Some(0), Some(2))
    );
    let d = app.get_json("/api/v1/turnout/dashboard").await;
    assert_eq!(d["state"]["voted"], 2);
    // A wrong mapping names the key; a path outside the upload directory is refused.
    let (s, v) = app
        .send_json(
            Method::POST,
            "/api/v1/turnout/early-vote",
            json!({"path": "absentee.csv", "mapping": "[source]\nname='x'\n[columns]\nvoter='V'\n"}),
        )
        .await;
    assert_eq!(s, 422);
    assert_error(&v, "invalid_mapping");
    assert!(v["error"]["message"].as_str().unwrap().contains("voter"));
    let (s, _) = app
        .send_json(
            Method::POST,
            "/api/v1/turnout/early-vote",
            json!({"path": "../../etc/passwd", "mapping": mapping}),
        )
        .await;
    assert_eq!(s, 422);
}
