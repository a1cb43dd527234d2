//! `/api/v1/people` and `/api/v1/merges`: the hub's people over JSON.

use crate::auth::Caller;
use crate::error::{ApiResult, Json, Path, Query};
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use narwhal_domain::{MergeId, PersonDraft, PersonId};
use narwhal_people::{Outcome, PersonPatch};
use serde::Deserialize;
use serde_json::json;

/// Page size when the caller does not say.
pub const DEFAULT_LIMIT: i64 = 50;

pub async fn upsert(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Json(draft): Json<PersonDraft>,
) -> ApiResult<Response> {
    let u = s
        .hub
        .upsert(draft.normalize(), "api", &caller.actor)
        .await?;
    let status = if matches!(u.outcome, Outcome::Created) {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({"id": u.id, "outcome": u.outcome, "merged": u.merged})),
    )
        .into_response())
}

#[derive(Deserialize)]
pub struct SearchQuery {
    #[serde(default)]
    pub q: String,
    pub after: Option<PersonId>,
    pub limit: Option<i64>,
}

pub async fn search(
    State(s): State<AppState>,
    Query(q): Query<SearchQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, 500);
    let people = s.store.search_people(&q.q, q.after, limit).await?;
    let next = (people.len() as i64 == limit)
        .then(|| people.last().map(|p| p.id))
        .flatten();
    Ok(Json(json!({"people": people, "next_after": next})))
}

pub async fn get(
    State(s): State<AppState>,
    Path(id): Path<PersonId>,
) -> ApiResult<Json<serde_json::Value>> {
    let person = s.store.get_person(id).await?;
    let merges = s.store.merges_of(id).await?;
    let history = s
        .store
        .audit_log(Some(("person", &id.to_string())), None, 100)
        .await?;
    Ok(Json(
        json!({"person": person, "merges": merges, "history": history}),
    ))
}

pub async fn edit(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<PersonId>,
    Json(patch): Json<PersonPatch>,
) -> ApiResult<Response> {
    let rec = s.hub.edit(id, patch, &caller.actor).await?;
    Ok(Json(rec).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MergeBody {
    pub other: PersonId,
    #[serde(default)]
    pub reason: String,
}

pub async fn merge(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<PersonId>,
    Json(body): Json<MergeBody>,
) -> ApiResult<Response> {
    let m = s
        .hub
        .merge(id, body.other, body.reason.trim(), &caller.actor)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"merge_id": m, "survivor": id, "merged": body.other})),
    )
        .into_response())
}

pub async fn undo_merge(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<MergeId>,
) -> ApiResult<Json<serde_json::Value>> {
    s.store.undo_merge(id, &caller.actor).await?;
    Ok(Json(json!({"merge_id": id, "undone": true})))
}
