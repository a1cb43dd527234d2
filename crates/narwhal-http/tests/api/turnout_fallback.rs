//! The fallback channels into the one ingest: staff bulk entry in the console and
//! the signed inbound SMS webhook, on SQLite and on PostgreSQL.

use crate::helpers::{TestApp, ADMIN_PASSWORD};
use crate::turnout::setup;
use narwhal_domain::PhoneE164;
use narwhal_http::sms::{twilio_signature, SmsAuthToken};
use narwhal_store::Backend;
use narwhal_turnout::Turnout;

crate::api_tests!(bulk_entry_counts_once_and_reports_each_line);

const TOKEN: &str = "test-auth-token";
const PHONE: &str = "+16145550123";

/// Runs an SMS test on each backend with the webhook's auth token configured.
macro_rules! sms_tests {
    ($($name:ident),*) => {
        mod sms_sqlite {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let app = super::spawn(narwhal_store::Backend::Sqlite).await.expect("sqlite");
                super::$name(app).await;
            }
        )*}
        mod sms_postgres {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(app) = super::spawn(narwhal_store::Backend::Postgres).await {
                    super::$name(app).await;
                }
            }
        )*}
    };
}
sms_tests!(sms_reports_once_and_refuses_forgeries);

async fn spawn(b: Backend) -> Option<TestApp> {
    TestApp::spawn_with(b, |c| c.sms_auth_token = SmsAuthToken::new(TOKEN)).await
}

/// A staff console session: its cookie and CSRF token.
async fn console(app: &TestApp) -> (String, String) {
    let r = app
        .client
        .post(app.url("/login"))
        .form(&[("username", "admin"), ("password", ADMIN_PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_string();
    let html = app
        .client
        .get(app.url("/turnout/bulk"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("id=\"bulk\""), "{html}");
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    (cookie, csrf)
}

async fn bulk(app: &TestApp, cookie: &str, csrf: &str, codes: &str, csv: &str) -> (u16, String) {
    let b = "narwhal-bulk-boundary-91c2";
    let body = format!(
        "--{b}\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{csrf}\r\n\
         --{b}\r\nContent-Disposition: form-data; name=\"codes\"\r\n\r\n{codes}\r\n\
         --{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"voted.csv\"\r\nContent-Type: text/csv\r\n\r\n{csv}\r\n--{b}--\r\n"
    );
    let r = app
        .client
        .post(app.url("/turnout/bulk"))
        .header("cookie", cookie)
        .header("content-type", format!("multipart/form-data; boundary={b}"))
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn bulk_entry_counts_once_and_reports_each_line(app: TestApp) {
    let (_, codes) = setup(&app).await;
    let (cookie, csrf) = console(&app).await;

    // A forged form changes nothing.
    let (s, _) = bulk(&app, &cookie, "forged", &codes[0], "").await;
    assert_eq!(s, 403);
    assert_eq!(app.store.voted_count().await.unwrap(), 0);

    // Pasted: code 0 twice, a bad code, code 2 (another place: staff may report any);
    // the CSV repeats code 0 and adds code 1.
    let pasted = format!("{}\n{}\n1234\n\n{}", codes[0], codes[0], codes[2]);
    let csv = format!("name,voter_code\nA,{}\nB,{}\n", codes[1], codes[0]);
    let (s, html) = bulk(&app, &cookie, &csrf, &pasted, &csv).await;
    assert_eq!(s, 200, "{html}");
    assert!(
        html.contains("3 accepted, 2 already reported, 1 rejected."),
        "{html}"
    );
    // The bad line is named with its number, input and reason.
    let row = html
        .split("<tr class=\"rejected\">")
        .nth(1)
        .unwrap_or_else(|| panic!("no rejected row: {html}"));
    assert!(row.starts_with("<td>3</td><td>1234</td>"), "{row}");
    assert!(row.contains("8 digits") || row.contains("digit"), "{row}");
    assert_eq!(app.store.voted_count().await.unwrap(), 3);
    assert_eq!(app.store.report_rows().await.unwrap(), 3);

    // The same entry again: all duplicates, nothing counted twice.
    let (s, html) = bulk(&app, &cookie, &csrf, &pasted, &csv).await;
    assert_eq!(s, 200);
    assert!(
        html.contains("0 accepted, 5 already reported, 1 rejected."),
        "{html}"
    );
    assert_eq!(app.store.report_rows().await.unwrap(), 3);

    // A CSV without an id column is reported, not half-taken.
    let (s, html) = bulk(&app, &cookie, &csrf, "", "name\nA\n").await;
    assert_eq!(s, 422);
    assert!(html.contains("voter_code or a person_id column"), "{html}");
}

/// Posts a Twilio-style SMS; `sign_with` signs it (a wrong token forges it).
async fn sms(app: &TestApp, sign_with: &str, from: &str, body: &str, sid: &str) -> (u16, String) {
    let url = app.url("/webhooks/sms/twilio");
    let params: Vec<(String, String)> = [
        ("MessageSid", sid),
        ("AccountSid", "AC00000000000000000000000000000000"),
        ("From", from),
        ("To", "+16145550000"),
        ("Body", body),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let sig = twilio_signature(sign_with, &url, &params);
    let r = app
        .client
        .post(&url)
        .header("x-twilio-signature", sig)
        .form(&params)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn sms_reports_once_and_refuses_forgeries(app: TestApp) {
    let (_, codes) = setup(&app).await;
    let t = Turnout::new(app.store.clone());
    let w1 = app.store.user_by_name("w1").await.unwrap().unwrap();
    t.set_watcher_phone(w1.id, Some(&PhoneE164::parse(PHONE).unwrap()))
        .await
        .unwrap();

    // Forged: 403, nothing recorded.
    let body = format!("VOTED {}", codes[0]);
    let (s, _) = sms(&app, "wrong-token", PHONE, &body, "SM1").await;
    assert_eq!(s, 403);
    assert_eq!(app.store.report_rows().await.unwrap(), 0);

    // Signed, from the watcher's phone: code 0 is theirs, code 2 votes elsewhere.
    let body = format!("VOTED {}, {}", codes[0], codes[2]);
    let (s, xml) = sms(&app, TOKEN, PHONE, &body, "SM2").await;
    assert_eq!(s, 200, "{xml}");
    assert!(xml.starts_with("<?xml"), "{xml}");
    assert!(xml.contains("<Response><Message>Recorded 1 of 2."), "{xml}");
    assert!(
        xml.contains(&format!(
            "Not recorded: {} (votes at another polling place)",
            codes[2]
        )),
        "{xml}"
    );
    assert_eq!(app.store.voted_count().await.unwrap(), 1);

    // The provider retries the same message: still one report.
    let (s, xml) = sms(&app, TOKEN, PHONE, &body, "SM2").await;
    assert_eq!(s, 200);
    assert!(xml.contains("Recorded 1 of 2."), "{xml}");
    assert_eq!(app.store.report_rows().await.unwrap(), 1);

    // A validly signed message from a phone no watcher has: refused, nothing changes.
    let body = format!("VOTED {}", codes[1]);
    let (s, xml) = sms(&app, TOKEN, "+16145559999", &body, "SM3").await;
    assert_eq!(s, 200);
    assert!(xml.contains("not registered to a poll watcher"), "{xml}");
    assert_eq!(app.store.report_rows().await.unwrap(), 1);

    // Not a report: help, nothing changes.
    let (_, xml) = sms(&app, TOKEN, PHONE, "hello", "SM4").await;
    assert!(xml.contains("VOTED 1234 5678"), "{xml}");
    assert_eq!(app.store.report_rows().await.unwrap(), 1);

    // Without a configured token the webhook refuses even a "signed" request.
    let plain = TestApp::spawn_with(Backend::Sqlite, |c| c.sms_auth_token = None)
        .await
        .unwrap();
    let (s, _) = sms(&plain, "", PHONE, "VOTED 1", "SM5").await;
    assert_eq!(s, 403);
    plain.stop().await;
}
