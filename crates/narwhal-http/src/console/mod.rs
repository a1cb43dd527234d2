//! The staff console: server-rendered pages, no JavaScript build step.
//!
//! Templates are embedded and auto-escaped (`.html`). Logins use the session cookie
//! (`HttpOnly`, `SameSite=Lax`); every state-changing form carries a CSRF token derived
//! from the session id, and a cross-site `Origin` is refused.

use crate::auth::{self, csrf_token, Caller};
use crate::error::ApiError;
use crate::AppState;
use axum::extract::{DefaultBodyLimit, Form, Path, Query, State};
use axum::http::header::{CONTENT_TYPE, HOST, LOCATION, ORIGIN, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use minijinja::{context, Environment, Value};
use narwhal_domain::{MergeId, PersonId, Scope};
use serde::Deserialize;

mod blasts;
pub(crate) mod donations;
mod imports;
mod lists;
mod people;
mod turnout;
mod turnout_live;

const CSS: &str = include_str!("templates/console.css");

/// Rows per console page; "Load more" fetches the next page by keyset (`after=`).
const PAGE: i64 = 50;

/// The "Load more" link of a full page: `path?extra&after=LAST`. `None` when the page
/// was short (there is nothing more).
fn next_link(path: &str, extra: &[(&str, &str)], len: usize, last: Option<i64>) -> Option<String> {
    let last = last.filter(|_| len as i64 == PAGE)?;
    let mut q = String::new();
    for (k, v) in extra {
        q.push_str(k);
        q.push('=');
        q.push_str(&percent_encode(v));
        q.push('&');
    }
    Some(format!("{path}?{q}after={last}"))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

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
        ("import.html", include_str!("templates/import.html")),
        ("audit.html", include_str!("templates/audit.html")),
        ("blasts.html", include_str!("templates/blasts.html")),
        ("blast.html", include_str!("templates/blast.html")),
        ("blast_new.html", include_str!("templates/blast_new.html")),
        ("message.html", include_str!("templates/message.html")),
        (
            "turnout_bulk.html",
            include_str!("templates/turnout_bulk.html"),
        ),
        (
            "turnout_dashboard.html",
            include_str!("templates/turnout_dashboard.html"),
        ),
        (
            "turnout_lists.html",
            include_str!("templates/turnout_lists.html"),
        ),
        (
            "turnout_list.html",
            include_str!("templates/turnout_list.html"),
        ),
        (
            "turnout_early.html",
            include_str!("templates/turnout_early.html"),
        ),
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

/// The console's routes: pages, forms and the stylesheet.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/static/console.css", get(css))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/", get(dashboard))
        .route("/people", get(people::search))
        .route("/people/{id}", get(people::show))
        .route("/people/{id}/edit", post(people::edit))
        .route("/people/{id}/merge", post(people::merge))
        .route("/people/{id}/lists", post(people::add_to_list))
        .route("/merges/{id}/undo", post(undo_merge))
        .route("/lists", get(lists::index).post(lists::create))
        .route("/lists/{id}", get(lists::members))
        .route(
            "/segments",
            get(lists::index_segments).post(lists::create_segment),
        )
        .route("/segments/{id}", get(lists::segment))
        .route("/imports", get(imports).post(start_import))
        .route(
            "/imports/upload",
            // The handler counts bytes against `max_upload_bytes` itself.
            post(imports::upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/imports/{id}", get(imports::show))
        .route("/audit", get(audit))
        .route("/turnout/bulk", get(turnout::page).post(turnout::submit))
        .route("/turnout", get(turnout_live::dashboard))
        .route(
            "/turnout/lists",
            get(turnout_live::lists).post(turnout_live::create),
        )
        .route("/turnout/lists/{id}", get(turnout_live::show))
        .route(
            "/turnout/early-vote",
            get(turnout_live::early_page)
                .post(turnout_live::early_submit)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/blasts", get(blasts::index))
        .route("/blasts/new", get(blasts::new_page).post(blasts::create))
        .route("/blasts/{id}", get(blasts::show))
        .route("/blasts/{id}/preview", post(blasts::preview))
        .route("/blasts/{id}/test", post(blasts::test))
        .route("/blasts/{id}/schedule", post(blasts::act))
        .route("/blasts/{id}/pause", post(blasts::act))
        .route("/blasts/{id}/resume", post(blasts::act))
        .route("/blasts/{id}/cancel", post(blasts::act))
}

/// A console failure, shown as a small HTML page.
pub enum Fail {
    /// Not logged in: redirect to the login page.
    Login,
    /// Anything else: an HTML page with the status and the error's safe message.
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

/// Refuses a form posted from another site (when the browser says where it came from).
fn check_origin(headers: &HeaderMap) -> Result<(), Fail> {
    if let (Some(origin), Some(host)) = (headers.get(ORIGIN), headers.get(HOST)) {
        let o = origin.to_str().unwrap_or("");
        let o_host = o.split_once("://").map(|(_, h)| h).unwrap_or(o);
        if o_host != host.to_str().unwrap_or("") {
            return Err(ApiError::forbidden("same-origin form").into());
        }
    }
    Ok(())
}

/// For POSTs: same-origin (when the browser says) and the session's CSRF token.
fn check_post(headers: &HeaderMap, caller: &Caller, csrf: &str) -> Result<(), Fail> {
    check_origin(headers)?;
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

async fn imports(State(s): State<AppState>, headers: HeaderMap) -> Page {
    let c = staff(&s, &headers, Scope::ImportsWrite).await?;
    imports::imports_page(&s, &c, None, StatusCode::OK).await
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
        Ok(id) => Ok(redirect(&format!("/imports/{id}"))),
        Err(e) if e.status.is_client_error() => {
            imports::imports_page(&s, &c, Some(e.message), StatusCode::UNPROCESSABLE_ENTITY).await
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
