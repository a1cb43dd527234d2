use crate::helpers::{TestApp, ADMIN_PASSWORD};

crate::api_tests!(console_login_escaping_and_csrf);

async fn console_login_escaping_and_csrf(app: TestApp) {
    let r = app.client.get(app.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/login");
    let r = app
        .client
        .post(app.url("/login"))
        .form(&[("username", "admin"), ("password", "nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = app
        .client
        .post(app.url("/login"))
        .header("origin", "http://evil.example")
        .form(&[("username", "admin"), ("password", ADMIN_PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
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

    let page = |path: &str| {
        app.client
            .get(app.url(path))
            .header("cookie", &cookie)
            .send()
    };
    for path in ["/", "/people", "/lists", "/segments", "/imports", "/audit"] {
        let r = page(path).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let html = page("/people?q=%3Cscript%3Ealert(1)%3C/script%3E")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("&lt;script&gt;"));
    assert!(!html.contains("<script>"));

    // State changes need the session's CSRF token.
    let r = app
        .client
        .post(app.url("/logout"))
        .header("cookie", &cookie)
        .form(&[("csrf", "forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(page("/").await.unwrap().status(), 200, "still logged in");
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    let r = app
        .client
        .post(app.url("/logout"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(page("/").await.unwrap().status(), 303, "logged out");
}
