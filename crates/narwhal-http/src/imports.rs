//! `/api/v1/imports`: start an import of a file in the upload directory (put there by
//! `PUT /api/v1/uploads/{name}`, the console, or an operator), watch its progress,
//! download its rejects.
//!
//! Files are read only from under the configured upload directory, so an API token
//! cannot make the server read arbitrary paths.

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Json, Path};
use crate::AppState;
use axum::extract::State;
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use narwhal_domain::ImportId;
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
/// The body of `POST /api/v1/imports`.
pub struct NewImport {
    /// The source's name, recorded as provenance.
    pub source: String,
    /// A file under the upload directory (relative to it, or absolute inside it).
    pub path: String,
    /// The column mapping, as TOML text.
    pub mapping: String,
}

/// Resolves `path` inside `dir`, refusing anything that escapes it.
pub fn resolve_upload(dir: &std::path::Path, path: &str) -> ApiResult<std::path::PathBuf> {
    let base = dir
        .canonicalize()
        .map_err(|_| ApiError::invalid("the upload directory does not exist"))?;
    let p = std::path::Path::new(path.trim());
    let full = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    let full = full
        .canonicalize()
        .map_err(|_| ApiError::invalid("no such file in the upload directory"))?;
    if !full.starts_with(&base) || !full.is_file() {
        return Err(ApiError::invalid(
            "imports read only files under the upload directory",
        ));
    }
    Ok(full)
}

/// Checks the source name and the mapping, before any file is touched.
pub fn check_settings(source: &str, mapping: &str) -> ApiResult<()> {
    let source = source.trim();
    if source.is_empty() || source.chars().count() > 100 {
        return Err(ApiError::invalid("a source name is 1 to 100 characters"));
    }
    if let Err(e) = narwhal_people::mapping::Mapping::parse(mapping) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_mapping",
            e.to_string(),
        ));
    }
    Ok(())
}

/// Validates and queues an import; shared with the console.
pub async fn start(s: &AppState, caller: &Caller, b: &NewImport) -> ApiResult<ImportId> {
    check_settings(&b.source, &b.mapping)?;
    let source = b.source.trim();
    let path = resolve_upload(&s.config.upload_dir, &b.path)?;
    Ok(
        narwhal_people::import::start_import(&s.store, source, &path, &b.mapping, &caller.actor)
            .await?,
    )
}

/// `POST /api/v1/imports`: Start an import of a file under the upload directory.
pub async fn create(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Json(b): Json<NewImport>,
) -> ApiResult<Response> {
    let id = start(&s, &caller, &b).await?;
    let run = s.store.import_run(id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"id": id, "job_id": run.job_id, "state": run.state})),
    )
        .into_response())
}

/// `GET /api/v1/imports`: Recent imports.
pub async fn index(State(s): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(json!({"imports": s.store.import_runs(50).await?})))
}

/// `GET /api/v1/imports/{id}`: An import's progress.
pub async fn show(
    State(s): State<AppState>,
    Path(id): Path<ImportId>,
) -> ApiResult<Json<narwhal_store::imports::ImportRun>> {
    Ok(Json(s.store.import_run(id).await?))
}

/// `GET /api/v1/imports/{id}/rejects.csv`: the rejects file recorded on the import
/// row, and nothing else, streamed. Recorded in the audit log: it holds source rows.
pub async fn rejects(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<ImportId>,
) -> ApiResult<Response> {
    let run = s.store.import_run(id).await?;
    let path = run
        .rejects_path
        .ok_or_else(|| ApiError::not_found("rejects file"))?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|_| ApiError::not_found("rejects file"))?;
    crate::lists::export_audit(&s.store, &caller, "import", id.0).await?;
    let stream = futures_util::stream::unfold(file, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(buf), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    let mut r = axum::body::Body::from_stream(stream).into_response();
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(v) =
        HeaderValue::from_str(&format!("attachment; filename=\"import-{id}-rejects.csv\""))
    {
        h.insert(CONTENT_DISPOSITION, v);
    }
    Ok(r)
}
