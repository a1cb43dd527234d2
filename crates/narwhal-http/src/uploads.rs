//! `PUT /api/v1/uploads/{name}`: put a file in the upload directory, so an import can
//! read it without shell access to the server.
//!
//! The body is streamed to a temporary file beside its destination (never held in
//! memory), counted against [`HttpConfig::max_upload_bytes`](crate::HttpConfig), synced
//! to disk, then linked to its name, which fails if the name is taken: an upload never
//! overwrites a file. A failed, refused or abandoned upload leaves nothing behind; the
//! temporary file is removed when its guard drops, even when the request is cut.

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Json, Path};
use crate::AppState;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures_util::{Stream, StreamExt};
use rand::RngCore;
use serde_json::json;
use std::path::{Path as FsPath, PathBuf};
use tokio::io::AsyncWriteExt;

/// Routes that stream large bodies: they get `upload_timeout` instead of
/// `request_timeout`, and no default body limit (they count bytes themselves).
pub const LONG_ROUTES: &[(&str, &str)] = &[
    ("PUT", "/api/v1/uploads/{name}"),
    ("POST", "/imports/upload"),
];

/// The longest accepted file name, in bytes.
pub const MAX_NAME_BYTES: usize = 200;

/// The suffix the importer gives its rejects files; uploads may not take it.
const REJECTS_SUFFIX: &str = ".rejects.csv";

fn invalid_name(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_name", message)
}

/// Checks a name given by an API caller: one plain file name, no directories, not
/// hidden, printable, at most [`MAX_NAME_BYTES`].
pub fn check_name(name: &str) -> ApiResult<&str> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(invalid_name("a file name is 1 to 200 bytes"));
    }
    if name.contains(['/', '\\']) {
        return Err(invalid_name("a file name may not contain / or \\"));
    }
    if name.starts_with('.') {
        return Err(invalid_name("a file name may not start with a dot"));
    }
    if name.chars().any(char::is_control) || name.trim() != name {
        return Err(invalid_name(
            "a file name may not contain control characters or surrounding spaces",
        ));
    }
    if name.ends_with(REJECTS_SUFFIX) {
        return Err(invalid_name(
            "names ending in .rejects.csv are kept for the rejects of imports",
        ));
    }
    Ok(name)
}

/// Turns a browser's file name into a safe one (the console does not make staff
/// rename files): path parts dropped, odd characters replaced, a unique prefix added.
pub fn console_name(raw: &str) -> String {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or("");
    let mut clean: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    clean = clean.trim_start_matches('.').to_string();
    if clean.ends_with(REJECTS_SUFFIX) {
        clean.push_str(".csv");
    }
    clean.truncate(120);
    if clean.is_empty() {
        clean = "upload.csv".to_string();
    }
    format!("{}-{clean}", crate::now_ms())
}

/// Removes the temporary file unless the upload was completed.
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("an upload is at most {limit} bytes"),
    )
}

fn taken() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "conflict",
        "a file of that name already exists; uploads never overwrite",
    )
}

fn io_failed(e: &std::io::Error) -> ApiError {
    // The kind only: paths can carry names people chose.
    tracing::error!(error.kind = ?e.kind(), "upload could not be written");
    ApiError::internal()
}

/// Streams `body` into `dir/name` (`name` already checked), at most `limit` bytes.
/// Returns the size. The file exists under its name only once complete and synced.
pub async fn save<S, E>(dir: &FsPath, name: &str, body: S, limit: u64) -> ApiResult<u64>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| io_failed(&e))?;
    let dest = dir.join(name);
    if tokio::fs::try_exists(&dest).await.unwrap_or(false) {
        return Err(taken());
    }
    let mut rnd = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut rnd);
    // A leading dot: no upload can be given this name.
    let tmp = dir.join(format!(".upload-{}.part", crate::auth::hex(&rnd)));
    let mut guard = TempGuard(Some(tmp.clone()));
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .await
        .map_err(|e| io_failed(&e))?;
    let mut size: u64 = 0;
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|_| {
            ApiError::bad_request("upload_incomplete", "the upload ended before its body did")
        })?;
        size += chunk.len() as u64;
        if size > limit {
            return Err(too_large(limit));
        }
        file.write_all(&chunk).await.map_err(|e| io_failed(&e))?;
    }
    file.flush().await.map_err(|e| io_failed(&e))?;
    file.sync_all().await.map_err(|e| io_failed(&e))?;
    drop(file);
    // A hard link fails when the name exists: no check-then-rename race.
    match tokio::fs::hard_link(&tmp, &dest).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(taken()),
        Err(e) => return Err(io_failed(&e)),
    }
    let _ = tokio::fs::remove_file(&tmp).await;
    guard.0 = None;
    // The new directory entry must be durable too before we answer.
    if let Ok(d) = tokio::fs::File::open(dir).await {
        d.sync_all().await.map_err(|e| io_failed(&e))?;
    }
    Ok(size)
}

/// `PUT /api/v1/uploads/{name}`: 201 `{"path": name, "bytes": n}`; `path` is what
/// `POST /api/v1/imports` takes.
pub async fn put(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let name = check_name(&name)?;
    let limit = s.config.max_upload_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let bytes = save(&s.config.upload_dir, name, body.into_data_stream(), limit).await?;
    s.store
        .audit(&narwhal_store::audit::AuditEntry::new(
            &caller.actor,
            "upload.create",
            "upload",
            name,
            json!({"bytes": bytes}),
        ))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"path": name, "bytes": bytes})),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_files() {
        for ok in ["people.csv", "spring list (2).tsv", "a..b"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        let long = "x".repeat(201);
        for bad in [
            "",
            ".hidden",
            "..",
            "../etc/passwd",
            "a/b",
            "a\\b",
            "bad\nname",
            " lead",
            "x.csv.rejects.csv",
            long.as_str(),
        ] {
            let e = check_name(bad).err();
            assert_eq!(e.map(|e| e.code), Some("invalid_name"), "{bad:?}");
        }
    }

    #[test]
    fn console_names_are_sanitized_and_unique() {
        let n = console_name("C:\\Users\\me\\..\\My List.csv");
        assert!(n.ends_with("-My_List.csv"), "{n}");
        assert!(check_name(&n).is_ok());
        let n = console_name("../.secret");
        assert!(n.ends_with("-secret"), "{n}");
        assert!(console_name("").ends_with("-upload.csv"));
        assert!(check_name(&console_name("a.rejects.csv")).is_ok());
    }

    #[tokio::test]
    async fn save_refuses_overwrite_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ok = futures_util::stream::iter(vec![
            Ok::<_, std::io::Error>(Bytes::from("a,b\n")),
            Ok(Bytes::from("1,2\n")),
        ]);
        assert_eq!(save(dir.path(), "f.csv", ok, 100).await.ok(), Some(8));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("f.csv")).ok(),
            Some("a,b\n1,2\n".to_string())
        );
        let again = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from("x"))]);
        let e = save(dir.path(), "f.csv", again, 100).await.err();
        assert_eq!(e.map(|e| e.status), Some(StatusCode::CONFLICT));
        let big = futures_util::stream::iter(vec![
            Ok::<_, std::io::Error>(Bytes::from("12345")),
            Ok(Bytes::from("67890")),
        ]);
        let e = save(dir.path(), "g.csv", big, 7).await.err();
        assert_eq!(e.map(|e| e.code), Some("body_too_large"));
        let cut = futures_util::stream::iter(vec![
            Ok(Bytes::from("12")),
            Err(std::io::Error::other("reset")),
        ]);
        let e = save(dir.path(), "h.csv", cut, 100).await.err();
        assert_eq!(e.map(|e| e.code), Some("upload_incomplete"));
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert_eq!(left, vec![std::ffi::OsString::from("f.csv")]);
    }
}
