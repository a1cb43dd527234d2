//! `/api/v1/lists`: static lists, their members and CSV export.

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Json, Path, Query};
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use narwhal_domain::{ListId, PersonId};
use narwhal_store::people::PersonSummary;
use narwhal_store::Store;
use serde::Deserialize;
use serde_json::json;

/// `GET /api/v1/lists`: All lists.
pub async fn index(State(s): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(json!({"lists": s.store.lists().await?})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
/// The body of `POST /api/v1/lists`.
pub struct NewList {
    /// 1 to 200 characters, unique.
    pub name: String,
    #[serde(default)]
    /// Free text.
    pub description: String,
}

/// `POST /api/v1/lists`: Create a list.
pub async fn create(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Json(b): Json<NewList>,
) -> ApiResult<Response> {
    let name = b.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::invalid("a list name is 1 to 200 characters"));
    }
    let id = s
        .store
        .create_list(name, b.description.trim(), &caller.actor)
        .await?;
    Ok((StatusCode::CREATED, Json(json!({"id": id}))).into_response())
}

/// `GET /api/v1/lists/{id}`: One list.
pub async fn show(
    State(s): State<AppState>,
    Path(id): Path<ListId>,
) -> ApiResult<Json<narwhal_store::lists::List>> {
    Ok(Json(s.store.list(id).await?))
}

#[derive(Deserialize)]
/// Keyset paging of people: `after` a person id, `limit` rows.
pub struct PageQuery {
    /// The `next_after` of the previous page.
    pub after: Option<PersonId>,
    /// Page size, 1 to 1000 (default 50).
    pub limit: Option<i64>,
}

/// `GET /api/v1/lists/{id}/members`: A page of a list's members (after, limit).
pub async fn members(
    State(s): State<AppState>,
    Path(id): Path<ListId>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    s.store.list(id).await?;
    let limit = q
        .limit
        .unwrap_or(crate::people::DEFAULT_LIMIT)
        .clamp(1, 1000);
    let people = s.store.list_members(id, q.after, limit).await?;
    let next = (people.len() as i64 == limit)
        .then(|| people.last().map(|p| p.id))
        .flatten();
    Ok(Json(json!({"people": people, "next_after": next})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
/// The body of adding or removing list members.
pub struct Members {
    /// Person ids, at most 10 000 per call.
    pub people: Vec<PersonId>,
}

const MAX_MEMBERS_PER_CALL: usize = 10_000;

fn check(m: &Members) -> ApiResult<()> {
    if m.people.len() > MAX_MEMBERS_PER_CALL {
        return Err(ApiError::invalid(format!(
            "at most {MAX_MEMBERS_PER_CALL} people per call"
        )));
    }
    Ok(())
}

/// `POST /api/v1/lists/{id}/members`: Add people to a list.
pub async fn add(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<ListId>,
    Json(m): Json<Members>,
) -> ApiResult<Json<serde_json::Value>> {
    check(&m)?;
    let n = s.store.add_to_list(id, &m.people, &caller.actor).await?;
    Ok(Json(json!({"added": n})))
}

/// `DELETE /api/v1/lists/{id}/members`: Remove people from a list.
pub async fn remove(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<ListId>,
    Json(m): Json<Members>,
) -> ApiResult<Json<serde_json::Value>> {
    check(&m)?;
    let n = s
        .store
        .remove_from_list(id, &m.people, &caller.actor)
        .await?;
    Ok(Json(json!({"removed": n})))
}

/// `GET /api/v1/lists/{id}/export.csv`: A list's members as CSV.
pub async fn export(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<ListId>,
) -> ApiResult<Response> {
    let list = s.store.list(id).await?;
    export_audit(&s.store, &caller, "list", id.0).await?;
    let store = s.store.clone();
    Ok(csv_response(
        &format!("list-{}.csv", list.id),
        move |after| {
            let store = store.clone();
            async move { store.list_members(id, after, EXPORT_PAGE).await }
        },
    ))
}

/// Rows per page when streaming an export.
pub const EXPORT_PAGE: i64 = 1000;

/// Exports are recorded: they move personal data out of the system.
pub async fn export_audit(store: &Store, caller: &Caller, entity: &str, id: i64) -> ApiResult<()> {
    store
        .audit(&narwhal_store::audit::AuditEntry::new(
            &caller.actor,
            &format!("{entity}.export"),
            entity,
            id,
            json!({}),
        ))
        .await?;
    Ok(())
}

/// The header line of every people CSV export.
pub const CSV_HEADER: &str = "id,voter_id,first_name,last_name,email,phone,city,state,zip,county,precinct,email_consent,sms_consent\n";

fn field(out: &mut String, v: &str) {
    // Quote always; double quotes inside; neutralize spreadsheet formulas.
    out.push('"');
    if v.starts_with(['=', '+', '-', '@']) {
        out.push('\'');
    }
    out.push_str(&v.replace('"', "\"\""));
    out.push('"');
}

/// One CSV line for a person.
pub fn csv_row(p: &PersonSummary) -> String {
    let mut out = p.id.to_string();
    let o = |v: &Option<String>| v.clone().unwrap_or_default();
    for v in [
        o(&p.voter_id),
        o(&p.first_name),
        o(&p.last_name),
        o(&p.email),
        o(&p.phone),
        o(&p.city),
        o(&p.state),
        o(&p.zip),
        o(&p.county),
        o(&p.precinct),
        p.email_consent.clone(),
        p.sms_consent.clone(),
    ] {
        out.push(',');
        field(&mut out, &v);
    }
    out.push('\n');
    out
}

/// Streams pages of people as CSV: `page(after)` is called with the last id seen
/// until it returns a short page. A database failure mid-stream ends the body early
/// (the status line has been sent), and is logged.
pub fn csv_response<F, Fut>(filename: &str, page: F) -> Response
where
    F: Fn(Option<PersonId>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Vec<PersonSummary>, narwhal_store::StoreError>> + Send,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(4);
    tokio::spawn(async move {
        if tx.send(Ok(CSV_HEADER.to_string())).await.is_err() {
            return;
        }
        let mut after = None;
        loop {
            let rows = match page(after).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::error!("export stopped: database error");
                    let _ = tx.send(Err(std::io::Error::other("database error"))).await;
                    return;
                }
            };
            let n = rows.len() as i64;
            after = rows.last().map(|p| p.id);
            let chunk: String = rows.iter().map(csv_row).collect();
            if tx.send(Ok(chunk)).await.is_err() || n < EXPORT_PAGE {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut r = axum::body::Body::from_stream(stream).into_response();
    let h = r.headers_mut();
    h.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(v) =
        axum::http::HeaderValue::from_str(&format!("attachment; filename=\"{filename}\""))
    {
        h.insert(axum::http::header::CONTENT_DISPOSITION, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_and_defuses() {
        let mut s = String::new();
        field(&mut s, "a \"b\", c");
        assert_eq!(s, "\"a \"\"b\"\", c\"");
        let mut s = String::new();
        field(&mut s, "=HYPERLINK(1)");
        assert_eq!(s, "\"'=HYPERLINK(1)\"");
    }
}
