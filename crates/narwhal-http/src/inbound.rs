//! `POST /api/v1/inbound/{source}`: other systems push records; stored durably first,
//! translated into people later by a job. The `Idempotency-Key` makes retries safe.

use crate::error::{ApiError, ApiResult, Json, Path};
use crate::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The header that makes a retried push safe.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

fn valid_source(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// `POST /api/v1/inbound/{source}`: Receive a record from another system (Idempotency-Key required).
pub async fn receive(
    State(s): State<AppState>,
    Path(source): Path<String>,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> ApiResult<Response> {
    if !valid_source(&source) {
        return Err(ApiError::invalid(
            "a source is 1 to 64 of a-z, 0-9, _ and -",
        ));
    }
    let key = headers
        .get(IDEMPOTENCY_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request("missing_idempotency_key", "send an Idempotency-Key header")
        })?;
    if key.len() > 200 {
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "an Idempotency-Key is at most 200 characters",
        ));
    }
    if !body.is_object() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "the body must be a JSON object",
        ));
    }
    let (id, inserted) = s.store.receive_inbound(&source, key, &body).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"id": id, "duplicate": !inserted})),
    )
        .into_response())
}
