//! Console election-day bulk entry: staff paste voter codes (one per line) or upload
//! a CSV of voted ids (`voter_code` or `person_id` column); every line goes through
//! the one idempotent ingest on the `bulk` channel and the page shows each line's
//! result. Entering a voter again is a duplicate, never a second count.
//!
//! The form is `multipart/form-data` with `csrf` first, then `codes` and/or `file`.

use super::{check_origin, check_post, render, staff, Page};
use crate::error::ApiError;
use crate::AppState;
use axum::extract::multipart::Field;
use axum::extract::{Multipart, State};
use axum::http::{HeaderMap, StatusCode};
use futures_util::StreamExt;
use minijinja::{context, Value};
use narwhal_domain::Scope;
use narwhal_turnout::fallback::{csv_file, pasted};
use narwhal_turnout::BulkLine;

/// The largest pasted text or uploaded file the form takes.
const MAX_FIELD: usize = 16 * 1024 * 1024;

fn form_error(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_form", message)
}

async fn bytes(mut field: Field<'_>) -> Result<Vec<u8>, ApiError> {
    let mut buf = Vec::new();
    while let Some(chunk) = field.next().await {
        let chunk = chunk.map_err(|_| form_error("the form could not be read"))?;
        if buf.len() + chunk.len() > MAX_FIELD {
            return Err(form_error("a field or file is over 16 MiB: split it"));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// `GET /turnout/bulk`: the form.
pub(super) async fn page(State(s): State<AppState>, headers: HeaderMap) -> Page {
    let c = staff(&s, &headers, Scope::ListsWrite).await?;
    render(&s, "turnout_bulk.html", Some(&c), context! {})
}

/// `POST /turnout/bulk`: ingest the lines, show each line's result.
pub(super) async fn submit(
    State(s): State<AppState>,
    headers: HeaderMap,
    mut form: Multipart,
) -> Page {
    let c = staff(&s, &headers, Scope::ListsWrite).await?;
    check_origin(&headers)?;
    let mut csrf_ok = false;
    let mut lines: Vec<BulkLine> = Vec::new();
    let bad = |_| form_error("the form could not be read");
    let mut error = None;
    while let Some(field) = form.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or("").to_string();
        match name.as_str() {
            "csrf" => {
                let v = String::from_utf8(bytes(field).await?).unwrap_or_default();
                check_post(&headers, &c, &v)?;
                csrf_ok = true;
            }
            _ if !csrf_ok => {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "csrf",
                    "the form expired; reload the page",
                )
                .into())
            }
            "codes" => {
                let text = String::from_utf8(bytes(field).await?)
                    .map_err(|_| form_error("the pasted codes are not text"))?;
                lines.extend(pasted(&text));
            }
            "file" => {
                let has_name = field.file_name().is_some_and(|n| !n.is_empty());
                let b = bytes(field).await?;
                if has_name && !b.is_empty() {
                    match csv_file(&b) {
                        Ok(l) => lines.extend(l),
                        Err(e) => error = Some(e.to_string()),
                    }
                }
            }
            _ => {}
        }
    }
    if !csrf_ok {
        return Err(form_error("the form could not be read").into());
    }
    if lines.is_empty() && error.is_none() {
        error = Some("paste voter codes or choose a CSV file".into());
    }
    let results = s
        .turnout
        .ingest()
        .ingest_bulk(&lines)
        .await
        .map_err(ApiError::from)?;
    s.turnout.live.nudge();
    let count = |o: &str| results.iter().filter(|r| r.outcome == o).count();
    let (accepted, duplicates, rejected) =
        (count("accepted"), count("duplicate"), count("rejected"));
    tracing::info!(accepted, duplicates, rejected, "bulk turnout entry");
    let mut r = render(
        &s,
        "turnout_bulk.html",
        Some(&c),
        context! { results => Value::from_serialize(&results), accepted, duplicates, rejected, error },
    )?;
    if results.is_empty() {
        *r.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    Ok(r)
}
