use crate::helpers::{assert_error, split, TestApp};
use narwhal_domain::{ImportId, Scope};
use narwhal_store::Backend;
use reqwest::Method;
use serde_json::json;

crate::api_tests!(upload_import_and_rejects, upload_names_and_scopes);

pub const MAPPING: &str =
    "[source]\nname = \"test-file\"\n\n[fields]\nfirst_name = \"FIRST\"\nemail = \"EMAIL\"\n";

/// Runs the queued import job here, now, as a worker would.
pub async fn run_queued_job(app: &TestApp) {
    let job = app
        .store
        .claim_job(narwhal_people::worker::KINDS, "test-node", 60_000)
        .await
        .unwrap()
        .expect("a queued job");
    let hub = narwhal_people::Hub::new(app.store.clone());
    let result = narwhal_people::worker::run_job(&hub, &job, "test-node", 60_000).await;
    assert!(result.is_ok(), "{result:?}");
}

async fn upload_import_and_rejects(app: TestApp) {
    let csv = "FIRST,EMAIL\nAda,ada@example.org\nBob,not-an-email\n";
    let r = app
        .req(Method::PUT, "/api/v1/uploads/spring.csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    let (s, v) = split(r).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v, json!({"path": "spring.csv", "bytes": csv.len()}));
    assert_eq!(
        std::fs::read_to_string(app.upload.path().join("spring.csv")).unwrap(),
        csv
    );
    // Never overwritten.
    let (s, v) = split(
        app.req(Method::PUT, "/api/v1/uploads/spring.csv")
            .body("FIRST\nMallory\n")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 409, "{v}");
    assert_error(&v, "conflict");
    assert_eq!(
        std::fs::read_to_string(app.upload.path().join("spring.csv")).unwrap(),
        csv
    );

    let (s, v) = app
        .send_json(
            Method::POST,
            "/api/v1/imports",
            json!({"source": "spring", "path": "spring.csv", "mapping": MAPPING}),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let id = v["id"].as_i64().unwrap();
    // Before the run there is no rejects file to give.
    let r = app
        .req(Method::GET, &format!("/api/v1/imports/{id}/rejects.csv"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    run_queued_job(&app).await;
    let v = app.get_json(&format!("/api/v1/imports/{id}")).await;
    assert_eq!(v["state"], "done", "{v}");
    assert_eq!(v["inserted"], 1, "{v}");
    assert_eq!(v["rejected"], 1, "{v}");

    let r = app
        .req(Method::GET, &format!("/api/v1/imports/{id}/rejects.csv"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/csv; charset=utf-8");
    let body = r.text().await.unwrap();
    let run = app.store.import_run(ImportId(id)).await.unwrap();
    let on_disk = std::fs::read_to_string(run.rejects_path.unwrap()).unwrap();
    assert_eq!(body, on_disk);
    assert!(body.contains("not-an-email"), "{body}");
    let r = app
        .req(Method::GET, "/api/v1/imports/999999/rejects.csv")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // The download is on the record.
    let audit = app
        .get_json(&format!("/api/v1/audit?entity=import&id={id}"))
        .await;
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "import.export"),
        "{audit}"
    );
}

async fn upload_names_and_scopes(app: TestApp) {
    for bad in ["%2Ehidden", "a%2Fb", "a%5Cb", "x.csv.rejects.csv"] {
        let (s, v) = split(
            app.req(Method::PUT, &format!("/api/v1/uploads/{bad}"))
                .body("x")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(s, 422, "{bad}: {v}");
        assert_error(&v, "invalid_name");
    }
    let reader = app.token_with(&[Scope::PeopleRead]).await;
    let r = app
        .client
        .put(app.url("/api/v1/uploads/ok.csv"))
        .bearer_auth(reader)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = app
        .client
        .put(app.url("/api/v1/uploads/ok.csv"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let files: Vec<_> = std::fs::read_dir(app.upload.path()).unwrap().collect();
    assert!(files.is_empty(), "nothing was written: {files:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_over_the_limit_are_413_and_leave_nothing() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| c.max_upload_bytes = 1000)
        .await
        .unwrap();
    let (s, v) = split(
        app.req(Method::PUT, "/api/v1/uploads/big.csv")
            .body("x".repeat(5000))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 413, "{v}");
    assert_error(&v, "body_too_large");
    // Larger than the JSON body limit is fine below the upload limit.
    let app2 = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.max_body_bytes = 100;
        c.max_upload_bytes = 10_000;
    })
    .await
    .unwrap();
    let (s, v) = split(
        app2.req(Method::PUT, "/api/v1/uploads/mid.csv")
            .body("y".repeat(5000))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        std::fs::metadata(app2.upload.path().join("mid.csv"))
            .unwrap()
            .len(),
        5000
    );
    let files: Vec<_> = std::fs::read_dir(app.upload.path()).unwrap().collect();
    assert!(files.is_empty(), "no partial file: {files:?}");
    app.stop().await;
    app2.stop().await;
}
