//! The staff console: server-rendered pages, no JavaScript build step.
//!
//! Templates are embedded and auto-escaped (`.html`). Logins use the session cookie
//! (`HttpOnly`, `SameSite=Lax`); every state-changing form carries a CSRF token derived
//! from the session id, and a cross-site `Origin` is refused.

use crate::auth::{self, csrf_token, Caller};
use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Form, Path, Query, State};
use axum::http::header::{CONTENT_TYPE, HOST, LOCATION, ORIGIN, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use minijinja::{context, Environment, Value};
use narwhal_domain::{ListId, MergeId, PersonId, Scope, SegmentId};
use serde::Deserialize;

const CSS: &str = include_str!("templates/console.css");

/// Parses the embedded templates. A broken template is a build-time bug, caught by tests.
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    for (name, src) in [
        ("base.html", include_str!("templates/base.html")),
        ("login.html", include_str!("templates/login.html")),
        ("dashboard.html", include_str!("templates/dashboard.html")),
        ("people.html", include_str!("templates/people.html")),
        ("person.html", include_str!("templates/person.html")),
        ("lists.html", include_str!("templates/lists.html")),
        ("members.html", include_str!("templates/members.html")),
        ("segments.html", include_str!("templates/segments.html")),
        ("imports.html", include_str!("templates/imports.html")),
        ("audit.html", include_str!("templates/audit.html")),
        ("message.html", include_str!("templates/message.html")),
    ] {
        if let Err(e) = env.add_template(name, src) {
            tracing::error!(template = name, error = %e, "console template does not parse");
        }
    }
    env.add_filter("ts", format_ms);
    env.add_filter("json", |v: Value| {
        serde_json::to_string(&v).unwrap_or_default()
    });
    env
}

/// Unix ms as `YYYY-MM-DD HH:MM UTC`.
fn format_ms(ms: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)) {
        Ok(t) => format!(
            "{}-{:02}-{:02} {:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute()
        ),
        Err(_) => ms.to_string(),
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/static/console.css", get(css))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/", get(dashboard))
        .route("/people", get(people))
        .route("/people/{id}", get(person))
        .route("/merges/{id}/undo", post(undo_merge))
        .route("/lists", get(lists))
        .route("/lists/{id}", get(list))
        .route("/segments", get(segments))
        .route("/segments/{id}", get(segment))
        .route("/imports", get(imports).post(start_import))
        .route("/audit", get(audit))
}

/// A console failure, shown as a small HTML page.
pub enum Fail {
    Login,
    Api(ApiError),
}

impl From<ApiError> for Fail {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}
impl From<narwhal_store::StoreError> for Fail {
    fn from(e: narwhal_store::StoreError) -> Self {
        Self::Api(e.into())
    }
}

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        match self {
            Self::Login => redirect("/login"),
            Self::Api(e) => {
                let body = format!(
                    "<!doctype html><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><link rel=\"stylesheet\" href=\"/static/console.css\"><main><h1>{}</h1><p>{}</p><p><a href=\"/\">Back</a></p></main>",
                    e.status.as_u16(),
                    escape(&e.message)
                );
                if e.status.is_server_error() {
                    tracing::error!(code = e.code, "console request failed");
                }
                (e.status, Html(body)).into_response()
            }
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

type Page = Result<Response, Fail>;

fn redirect(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(LOCATION, v);
    }
    r
}

/// The logged-in staff member, with the scope this page needs.
async fn staff(s: &AppState, headers: &HeaderMap, scope: Scope) -> Result<Caller, Fail> {
    let caller = match auth::authenticate(s, headers).await {
        Ok(Some(c)) if c.session.is_some() => c,
        Ok(_)
        | Err(ApiError {
            code: "unauthenticated",
            ..
        }) => return Err(Fail::Login),
        Err(e) => return Err(e.into()),
    };
    if !caller.has(scope) {
        return Err(ApiError::forbidden(scope.as_str()).into());
    }
    Ok(caller)
}

/// For POSTs: same-origin (when the browser says) and the session's CSRF token.
fn check_post(headers: &HeaderMap, caller: &Caller, csrf: &str) -> Result<(), Fail> {
    if let (Some(origin), Some(host)) = (headers.get(ORIGIN), headers.get(HOST)) {
        let o = origin.to_str().unwrap_or("");
        let o_host = o.split_once("://").map(|(_, h)| h).unwrap_or(o);
        if o_host != host.to_str().unwrap_or("") {
            return Err(ApiError::forbidden("same-origin form").into());
        }
    }
    let expected = caller.session.as_deref().map(csrf_token);
    if expected.as_deref() != Some(csrf) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf",
            "the form expired; reload the page",
        )
        .into());
    }
    Ok(())
}

fn render(s: &AppState, name: &str, caller: Option<&Caller>, ctx: Value) -> Page {
    let csrf = caller
        .and_then(|c| c.session.as_deref())
        .map(csrf_token)
        .unwrap_or_default();
    let user = caller.map(|c| c.actor.trim_start_matches("user:").to_string());
    let ctx = context! { user => user, csrf => csrf, ..ctx };
    let html = s
        .templates
        .get_template(name)
        .and_then(|t| t.render(ctx))
        .map_err(|e| {
            tracing::error!(template = name, error = %e, "console render failed");
            ApiError::internal()
        })?;
    Ok(Html(html).into_response())
}

async fn css() -> Response {
    ([(CONTENT_TYPE, "text/css; charset=utf-8")], CSS).into_response()
}

async fn login_page(State(s): State<AppState>) -> Page {
    render(&s, "login.html", None, context! {})
}

#[derive(Deserialize)]
struct LoginForm {
    username: String,
    password: String,
}

async fn login(State(s): State<AppState>, headers: HeaderMap, Form(f): Form<LoginForm>) -> Page {
    if let (Some(origin), Some(host)) = (headers.get(ORIGIN), headers.get(HOST)) {
        let o = origin.to_str().unwrap_or("");
        if o.split_once("://").map(|(_, h)| h).unwrap_or(o) != host.to_str().unwrap_or("") {
            return Err(ApiError::forbidden("same-origin form").into());
        }
    }
    match auth::check_login(&s, &f.username, &f.password).await? {
        Some(user) => {
            let cookie = auth::start_session(&s, &user).await?;
            let mut r = redirect("/");
            r.headers_mut().insert(SET_COOKIE, cookie);
            Ok(r)
        }
        None => {
            let mut r = render(
                &s,
                "login.html",
                None,
                context! { error => "Wrong username or password." },
            )?;
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            Ok(r)
        }
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(State(s): State<AppState>, headers: HeaderMap, Form(f): Form<CsrfForm>) -> Page {
    if let Ok(Some(c)) = auth::authenticate(&s, &headers).await {
        check_post(&headers, &c, &f.csrf)?;
    }
    let cookie = auth::end_session(&s, &headers).await?;
    let mut r = redirect("/login");
    r.headers_mut().insert(SET_COOKIE, cookie);
    Ok(r)
}

async fn dashboard(State(s): State<AppState>, headers: HeaderMap) -> Page {
    let c = staff(&s, &headers, Scope::PeopleRead).await?;
    let people_count = s.store.count_people().await?;
    let lists = s.store.lists().await?;
    let imports = s.store.import_runs(5).await?;
    render(
        &s,
        "dashboard.html",
        Some(&c),
        context! { people_count, lists => Value::from_serialize(&lists), imports => Value::from_serialize(&imports) },
    )
}

#[derive(Deserialize)]
struct SearchQ {
    #[serde(default)]
    q: String,
}

async fn people(State(s): State<AppState>, headers: HeaderMap, Query(q): Query<SearchQ>) -> Page {
    let c = staff(&s, &headers, Scope::PeopleRead).await?;
    let found = if q.q.trim().is_empty() {
        Vec::new()
    } else {
        s.store.search_people(&q.q, None, 50).await?
    };
    render(
        &s,
        "people.html",
        Some(&c),
        context! { q => q.q, people => Value::from_serialize(&found) },
    )
}

async fn person(State(s): State<AppState>, headers: HeaderMap, Path(id): Path<PersonId>) -> Page {
    let c = staff(&s, &headers, Scope::PeopleRead).await?;
    let rec = s.store.get_person(id).await?;
    let merges = s.store.merges_of(id).await?;
    let history = s
        .store
        .audit_log(Some(("person", &id.to_string())), None, 100)
        .await?;
    render(
        &s,
        "person.html",
        Some(&c),
        context! {
            person => Value::from_serialize(&rec),
            merges => Value::from_serialize(&merges),
            history => Value::from_serialize(&history),
            can_write => c.has(Scope::PeopleWrite),
        },
    )
}

#[derive(Deserialize)]
struct UndoForm {
    #[serde(default)]
    csrf: String,
    back: PersonId,
}

async fn undo_merge(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<MergeId>,
    Form(f): Form<UndoForm>,
) -> Page {
    let c = staff(&s, &headers, Scope::PeopleWrite).await?;
    check_post(&headers, &c, &f.csrf)?;
    s.store.undo_merge(id, &c.actor).await?;
    Ok(redirect(&format!("/people/{}", f.back)))
}

async fn lists(State(s): State<AppState>, headers: HeaderMap) -> Page {
    let c = staff(&s, &headers, Scope::ListsRead).await?;
    let lists = s.store.lists().await?;
    render(
        &s,
        "lists.html",
        Some(&c),
        context! { lists => Value::from_serialize(&lists) },
    )
}

async fn list(State(s): State<AppState>, headers: HeaderMap, Path(id): Path<ListId>) -> Page {
    let c = staff(&s, &headers, Scope::ListsRead).await?;
    let l = s.store.list(id).await?;
    let people = s.store.list_members(id, None, 100).await?;
    let export = c
        .has(Scope::Export)
        .then(|| format!("/api/v1/lists/{id}/export.csv"));
    render(
        &s,
        "members.html",
        Some(&c),
        context! { title => l.name, count => l.members, export, people => Value::from_serialize(&people) },
    )
}

async fn segments(State(s): State<AppState>, headers: HeaderMap) -> Page {
    let c = staff(&s, &headers, Scope::ListsRead).await?;
    let mut rows = Vec::new();
    for seg in s.store.segments().await? {
        let count = s.store.count_matching(&seg.filter).await?;
        rows.push(serde_json::json!({"id": seg.id, "name": seg.name, "count": count}));
    }
    render(
        &s,
        "segments.html",
        Some(&c),
        context! { segments => Value::from_serialize(&rows) },
    )
}

async fn segment(State(s): State<AppState>, headers: HeaderMap, Path(id): Path<SegmentId>) -> Page {
    let c = staff(&s, &headers, Scope::ListsRead).await?;
    let seg = s.store.segment(id).await?;
    let count = s.store.count_matching(&seg.filter).await?;
    let people = s.store.page_matching(&seg.filter, None, 100).await?;
    let export = c
        .has(Scope::Export)
        .then(|| format!("/api/v1/segments/{id}/export.csv"));
    render(
        &s,
        "members.html",
        Some(&c),
        context! { title => seg.name, count, export, filter => Value::from_serialize(&seg.filter), people => Value::from_serialize(&people) },
    )
}

async fn imports(State(s): State<AppState>, headers: HeaderMap) -> Page {
    let c = staff(&s, &headers, Scope::ImportsWrite).await?;
    imports_page(&s, &c, None).await
}

async fn imports_page(s: &AppState, c: &Caller, error: Option<String>) -> Page {
    let runs = s.store.import_runs(50).await?;
    render(
        s,
        "imports.html",
        Some(c),
        context! { imports => Value::from_serialize(&runs), error, upload_dir => s.config.upload_dir.display().to_string() },
    )
}

#[derive(Deserialize)]
struct ImportForm {
    #[serde(default)]
    csrf: String,
    source: String,
    path: String,
    mapping: String,
}

async fn start_import(
    State(s): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<ImportForm>,
) -> Page {
    let c = staff(&s, &headers, Scope::ImportsWrite).await?;
    check_post(&headers, &c, &f.csrf)?;
    let b = crate::imports::NewImport {
        source: f.source,
        path: f.path,
        mapping: f.mapping,
    };
    match crate::imports::start(&s, &c, &b).await {
        Ok(_) => Ok(redirect("/imports")),
        Err(e) if e.status.is_client_error() => {
            let mut r = imports_page(&s, &c, Some(e.message)).await?;
            *r.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            Ok(r)
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
struct AuditQ {
    before: Option<i64>,
}

async fn audit(State(s): State<AppState>, headers: HeaderMap, Query(q): Query<AuditQ>) -> Page {
    let c = staff(&s, &headers, Scope::AuditRead).await?;
    let entries = s.store.audit_log(None, q.before, 100).await?;
    let next = (entries.len() == 100)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    render(
        &s,
        "audit.html",
        Some(&c),
        context! { entries => Value::from_serialize(&entries), next },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_and_escape() {
        let env = environment();
        let t = env.get_template("people.html");
        assert!(t.is_ok());
        let html = t
            .and_then(|t| {
                t.render(context! { user => "a", csrf => "x", q => "<script>", people => Vec::<i32>::new() })
            })
            .unwrap_or_default();
        assert!(html.contains("&lt;script&gt;"));
        assert!(!html.contains("<script>"));
        assert!(html.contains("width=device-width"));
        assert_eq!(format_ms(0), "1970-01-01 00:00 UTC");
        let person = serde_json::json!({"id": 1, "first_name": "<b>", "emails": [], "phones": [], "tags": ["x"],
            "custom": {"party": "D"}, "provenance": {"first_name": {"source": "api", "at": 0}},
            "email_consent": "unknown", "sms_consent": "unknown"});
        let history = serde_json::json!([{"id": 1, "at": 0, "actor": "user:a", "action": "person.create", "entity": "person", "entity_id": "1", "detail": {"fields": ["first_name"]}}]);
        let html = env
            .get_template("person.html")
            .and_then(|t| {
                t.render(context! { user => "a", csrf => "x", can_write => true,
                    person => Value::from_serialize(&person), history => Value::from_serialize(&history),
                    merges => Value::from_serialize(serde_json::json!([{"id": 3, "survivor_id": 1, "merged_id": 2, "reason": "", "actor": "a", "created_at": 0, "undone_at": null}])) })
            });
        let html = html.map_err(|e| e.to_string());
        assert!(
            html.as_ref().is_ok_and(|h| h.contains("&lt;b&gt;")
                && h.contains("person.create")
                && h.contains("/merges/3/undo")
                && h.contains("1970-01-01")),
            "{html:?}"
        );
    }
}
