//! `/api/v1/segments`: saved filters, live counts, pages and streamed CSV export.

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Json, Path, Query};
use crate::lists::{csv_response, export_audit, PageQuery, EXPORT_PAGE};
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use narwhal_domain::{SegmentFilter, SegmentId};
use serde::Deserialize;
use serde_json::json;

/// Parses and checks a filter (depth and size limits included).
fn parse_filter(v: &serde_json::Value) -> ApiResult<SegmentFilter> {
    SegmentFilter::parse(v).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            e.to_string(),
        )
    })
}

/// `GET /api/v1/segments`: All segments.
pub async fn index(State(s): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(json!({"segments": s.store.segments().await?})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
/// The body of `POST /api/v1/segments`.
pub struct NewSegment {
    /// 1 to 200 characters.
    pub name: String,
    /// A filter in the segment language (`SegmentFilter`).
    pub filter: serde_json::Value,
}

/// `POST /api/v1/segments`: Save a segment.
pub async fn create(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Json(b): Json<NewSegment>,
) -> ApiResult<Response> {
    let name = b.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::invalid("a segment name is 1 to 200 characters"));
    }
    let f = parse_filter(&b.filter)?;
    let id = s.store.create_segment(name, &f).await?;
    audit(&s, &caller, "segment.create", id).await?;
    Ok((StatusCode::CREATED, Json(json!({"id": id}))).into_response())
}

/// Records a change to a segment in the audit log.
pub(crate) async fn audit(
    s: &AppState,
    caller: &Caller,
    action: &str,
    id: SegmentId,
) -> ApiResult<()> {
    s.store
        .audit(&narwhal_store::audit::AuditEntry::new(
            &caller.actor,
            action,
            "segment",
            id,
            json!({}),
        ))
        .await?;
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
/// A body holding just a filter (preview, update).
pub struct FilterBody {
    /// A filter in the segment language (`SegmentFilter`).
    pub filter: serde_json::Value,
}

/// `POST /api/v1/segments/preview`: Count the people a filter matches.
pub async fn preview(
    State(s): State<AppState>,
    Json(b): Json<FilterBody>,
) -> ApiResult<Json<serde_json::Value>> {
    let f = parse_filter(&b.filter)?;
    Ok(Json(json!({"count": s.store.count_matching(&f).await?})))
}

/// `GET /api/v1/segments/{id}`: One segment.
pub async fn show(
    State(s): State<AppState>,
    Path(id): Path<SegmentId>,
) -> ApiResult<Json<narwhal_store::segments::Segment>> {
    Ok(Json(s.store.segment(id).await?))
}

/// `PUT /api/v1/segments/{id}`: Change a segment's filter.
pub async fn update(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<SegmentId>,
    Json(b): Json<FilterBody>,
) -> ApiResult<Json<narwhal_store::segments::Segment>> {
    let f = parse_filter(&b.filter)?;
    s.store.update_segment(id, &f).await?;
    audit(&s, &caller, "segment.update", id).await?;
    Ok(Json(s.store.segment(id).await?))
}

/// `DELETE /api/v1/segments/{id}`: Delete a segment.
pub async fn delete(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<SegmentId>,
) -> ApiResult<StatusCode> {
    s.store.delete_segment(id).await?;
    audit(&s, &caller, "segment.delete", id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/segments/{id}/count`: How many people a segment matches now.
pub async fn count(
    State(s): State<AppState>,
    Path(id): Path<SegmentId>,
) -> ApiResult<Json<serde_json::Value>> {
    let seg = s.store.segment(id).await?;
    Ok(Json(
        json!({"id": id, "count": s.store.count_matching(&seg.filter).await?}),
    ))
}

/// `GET /api/v1/segments/{id}/people`: A page of a segment's people (after, limit).
pub async fn people(
    State(s): State<AppState>,
    Path(id): Path<SegmentId>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let seg = s.store.segment(id).await?;
    let limit = q
        .limit
        .unwrap_or(crate::people::DEFAULT_LIMIT)
        .clamp(1, 1000);
    let people = s.store.page_matching(&seg.filter, q.after, limit).await?;
    let next = (people.len() as i64 == limit)
        .then(|| people.last().map(|p| p.id))
        .flatten();
    Ok(Json(json!({"people": people, "next_after": next})))
}

/// `GET /api/v1/segments/{id}/export.csv`: A segment's people as CSV, streamed.
pub async fn export(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<SegmentId>,
) -> ApiResult<Response> {
    let seg = s.store.segment(id).await?;
    export_audit(&s.store, &caller, "segment", id.0).await?;
    let store = s.store.clone();
    let filter = std::sync::Arc::new(seg.filter);
    Ok(csv_response(&format!("segment-{id}.csv"), move |after| {
        let store = store.clone();
        let filter = filter.clone();
        async move { store.page_matching(&filter, after, EXPORT_PAGE).await }
    }))
}
