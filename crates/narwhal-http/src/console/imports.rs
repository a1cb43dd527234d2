//! Console imports: upload a file and start its import in one form, watch an import.
//!
//! The upload form is `multipart/form-data` with its fields in a fixed order: `csrf`,
//! `source`, `mapping`, then `file`. The CSRF token and the settings are checked before
//! a byte of the file is written; the file is streamed to the upload directory under a
//! sanitized, unique name, counted against `max_upload_bytes`.

use super::{check_origin, check_post, render, staff, Fail, Page};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::uploads;
use crate::AppState;
use axum::extract::multipart::Field;
use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderMap, StatusCode};
use futures_util::StreamExt;
use minijinja::{context, Value};
use narwhal_domain::{ImportId, Scope};

/// The largest text field (the mapping) the upload form accepts.
const MAX_TEXT_FIELD: usize = 1024 * 1024;

/// The imports page, with an optional error shown above the forms.
pub(super) async fn imports_page(
    s: &AppState,
    c: &Caller,
    error: Option<String>,
    status: StatusCode,
) -> Page {
    let runs = s.store.import_runs(50).await?;
    let mut r = render(
        s,
        "imports.html",
        Some(c),
        context! { imports => Value::from_serialize(&runs), error, upload_dir => s.config.upload_dir.display().to_string() },
    )?;
    *r.status_mut() = status;
    Ok(r)
}

fn form_error(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_form", message)
}

/// Reads a small text field, refusing one over [`MAX_TEXT_FIELD`].
async fn text(mut field: Field<'_>) -> Result<String, ApiError> {
    let mut buf = Vec::new();
    while let Some(chunk) = field.next().await {
        let chunk = chunk.map_err(|_| form_error("the form could not be read"))?;
        if buf.len() + chunk.len() > MAX_TEXT_FIELD {
            return Err(form_error("a text field is over 1 MiB"));
        }
        buf.extend_from_slice(&chunk);
    }
    String::from_utf8(buf).map_err(|_| form_error("a text field is not UTF-8"))
}

/// `POST /imports/upload`: save the file, start its import, go to the import's page.
pub(super) async fn upload(
    State(s): State<AppState>,
    headers: HeaderMap,
    mut form: Multipart,
) -> Page {
    let c = staff(&s, &headers, Scope::ImportsWrite).await?;
    check_origin(&headers)?;
    match receive(&s, &c, &headers, &mut form).await {
        Ok(id) => Ok(super::redirect(&format!("/imports/{id}"))),
        Err(Fail::Api(e)) if e.status.is_client_error() && e.code != "csrf" => {
            imports_page(&s, &c, Some(e.message), e.status).await
        }
        Err(f) => Err(f),
    }
}

async fn receive(
    s: &AppState,
    c: &Caller,
    headers: &HeaderMap,
    form: &mut Multipart,
) -> Result<ImportId, Fail> {
    let mut csrf_ok = false;
    let mut source = String::new();
    let mut mapping = String::new();
    let bad = |_| form_error("the form could not be read");
    while let Some(field) = form.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or("").to_string();
        match name.as_str() {
            "csrf" => {
                let v = text(field).await?;
                check_post(headers, c, &v)?;
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
            "source" => source = text(field).await?,
            "mapping" => mapping = text(field).await?,
            "file" => {
                crate::imports::check_settings(&source, &mapping)?;
                let raw = field.file_name().unwrap_or("").to_string();
                if raw.is_empty() {
                    return Err(form_error("choose a file to upload").into());
                }
                let name = uploads::console_name(&raw);
                uploads::save(
                    &s.config.upload_dir,
                    &name,
                    field,
                    s.config.max_upload_bytes,
                )
                .await?;
                let b = crate::imports::NewImport {
                    source,
                    path: name.clone(),
                    mapping,
                };
                return match crate::imports::start(s, c, &b).await {
                    Ok(id) => Ok(id),
                    Err(e) => {
                        // Nothing will read it: do not leave it behind.
                        let _ = tokio::fs::remove_file(s.config.upload_dir.join(&name)).await;
                        Err(e.into())
                    }
                };
            }
            _ => {}
        }
    }
    Err(form_error("choose a file to upload").into())
}

/// `GET /imports/{id}`: one import's progress; refreshes itself while it runs.
pub(super) async fn show(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<ImportId>,
) -> Page {
    let c = staff(&s, &headers, Scope::ImportsWrite).await?;
    let run = s.store.import_run(id).await?;
    let c_ = &run.counts;
    let percent = if c_.bytes_total > 0 {
        (c_.bytes_read.clamp(0, c_.bytes_total) * 100) / c_.bytes_total
    } else if run.state == "done" {
        100
    } else {
        0
    };
    let running = matches!(run.state.as_str(), "queued" | "running");
    let rejects = run
        .rejects_path
        .is_some()
        .then(|| format!("/api/v1/imports/{id}/rejects.csv"));
    render(
        &s,
        "import.html",
        Some(&c),
        context! { run => Value::from_serialize(&run), percent, running, rejects },
    )
}
