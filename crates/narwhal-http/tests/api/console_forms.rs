//! The console's forms: lists, person edit/merge/add-to-list, segments, uploads,
//! import progress and "Load more" paging. Each form also refuses a forged CSRF token.

use crate::helpers::{TestApp, ADMIN_PASSWORD};
use crate::uploads::{run_queued_job, MAPPING};
use reqwest::Method;
use serde_json::json;

crate::api_tests!(
    console_lists_people_and_segments,
    console_upload_starts_an_import,
    console_pages_with_load_more
);

/// A logged-in console session.
pub(crate) struct Console<'a> {
    app: &'a TestApp,
    cookie: String,
    csrf: String,
}

impl<'a> Console<'a> {
    pub(crate) async fn login(app: &'a TestApp) -> Console<'a> {
        let r = app
            .client
            .post(app.url("/login"))
            .form(&[("username", "admin"), ("password", ADMIN_PASSWORD)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
        let cookie = r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let mut c = Console {
            app,
            cookie,
            csrf: String::new(),
        };
        let (_, html) = c.get("/lists").await;
        c.csrf = html
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap()
            .to_string();
        c
    }

    /// GETs a page; `/` escaped as `&#x2f;` (minijinja does, in values) is read back.
    pub(crate) async fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .app
            .client
            .get(self.app.url(path))
            .header("cookie", &self.cookie)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.text().await.unwrap().replace("&#x2f;", "/"))
    }

    /// Posts a form with the session's CSRF token; returns status, Location and body.
    pub(crate) async fn post(&self, path: &str, fields: &[(&str, &str)]) -> (u16, String, String) {
        let mut form: Vec<(&str, &str)> = vec![("csrf", self.csrf.as_str())];
        form.extend_from_slice(fields);
        self.post_raw(path, &form).await
    }

    pub(crate) async fn post_raw(
        &self,
        path: &str,
        form: &[(&str, &str)],
    ) -> (u16, String, String) {
        let r = self
            .app
            .client
            .post(self.app.url(path))
            .header("cookie", &self.cookie)
            .form(form)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let loc = r
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (status, loc, r.text().await.unwrap())
    }
}

async fn console_lists_people_and_segments(app: TestApp) {
    let c = Console::login(&app).await;

    // A list, created from the lists page.
    let (s, loc, _) = c
        .post("/lists", &[("name", "Door knockers"), ("description", "")])
        .await;
    assert_eq!(s, 303);
    let list_id: i64 = loc.strip_prefix("/lists/").unwrap().parse().unwrap();
    let v = app.get_json(&format!("/api/v1/lists/{list_id}")).await;
    assert_eq!(v["name"], "Door knockers");
    let (s, _, html) = c.post("/lists", &[("name", "  ")]).await;
    assert_eq!(s, 422);
    assert!(html.contains("a list name is 1 to 200 characters"));
    let (s, _, _) = c
        .post_raw("/lists", &[("csrf", "forged"), ("name", "Forged")])
        .await;
    assert_eq!(s, 403);
    assert_eq!(
        app.get_json("/api/v1/lists").await["lists"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // A person, added to it from their page.
    let ada = app
        .person(json!({"first_name": "Ada", "emails": ["ada@example.org"], "tags": ["old"]}))
        .await;
    let (s, _) = c.get(&format!("/people/{ada}")).await;
    assert_eq!(s, 200);
    let (s, loc, _) = c
        .post(
            &format!("/people/{ada}/lists"),
            &[("list", list_id.to_string().as_str())],
        )
        .await;
    assert_eq!((s, loc.as_str()), (303, format!("/people/{ada}").as_str()));
    let v = app
        .get_json(&format!("/api/v1/lists/{list_id}/members"))
        .await;
    assert_eq!(v["people"][0]["id"], ada);

    // Edited through the hub.
    let (s, _, html) = c
        .post(
            &format!("/people/{ada}/edit"),
            &[
                ("first_name", "Adele"),
                ("last_name", "Lovelace"),
                ("add_email", "adele@example.org"),
                ("add_phone", "(614) 555-0101"),
                ("add_tags", "donor, volunteer"),
                ("remove_tag", "old"),
                ("email_consent", "subscribed"),
                ("sms_consent", "unknown"),
            ],
        )
        .await;
    assert_eq!(s, 303, "{html}");
    let p = &app.get_json(&format!("/api/v1/people/{ada}")).await["person"];
    assert_eq!(p["first_name"], "Adele");
    assert_eq!(p["last_name"], "Lovelace");
    assert!(p["emails"]
        .as_array()
        .unwrap()
        .contains(&json!("adele@example.org")));
    assert_eq!(p["phones"].as_array().unwrap().len(), 1, "{p}");
    let mut tags: Vec<_> = p["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    tags.sort();
    assert_eq!(tags, ["donor", "volunteer"]);
    assert_eq!(p["email_consent"], "subscribed");
    // A bad value comes back inline, escaped, and changes nothing.
    let (s, _, html) = c
        .post(
            &format!("/people/{ada}/edit"),
            &[("first_name", "Zed"), ("add_email", "<b>not an email")],
        )
        .await;
    assert_eq!(s, 422);
    assert!(html.contains("id=\"form-error\""), "{html}");
    assert!(!html.contains("<b>not"));
    let (s, _, _) = c
        .post_raw(
            &format!("/people/{ada}/edit"),
            &[("csrf", "forged"), ("first_name", "Forged")],
        )
        .await;
    assert_eq!(s, 403);
    assert_eq!(
        app.get_json(&format!("/api/v1/people/{ada}")).await["person"]["first_name"],
        "Adele"
    );

    // Merged from the person page.
    let twin = app
        .person(json!({"first_name": "A.", "emails": ["a.lovelace@example.org"]}))
        .await;
    let (s, _, html) = c
        .post(
            &format!("/people/{ada}/merge"),
            &[("other", "999999"), ("reason", "x")],
        )
        .await;
    assert_eq!(s, 404, "{html}");
    assert!(html.contains("not found"));
    let (s, _, html) = c
        .post(
            &format!("/people/{ada}/merge"),
            &[("other", &ada.to_string()), ("reason", "x")],
        )
        .await;
    assert_eq!(s, 422, "{html}");
    let (s, loc, _) = c
        .post(
            &format!("/people/{ada}/merge"),
            &[("other", &twin.to_string()), ("reason", "same person")],
        )
        .await;
    assert_eq!((s, loc), (303, format!("/people/{ada}")));
    let v = app.get_json(&format!("/api/v1/people/{ada}")).await;
    assert_eq!(v["merges"][0]["merged_id"], twin, "{v}");
    assert_eq!(v["merges"][0]["reason"], "same person");
    assert!(v["person"]["emails"]
        .as_array()
        .unwrap()
        .contains(&json!("a.lovelace@example.org")));

    // Segments: preview, inline errors, save.
    let filter = r#"{"tag":"donor"}"#;
    let (s, _, html) = c
        .post(
            "/segments",
            &[
                ("name", "Donors"),
                ("filter", filter),
                ("action", "preview"),
            ],
        )
        .await;
    assert_eq!(s, 200);
    assert!(html.contains("Matches <strong>1</strong> people"), "{html}");
    assert!(app.get_json("/api/v1/segments").await["segments"]
        .as_array()
        .unwrap()
        .is_empty());
    let (s, _, html) = c
        .post(
            "/segments",
            &[
                ("name", "Bad"),
                ("filter", r#"{"shoe":"<x>"}"#),
                ("action", "save"),
            ],
        )
        .await;
    assert_eq!(s, 422);
    assert!(html.contains("the filter is not valid"), "{html}");
    assert!(
        html.contains("{&quot;shoe&quot;:&quot;&lt;x&gt;&quot;}"),
        "the typed filter is kept, escaped"
    );
    let (s, _, html) = c
        .post(
            "/segments",
            &[("name", "Bad"), ("filter", "{"), ("action", "save")],
        )
        .await;
    assert_eq!(s, 422);
    assert!(html.contains("not valid JSON"));
    let (s, loc, _) = c
        .post(
            "/segments",
            &[("name", "Donors"), ("filter", filter), ("action", "save")],
        )
        .await;
    assert_eq!(s, 303);
    let seg: i64 = loc.strip_prefix("/segments/").unwrap().parse().unwrap();
    let v = app.get_json(&format!("/api/v1/segments/{seg}/count")).await;
    assert_eq!(v["count"], 1);
    let (s, html) = c.get(&format!("/segments/{seg}")).await;
    assert_eq!(s, 200);
    assert!(html.contains(&format!("/people/{ada}")));
}

/// A multipart body with the fields in order; the last one is the file.
fn multipart(fields: &[(&str, &str)], file: (&str, &str)) -> (String, Vec<u8>) {
    let boundary = "narwhal-test-boundary-7d1f";
    let mut body = String::new();
    for (k, v) in fields {
        body.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
        ));
    }
    body.push_str(&format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{}\"\r\nContent-Type: text/csv\r\n\r\n{}\r\n--{boundary}--\r\n",
        file.0, file.1
    ));
    (
        format!("multipart/form-data; boundary={boundary}"),
        body.into_bytes(),
    )
}

async fn console_upload_starts_an_import(app: TestApp) {
    let c = Console::login(&app).await;
    let upload = |fields: Vec<(&'static str, String)>, file: (&'static str, &'static str)| {
        let f: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (ct, body) = multipart(&f, file);
        app.client
            .post(app.url("/imports/upload"))
            .header("cookie", &c.cookie)
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let csv = "FIRST,EMAIL\nAda,ada@example.org\nBob,not-an-email\n";
    let files = || std::fs::read_dir(app.upload.path()).unwrap().count();

    // No CSRF token, or a bad mapping: nothing is written.
    let r = upload(
        vec![
            ("csrf", "forged".into()),
            ("source", "s".into()),
            ("mapping", MAPPING.into()),
        ],
        ("people.csv", csv),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 403);
    let r = upload(
        vec![
            ("csrf", c.csrf.clone()),
            ("source", "s".into()),
            ("mapping", "[fields]\nshoe = 1".into()),
        ],
        ("people.csv", csv),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("role=\"alert\""));
    assert_eq!(files(), 0);

    let r = upload(
        vec![
            ("csrf", c.csrf.clone()),
            ("source", "door list".into()),
            ("mapping", MAPPING.into()),
        ],
        ("../My List.csv", csv),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 303);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let id: i64 = loc.strip_prefix("/imports/").unwrap().parse().unwrap();
    let names: Vec<String> = std::fs::read_dir(app.upload.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 1);
    assert!(names[0].ends_with("-My_List.csv"), "{names:?}");
    assert_eq!(
        std::fs::read_to_string(app.upload.path().join(&names[0])).unwrap(),
        csv
    );
    let v = app.get_json(&format!("/api/v1/imports/{id}")).await;
    assert_eq!(v["source_name"], "door list");

    // Queued: the page refreshes itself.
    let (s, html) = c.get(&loc).await;
    assert_eq!(s, 200);
    assert!(html.contains("<meta http-equiv=\"refresh\" content=\"2\">"));
    assert!(html.contains("queued"));
    run_queued_job(&app).await;
    let (_, html) = c.get(&loc).await;
    assert!(!html.contains("http-equiv=\"refresh\""), "done: no refresh");
    assert!(html.contains("<dd id=\"inserted\">1</dd>"), "{html}");
    assert!(html.contains("<dd id=\"rejected\">1"), "{html}");
    assert!(html.contains("<span id=\"percent\">100%</span>"), "{html}");
    let link = format!("/api/v1/imports/{id}/rejects.csv");
    assert!(html.contains(&link));
    let (s, body) = c.get(&link).await;
    assert_eq!(s, 200, "the console's session may download it");
    assert!(body.contains("not-an-email"));
    let (_, html) = c.get("/imports").await;
    assert!(html.contains(&link));
}

async fn console_pages_with_load_more(app: TestApp) {
    let c = Console::login(&app).await;
    let (_, v) = app
        .send_json(Method::POST, "/api/v1/lists", json!({"name": "All"}))
        .await;
    let list = v["id"].as_i64().unwrap();
    let mut ids = Vec::new();
    for i in 0..51 {
        ids.push(
            app.person(
                json!({"first_name": "Pager", "last_name": format!("N{i:02}"),
                "emails": [format!("pager{i}@example.org")], "tags": ["paged"]}),
            )
            .await,
        );
    }
    let (s, _) = app
        .send_json(
            Method::POST,
            &format!("/api/v1/lists/{list}/members"),
            json!({"people": ids}),
        )
        .await;
    assert_eq!(s, 200);
    let (_, v) = app
        .send_json(
            Method::POST,
            "/api/v1/segments",
            json!({"name": "Paged", "filter": {"tag": "paged"}}),
        )
        .await;
    let seg = v["id"].as_i64().unwrap();
    let last = *ids.last().unwrap();
    for first in [
        "/people?q=pager",
        &format!("/lists/{list}"),
        &format!("/segments/{seg}"),
    ] {
        let (s, html) = c.get(first).await;
        assert_eq!(s, 200, "{first}");
        assert!(
            !html.contains(&format!("/people/{last}\"")),
            "{first}: page one stops at 50"
        );
        let more = html
            .split("class=\"more\" href=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or_else(|| panic!("{first}: no Load more"))
            .replace("&amp;", "&");
        assert!(more.contains(&format!("after={}", ids[49])), "{more}");
        let (s, html) = c.get(&more).await;
        assert_eq!(s, 200, "{more}");
        assert!(
            html.contains(&format!("/people/{last}\"")),
            "{more}: page two"
        );
        assert!(!html.contains(&format!("/people/{}\"", ids[0])), "{more}");
        assert!(!html.contains("class=\"more\""), "{more}: nothing after");
    }
}
