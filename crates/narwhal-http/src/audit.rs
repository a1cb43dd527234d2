//! `GET /api/v1/audit`: who changed what, newest first.

use crate::error::{ApiError, ApiResult, Json, Query};
use crate::AppState;
use axum::extract::State;
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
/// The query of `GET /api/v1/audit`.
pub struct AuditQuery {
    /// With `id`: only entries about this kind of entity (`person`, `list`, ...).
    pub entity: Option<String>,
    /// With `entity`: only entries about this one.
    pub id: Option<String>,
    /// Keyset cursor: entries older than this entry id (`next_before` of the last page).
    pub before: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    pub limit: Option<i64>,
}

/// `GET /api/v1/audit`: The audit log, newest first (entity, id, before, limit).
pub async fn index(
    State(s): State<AppState>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let entity = match (&q.entity, &q.id) {
        (Some(e), Some(i)) => Some((e.as_str(), i.as_str())),
        (None, None) => None,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "entity and id go together",
            ))
        }
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let entries = s.store.audit_log(entity, q.before, limit).await?;
    let next = (entries.len() as i64 == limit)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    Ok(Json(json!({"entries": entries, "next_before": next})))
}
