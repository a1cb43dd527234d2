//! Console election-day pages: the live turnout dashboard (server-sent events from
//! `/api/v1/turnout/live`), turfs and call lists with what remains of them (pages
//! that shed voters as they vote, exports for canvassers and phone banks), and the
//! early-vote file upload. Mobile-friendly: the tables fold into cards on a phone.

use super::{check_origin, check_post, render, staff, Fail, Page};
use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Form, Multipart, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use minijinja::{context, Value};
use narwhal_domain::{PersonId, Scope};
use narwhal_turnout::lists::{ListKind, NewGotvList, PrecinctRef};
use serde::Deserialize;

fn form_error(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_form", message)
}

/// `GET /turnout`: the live dashboard.
pub(super) async fn dashboard(State(s): State<AppState>, headers: HeaderMap) -> Page {
    let c = staff(&s, &headers, Scope::ListsRead).await?;
    let d = narwhal_turnout::live::compute(&s.store)
        .await
        .map_err(ApiError::from)?;
    render(
        &s,
        "turnout_dashboard.html",
        Some(&c),
        context! { d => Value::from_serialize(&d) },
    )
}

async fn lists_page(s: &AppState, c: &crate::auth::Caller, error: Option<String>) -> Page {
    let t = narwhal_turnout::Turnout::new(s.store.clone());
    let lists = t.lists().await.map_err(ApiError::from)?;
    let places = t.places().await.map_err(ApiError::from)?;
    let segments = s.store.segments().await.map_err(ApiError::from)?;
    render(
        s,
        "turnout_lists.html",
        Some(c),
        context! {
            lists => Value::from_serialize(&lists),
            places => Value::from_serialize(&places),
            segments => Value::from_serialize(&segments),
            can_write => c.has(Scope::ListsWrite),
            error,
        },
    )
}

/// `GET /turnout/lists`: turfs and call lists with their remaining counts.
pub(super) async fn lists(State(s): State<AppState>, headers: HeaderMap) -> Page {
    let c = staff(&s, &headers, Scope::ListsRead).await?;
    lists_page(&s, &c, None).await
}

#[derive(Deserialize)]
pub(super) struct NewListForm {
    csrf: String,
    name: String,
    kind: String,
    #[serde(default)]
    polling_place: String,
    #[serde(default)]
    precinct: String,
    #[serde(default)]
    segment: String,
}

/// `POST /turnout/lists`: create a turf or call list; a mistake comes back in the form.
pub(super) async fn create(
    State(s): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<NewListForm>,
) -> Page {
    let c = staff(&s, &headers, Scope::ListsWrite).await?;
    check_post(&headers, &c, &f.csrf)?;
    let precinct = match f.precinct.trim() {
        "" => None,
        p => match p.split_once('/') {
            Some((county, precinct)) => Some(PrecinctRef {
                county: county.into(),
                precinct: precinct.into(),
            }),
            None => return lists_page(&s, &c, Some("a precinct is COUNTY/PRECINCT".into())).await,
        },
    };
    let segment = match f.segment.trim() {
        "" => None,
        v => match v.parse::<i64>() {
            Ok(id) => Some(id),
            Err(_) => return lists_page(&s, &c, Some("choose a segment".into())).await,
        },
    };
    let new = NewGotvList {
        name: f.name,
        kind: if f.kind == "calls" {
            ListKind::Calls
        } else {
            ListKind::Turf
        },
        segment,
        polling_place: Some(f.polling_place.trim().to_string()).filter(|p| !p.is_empty()),
        precinct,
    };
    match narwhal_turnout::Turnout::new(s.store.clone())
        .create_list(&new)
        .await
    {
        Ok(l) => Ok(super::redirect(&format!("/turnout/lists/{}", l.id))),
        Err(
            e @ (narwhal_turnout::TurnoutError::Invalid(_)
            | narwhal_turnout::TurnoutError::NotFound(_)),
        ) => lists_page(&s, &c, Some(e.to_string())).await,
        Err(e) => Err(Fail::Api(e.into())),
    }
}

#[derive(Deserialize)]
pub(super) struct After {
    after: Option<i64>,
}

/// `GET /turnout/lists/{id}`: who remains on a list, shedding voters as they vote.
pub(super) async fn show(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Query(q): Query<After>,
) -> Page {
    let c = staff(&s, &headers, Scope::ListsRead).await?;
    let t = narwhal_turnout::Turnout::new(s.store.clone());
    let list = t.list(id).await.map_err(ApiError::from)?;
    let voters = t
        .list_remaining(id, q.after.map(PersonId), super::PAGE)
        .await
        .map_err(ApiError::from)?;
    let next = super::next_link(
        &format!("/turnout/lists/{id}"),
        &[],
        voters.len(),
        voters.last().map(|v| v.person_id.0),
    );
    render(
        &s,
        "turnout_list.html",
        Some(&c),
        context! { list => Value::from_serialize(&list), voters => Value::from_serialize(&voters), next },
    )
}

/// `GET /turnout/early-vote`: the upload form.
pub(super) async fn early_page(State(s): State<AppState>, headers: HeaderMap) -> Page {
    let c = staff(&s, &headers, Scope::ImportsWrite).await?;
    render(&s, "turnout_early.html", Some(&c), context! {})
}

/// `POST /turnout/early-vote`: the file is streamed into the upload directory, then
/// imported; the page shows the counts (and where the rejected lines are).
pub(super) async fn early_submit(
    State(s): State<AppState>,
    headers: HeaderMap,
    mut form: Multipart,
) -> Page {
    let c = staff(&s, &headers, Scope::ImportsWrite).await?;
    check_origin(&headers)?;
    let bad = |_| form_error("the form could not be read");
    let mut csrf_ok = false;
    let mut mapping = None;
    let mut saved: Option<std::path::PathBuf> = None;
    while let Some(field) = form.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or("").to_string();
        match name.as_str() {
            "csrf" => {
                let v = field.text().await.map_err(bad)?;
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
            "mapping" => mapping = Some(field.text().await.map_err(bad)?),
            "file" => {
                // Streamed into the upload directory under a fresh name, never overwriting.
                let name = format!(
                    "early-vote-{}-{:08x}.csv",
                    crate::now_ms(),
                    rand::random::<u32>()
                );
                crate::uploads::save(
                    &s.config.upload_dir,
                    &name,
                    field,
                    s.config.max_upload_bytes,
                )
                .await?;
                saved = Some(s.config.upload_dir.join(name));
            }
            _ => {}
        }
    }
    let error = |m: String| render(&s, "turnout_early.html", Some(&c), context! { error => m });
    let Some(path) = saved else {
        return error("choose the state's file".into());
    };
    let m = match narwhal_turnout::early::EarlyVoteMapping::parse(mapping.as_deref().unwrap_or(""))
    {
        Ok(m) => m,
        Err(e) => return error(e.to_string()),
    };
    match s.turnout.ingest().import_early_vote(&path, &m).await {
        Ok(counts) => {
            s.turnout.live.nudge();
            render(
                &s,
                "turnout_early.html",
                Some(&c),
                context! { counts => Value::from_serialize(&counts) },
            )
        }
        Err(e @ narwhal_turnout::TurnoutError::Invalid(_)) => error(e.to_string()),
        Err(e) => Err(Fail::Api(e.into())),
    }
}
