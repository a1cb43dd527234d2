//! Blasts through the API: templates refused with line and column, a blast sent by the
//! served worker into the fake SES (checked against the fake's own ledger), one-click
//! unsubscribe without a cookie, forged tokens, and scopes.

use crate::helpers::{assert_error, split, TestApp};
use narwhal_domain::{PersonId, Scope};
use narwhal_fakes::{FakeAccount, FakeSes};
use narwhal_mail::accounts::{AccountSettings, MailSettings};
use narwhal_store::Backend;
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

crate::api_tests!(
    a_broken_template_is_refused_with_line_and_column,
    one_click_unsubscribe_needs_no_cookie_and_forged_tokens_change_nothing,
    blast_routes_need_their_scopes,
    a_blast_to_nobody_is_refused_and_one_to_somebody_gets_an_estimate,
);

pub(crate) async fn a_list_of(app: &TestApp, people: &[Value]) -> i64 {
    // List names are unique: the first is "GOTV", later ones are numbered.
    let n = app.get_json("/api/v1/lists").await["lists"]
        .as_array()
        .map_or(0, Vec::len);
    let name = if n == 0 {
        "GOTV".to_string()
    } else {
        format!("GOTV {}", n + 1)
    };
    let (s, v) = app
        .send_json(Method::POST, "/api/v1/lists", json!({ "name": name }))
        .await;
    assert_eq!(s, 201, "{v}");
    let list = v["id"].as_i64().unwrap();
    let mut ids = Vec::new();
    for p in people {
        ids.push(app.person(p.clone()).await);
    }
    let (s, v) = app
        .send_json(
            Method::POST,
            &format!("/api/v1/lists/{list}/members"),
            json!({ "people": ids }),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    list
}

async fn a_broken_template_is_refused_with_line_and_column(app: TestApp) {
    let list = a_list_of(&app, &[json!({"emails": ["a@example.com"]})]).await;
    let (s, v) = app
        .send_json(
            Method::POST,
            "/api/v1/blasts",
            json!({"name": "x", "target": {"list": list}, "subject": "Hi",
                   "text": "Line one\nHello {{ first_name ", "from": "team@campaign.example"}),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    assert_error(&v, "invalid_template");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(m.starts_with("text: line 2, column"), "{m}");
    // Nothing was created.
    assert_eq!(app.get_json("/api/v1/blasts").await["blasts"], json!([]));
    // An unknown variable is refused too, naming its part.
    let (s, v) = app
        .send_json(
            Method::POST,
            "/api/v1/blasts",
            json!({"name": "x", "target": {"list": list}, "subject": "Hi {{ favourite_colour }}",
                   "text": "ok", "from": "team@campaign.example"}),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("subject: line 1"),
        "{v}"
    );
    app.stop().await;
}

async fn one_click_unsubscribe_needs_no_cookie_and_forged_tokens_change_nothing(app: TestApp) {
    let person = app
        .person(json!({"emails": ["u@example.com"], "email_consent": "subscribed"}))
        .await;
    let signer = &app.mail.sender.compose().signer;
    let token = signer.token(7, person);
    // A forged token: another person's id under this token's tag.
    let forged = {
        let other = signer.token(7, person + 1);
        format!("{}{}", &other[..22], &token[22..])
    };
    for bad in [forged.as_str(), "nonsense", &format!("{}A", &token[..42])] {
        let r = app
            .client
            .post(app.url(&format!("/u/{bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{bad}");
        let r = app
            .client
            .get(app.url(&format!("/u/{bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
    let consent = |v: Value| v["person"]["email_consent"].as_str().unwrap().to_string();
    let path = format!("/api/v1/people/{person}");
    assert_eq!(consent(app.get_json(&path).await), "subscribed");
    // The page shows a button and changes nothing.
    let r = app
        .client
        .get(app.url(&format!("/u/{token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    assert!(page.contains("<button") && page.contains(&format!("action=\"/u/{token}\"")));
    assert_eq!(consent(app.get_json(&path).await), "subscribed");
    // RFC 8058: a bare POST with the one-click body, no cookie, no credentials.
    let r = app
        .client
        .post(app.url(&format!("/u/{token}")))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let detail = app.get_json(&path).await;
    assert_eq!(consent(detail.clone()), "unsubscribed");
    assert!(
        detail["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "person.unsubscribe"),
        "{detail}"
    );
    // Again: still 200, nothing new.
    let r = app
        .client
        .post(app.url(&format!("/u/{token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    app.stop().await;
}

async fn blast_routes_need_their_scopes(app: TestApp) {
    let body = json!({"name": "x", "target": {"list": 1}, "subject": "Hi", "text": "t"});
    let r = app
        .client
        .post(app.url("/api/v1/blasts"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let (s, v) = split(r).await;
    assert_eq!(s, 401, "{v}");
    let reader = app.token_with(&[Scope::MailRead]).await;
    let r = app
        .client
        .post(app.url("/api/v1/blasts"))
        .bearer_auth(&reader)
        .json(&body)
        .send()
        .await
        .unwrap();
    let (s, v) = split(r).await;
    assert_eq!(s, 403, "{v}");
    assert_error(&v, "forbidden");
    let r = app
        .client
        .get(app.url("/api/v1/blasts"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let people_only = app
        .token_with(&[Scope::PeopleRead, Scope::ListsWrite])
        .await;
    for (m, p) in [
        (Method::GET, "/api/v1/blasts"),
        (Method::GET, "/api/v1/suppressions"),
        (Method::POST, "/api/v1/blasts/1/pause"),
    ] {
        let r = app
            .client
            .request(m, app.url(p))
            .bearer_auth(&people_only)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{p}");
    }
    app.stop().await;
}

// The end-to-end send runs with its own app (the fake SES and the worker).

const KEY: &str = "AKIDBLASTTEST";
const SECRET: &str = "blast-test-secret-access-key";

fn env(name: &str) -> Option<String> {
    match name {
        "TEST_SES_KEY" => Some(KEY.into()),
        "TEST_SES_SECRET" => Some(SECRET.into()),
        _ => None,
    }
}

fn settings(endpoint: String) -> MailSettings {
    MailSettings {
        from_address: Some("team@campaign.example".into()),
        sender_name: Some("Friends of Ada".into()),
        postal_address: Some("PO Box 1, Columbus OH 43215".into()),
        accounts: vec![AccountSettings {
            kind: "ses".into(),
            name: "ses-test".into(),
            weight: Some(1),
            throttle: Some("200/s".into()),
            region: Some("us-east-1".into()),
            endpoint: Some(endpoint),
            access_key_id_env: Some("TEST_SES_KEY".into()),
            secret_access_key_env: Some("TEST_SES_SECRET".into()),
            host: None,
            port: None,
            username: None,
            password_env: None,
            pool_size: None,
            max_per_connection: None,
            dir: None,
            ..Default::default()
        }],
        ..Default::default()
    }
}

async fn sent_by_the_served_worker(backend: Backend) {
    let fake = FakeSes::start("us-east-1", vec![FakeAccount::new(KEY, SECRET)])
        .await
        .unwrap();
    let Some(app) = TestApp::spawn_mail(backend, settings(fake.endpoint()), env).await else {
        return;
    };
    let mut people = Vec::new();
    let mut expected = BTreeSet::new();
    for i in 0..25 {
        people
            .push(json!({"emails": [format!("v{i}@example.com")], "first_name": format!("V{i}")}));
        expected.insert(format!("v{i}@example.com"));
    }
    people.push(json!({"emails": ["gone@example.com"], "email_consent": "unsubscribed"}));
    people.push(json!({"phones": ["+16145550199"]}));
    let list = a_list_of(&app, &people).await;
    let (s, v) = app
        .send_json(
            Method::POST,
            "/api/v1/blasts",
            json!({"name": "GOTV", "target": {"list": list},
                   "subject": "Hi {{ first_name | default('friend') }}",
                   "text": "Polls close at 7:30pm."}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_i64().unwrap();
    // Preview for one person renders their name and the footer.
    let first = app.get_json(&format!("/api/v1/lists/{list}/members")).await["people"][0]["id"]
        .as_i64()
        .unwrap();
    let (s, v) = app
        .send_json(
            Method::POST,
            &format!("/api/v1/blasts/{id}/preview"),
            json!({"person_id": first}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["subject"], "Hi V0");
    assert!(v["text"].as_str().unwrap().contains("PO Box 1"), "{v}");
    assert!(fake.ledger().is_empty(), "a preview sends nothing");
    let (s, v) = app
        .send_json(
            Method::POST,
            &format!("/api/v1/blasts/{id}/schedule"),
            json!({}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        let v = app.get_json(&format!("/api/v1/blasts/{id}")).await;
        if v["state"] == "done" {
            break v;
        }
        assert!(tokio::time::Instant::now() < deadline, "not done: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let received: Vec<String> = fake.ledger().into_iter().map(|a| a.destination).collect();
    let got: BTreeSet<String> = received.iter().cloned().collect();
    assert_eq!(received.len(), got.len(), "no duplicates");
    assert_eq!(got, expected);
    assert_eq!(status["sent"], json!(received.len()));
    assert_eq!(status["total"], 25);
    assert_eq!(
        (
            status["failed"].as_i64(),
            status["pending"].as_i64(),
            status["throttled_waiting"].as_i64()
        ),
        (Some(0), Some(0), Some(0))
    );
    assert_eq!(status["eta_seconds"], 0);
    let f = app.get_json(&format!("/api/v1/blasts/{id}/failures")).await;
    assert_eq!(f["failures"], json!([]));
    // A finished blast cannot be paused; the error says why.
    let (s, v) = app
        .send_json(
            Method::POST,
            &format!("/api/v1/blasts/{id}/pause"),
            json!({}),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    let _ = PersonId(first);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_blast_sent_by_the_served_worker() {
    sent_by_the_served_worker(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_blast_sent_by_the_served_worker() {
    sent_by_the_served_worker(Backend::Postgres).await;
}

async fn a_blast_to_nobody_is_refused_and_one_to_somebody_gets_an_estimate(app: TestApp) {
    // Everyone on the list is out of reach: unsubscribed, bounced, or without an address.
    let nobody = a_list_of(
        &app,
        &[
            json!({"emails": ["gone@example.com"], "email_consent": "unsubscribed"}),
            json!({"emails": ["dead@example.com"], "email_consent": "bounced"}),
            json!({"phones": ["+15555550123"]}),
        ],
    )
    .await;
    let create = |list: i64| {
        json!({"name": "GOTV", "target": {"list": list}, "subject": "Hi",
               "text": "Vote", "from": "team@campaign.example"})
    };
    let (s, v) = app
        .send_json(Method::POST, "/api/v1/blasts", create(nobody))
        .await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_i64().unwrap();
    let (s, v) = app
        .send_json(
            Method::POST,
            &format!("/api/v1/blasts/{id}/schedule"),
            json!({}),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    assert_error(&v, "empty_audience");
    // Nothing was scheduled: the blast is still a draft.
    let v = app.get_json(&format!("/api/v1/blasts/{id}")).await;
    assert_eq!(v["state"], "draft", "{v}");
    // Two people who can be emailed: the answer says so, with an estimate.
    let some = a_list_of(
        &app,
        &[
            json!({"emails": ["a@example.com"]}),
            json!({"emails": ["b@example.com"]}),
            json!({"emails": ["c@example.com"], "email_consent": "complained"}),
        ],
    )
    .await;
    let (_, v) = app
        .send_json(Method::POST, "/api/v1/blasts", create(some))
        .await;
    let id = v["id"].as_i64().unwrap();
    let (s, v) = app
        .send_json(
            Method::POST,
            &format!("/api/v1/blasts/{id}/schedule"),
            json!({}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["audience"], 2, "{v}");
    assert_eq!(v["state"], "scheduled", "{v}");
    app.stop().await;
}
