//! `GET /api/v1/audit`: who changed what, newest first.

use crate::error::{ApiError, ApiResult, Json, Query};
use crate::AppState;
use axum::extract::State;
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
pub struct AuditQuery {
    pub entity: Option<String>,
    pub id: Option<String>,
    pub before: Option<i64>,
    pub limit: Option<i64>,
}

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
