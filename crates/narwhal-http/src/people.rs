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

/// `POST /api/v1/people`: Create or update a person from a draft (identity-resolved; 200 when updated).
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
/// The query of `GET /api/v1/people`.
pub struct SearchQuery {
    #[serde(default)]
    /// Email, phone, voter id or the start of a name.
    pub q: String,
    /// The `next_after` of the previous page.
    pub after: Option<PersonId>,
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<i64>,
}

/// `GET /api/v1/people`: Search people by email, phone, voter id or name (q, after, limit).
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

/// `GET /api/v1/people/{id}`: A person with merges and history.
pub async fn get(
    State(s): State<AppState>,
    Path(id): Path<PersonId>,
) -> ApiResult<Json<serde_json::Value>> {
    // Three independent reads at once: a read costs one round trip of waiting, not
    // three, when the database is far away.
    let entity = id.to_string();
    let (person, merges, history) = tokio::try_join!(
        s.store.get_person(id),
        s.store.merges_of(id),
        s.store.audit_log(Some(("person", &entity)), None, 100),
    )?;
    Ok(Json(
        json!({"person": person, "merges": merges, "history": history}),
    ))
}

/// `PATCH /api/v1/people/{id}`: Edit a person.
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
/// The body of `POST /api/v1/people/{id}/merge`.
pub struct MergeBody {
    /// The person merged into the one in the path (who survives).
    pub other: PersonId,
    #[serde(default)]
    /// Why, for the audit log and the merge record.
    pub reason: String,
}

/// `POST /api/v1/people/{id}/merge`: Merge another person into this one.
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

/// `POST /api/v1/merges/{id}/undo`: Undo a merge.
pub async fn undo_merge(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<MergeId>,
) -> ApiResult<Json<serde_json::Value>> {
    s.store.undo_merge(id, &caller.actor).await?;
    Ok(Json(json!({"merge_id": id, "undone": true})))
}
