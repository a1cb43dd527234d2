use crate::helpers::{assert_error, TestApp};
use narwhal_domain::JobId;
use reqwest::Method;
use serde_json::json;

crate::api_tests!(imports_queue_a_job);

const MAPPING: &str =
    "[source]\nname = \"test-file\"\n\n[fields]\nfirst_name = \"FIRST\"\nemail = \"EMAIL\"\n";

async fn imports_queue_a_job(app: TestApp) {
    std::fs::write(
        app.upload.path().join("people.csv"),
        "FIRST,EMAIL\nAda,ada@example.org\n",
    )
    .unwrap();
    let (s, v) = app
        .send_json(
            Method::POST,
            "/api/v1/imports",
            json!({"source": "spring-list", "path": "people.csv", "mapping": MAPPING}),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let id = v["id"].as_i64().unwrap();
    let job = app
        .store
        .job(JobId(v["job_id"].as_i64().unwrap()))
        .await
        .unwrap();
    assert_eq!(job.kind, "import.people");
    let v = app.get_json(&format!("/api/v1/imports/{id}")).await;
    assert_eq!(v["source_name"], "spring-list");
    assert_eq!(v["state"], "queued");
    assert!(v["rows_read"].is_number());
    let v = app.get_json("/api/v1/imports").await;
    assert_eq!(v["imports"][0]["id"], id);

    // Nothing outside the upload directory, and no bad mappings.
    let outside = tempfile::NamedTempFile::new().unwrap();
    let (s, v) = app
        .send_json(Method::POST, "/api/v1/imports", json!({"source": "x", "path": outside.path().display().to_string(), "mapping": MAPPING}))
        .await;
    assert_eq!(s, 422, "{v}");
    let (s, _) = app
        .send_json(
            Method::POST,
            "/api/v1/imports",
            json!({"source": "x", "path": "../../etc/passwd", "mapping": MAPPING}),
        )
        .await;
    assert_eq!(s, 422);
    let (s, v) = app
        .send_json(
            Method::POST,
            "/api/v1/imports",
            json!({"source": "x", "path": "people.csv", "mapping": "[fields]\nshoe = 1"}),
        )
        .await;
    assert_eq!(s, 422);
    assert_error(&v, "invalid_mapping");
}
