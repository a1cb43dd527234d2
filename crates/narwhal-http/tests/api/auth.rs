use crate::helpers::{assert_error, password_hash, split, TestApp, ADMIN_PASSWORD};
use narwhal_domain::{Role, Scope};
use reqwest::Method;
use serde_json::json;

crate::api_tests!(
    every_api_route_needs_credentials,
    scopes_are_enforced,
    revoked_tokens_stop_working,
    sessions_log_in_and_out,
    volunteers_can_do_nothing,
);

/// Fills path parameters with something plausible.
pub fn concrete(path: &str) -> String {
    path.replace("{id}", "1").replace("{source}", "test")
}

async fn every_api_route_needs_credentials(app: TestApp) {
    for r in narwhal_http::routes::ROUTES {
        let m = Method::from_bytes(r.method.as_bytes()).unwrap();
        let res = app
            .client
            .request(m, app.url(&concrete(r.path)))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        let (s, v) = split(res).await;
        if r.access == narwhal_http::routes::Access::Public {
            continue;
        }
        assert_eq!(s, 401, "{} {}: {v}", r.method, r.path);
        assert_error(&v, "unauthenticated");
    }
    // A made-up bearer token is refused too.
    let r = app
        .client
        .get(app.url("/api/v1/people"))
        .bearer_auth("nwl_not_a_token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

async fn scopes_are_enforced(app: TestApp) {
    let t = app.token_with(&[Scope::ListsRead]).await;
    let r = app
        .client
        .get(app.url("/api/v1/people"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    let (s, v) = split(r).await;
    assert_eq!(s, 403);
    assert_error(&v, "forbidden");
    let r = app
        .client
        .get(app.url("/api/v1/lists"))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Writing needs the write scope.
    let r = app
        .client
        .post(app.url("/api/v1/lists"))
        .bearer_auth(&t)
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Exports need `export`, even with read access.
    let t = app
        .token_with(&[Scope::ListsRead, Scope::ListsWrite, Scope::PeopleRead])
        .await;
    let r = app
        .client
        .post(app.url("/api/v1/lists"))
        .bearer_auth(&t)
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    let (_, v) = split(r).await;
    let id = v["id"].as_i64().unwrap();
    let r = app
        .client
        .get(app.url(&format!("/api/v1/lists/{id}/export.csv")))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

async fn revoked_tokens_stop_working(app: TestApp) {
    let (token, hash) = narwhal_http::new_token();
    let id = app
        .store
        .create_token("soon-gone", &hash, &[Scope::PeopleRead], "test")
        .await
        .unwrap();
    let get = || {
        app.client
            .get(app.url("/api/v1/people"))
            .bearer_auth(&token)
            .send()
    };
    assert_eq!(get().await.unwrap().status(), 200);
    app.store.revoke_token(id).await.unwrap();
    // Nodes trust a live token for a short while (`token_cache_ttl`) before reading it
    // again: once that time is over, the revoked token is refused.
    let ttl = narwhal_http::HttpConfig::default().token_cache_ttl;
    assert!(ttl < std::time::Duration::from_secs(10), "{ttl:?}");
    tokio::time::sleep(ttl + std::time::Duration::from_millis(100)).await;
    let (s, v) = split(get().await.unwrap()).await;
    assert_eq!(s, 401);
    assert_error(&v, "unauthenticated");
    // And it stays refused: a revoked token is never cached again.
    assert_eq!(get().await.unwrap().status(), 401);
}

fn session_cookie(r: &reqwest::Response) -> String {
    let c = r
        .headers()
        .get("set-cookie")
        .expect("set-cookie")
        .to_str()
        .unwrap()
        .to_string();
    assert!(c.contains("HttpOnly"), "{c}");
    assert!(c.contains("SameSite=Lax"), "{c}");
    c.split(';').next().unwrap().to_string()
}

async fn sessions_log_in_and_out(app: TestApp) {
    let (s, v) = split(
        app.client
            .post(app.url("/api/v1/sessions"))
            .json(&json!({"username": "admin", "password": "wrong"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 401);
    assert_error(&v, "unauthenticated");
    let r = app
        .client
        .post(app.url("/api/v1/sessions"))
        .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let cookie = session_cookie(&r);
    let get = || {
        app.client
            .get(app.url("/api/v1/people"))
            .header("cookie", &cookie)
            .send()
    };
    assert_eq!(get().await.unwrap().status(), 200);
    let r = app
        .client
        .delete(app.url("/api/v1/sessions"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(get().await.unwrap().status(), 401);
}

async fn volunteers_can_do_nothing(app: TestApp) {
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
    assert_eq!(r.status(), 201);
    let cookie = session_cookie(&r);
    for path in [
        "/api/v1/people",
        "/api/v1/lists",
        "/api/v1/audit",
        "/api/v1/imports",
    ] {
        let r = app
            .client
            .get(app.url(path))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
    }
}
