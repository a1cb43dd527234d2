//! Console lists and segments: create them, page through their people.
//!
//! A segment's filter is typed as JSON (the language of `SegmentFilter`); an invalid
//! one comes back in the form with the reason. "Preview count" counts without saving;
//! a small inline script also previews as staff type, through the JSON API.

use super::{check_post, next_link, render, staff, Page, PAGE};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use minijinja::{context, Value};
use narwhal_domain::{ListId, PersonId, Scope, SegmentFilter, SegmentId};
use serde::Deserialize;

#[derive(Deserialize)]
pub(super) struct PageQ {
    after: Option<PersonId>,
}

async fn lists_page(s: &AppState, c: &Caller, error: Option<String>, status: StatusCode) -> Page {
    let lists = s.store.lists().await?;
    let mut r = render(
        s,
        "lists.html",
        Some(c),
        context! { lists => Value::from_serialize(&lists), error, can_write => c.has(Scope::ListsWrite) },
    )?;
    *r.status_mut() = status;
    Ok(r)
}

/// `GET /lists`.
pub(super) async fn index(State(s): State<AppState>, headers: HeaderMap) -> Page {
    let c = staff(&s, &headers, Scope::ListsRead).await?;
    lists_page(&s, &c, None, StatusCode::OK).await
}

#[derive(Deserialize)]
pub(super) struct NewListForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    description: String,
}

/// `POST /lists`: creates a list and opens it.
pub(super) async fn create(
    State(s): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<NewListForm>,
) -> Page {
    let c = staff(&s, &headers, Scope::ListsWrite).await?;
    check_post(&headers, &c, &f.csrf)?;
    let name = f.name.trim();
    let r = if name.is_empty() || name.chars().count() > 200 {
        Err(ApiError::invalid("a list name is 1 to 200 characters"))
    } else {
        s.store
            .create_list(name, f.description.trim(), &c.actor)
            .await
            .map_err(ApiError::from)
    };
    match r {
        Ok(id) => Ok(super::redirect(&format!("/lists/{id}"))),
        Err(e) if e.status.is_client_error() => lists_page(&s, &c, Some(e.message), e.status).await,
        Err(e) => Err(e.into()),
    }
}

/// `GET /lists/{id}?after=`: a page of members.
pub(super) async fn members(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<ListId>,
    Query(q): Query<PageQ>,
) -> Page {
    let c = staff(&s, &headers, Scope::ListsRead).await?;
    let l = s.store.list(id).await?;
    let people = s.store.list_members(id, q.after, PAGE).await?;
    let export = c
        .has(Scope::Export)
        .then(|| format!("/api/v1/lists/{id}/export.csv"));
    let more = next_link(
        &format!("/lists/{id}"),
        &[],
        people.len(),
        people.last().map(|p| p.id.0),
    );
    render(
        &s,
        "members.html",
        Some(&c),
        context! { title => l.name, count => l.members, export, more, paged => q.after.is_some(), people => Value::from_serialize(&people) },
    )
}

#[derive(Deserialize, Default)]
pub(super) struct SegmentForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    filter: String,
    /// `preview` counts without saving; anything else saves.
    #[serde(default)]
    action: String,
}

async fn segments_page(
    s: &AppState,
    c: &Caller,
    form: &SegmentForm,
    preview: Option<i64>,
    error: Option<String>,
    status: StatusCode,
) -> Page {
    let mut rows = Vec::new();
    for seg in s.store.segments().await? {
        let count = s.store.count_matching(&seg.filter).await?;
        rows.push(serde_json::json!({"id": seg.id, "name": seg.name, "count": count}));
    }
    let mut r = render(
        s,
        "segments.html",
        Some(c),
        context! {
            segments => Value::from_serialize(&rows),
            can_write => c.has(Scope::ListsWrite),
            name => form.name.clone(),
            filter => form.filter.clone(),
            preview,
            error,
        },
    )?;
    *r.status_mut() = status;
    Ok(r)
}

/// `GET /segments`.
pub(super) async fn index_segments(State(s): State<AppState>, headers: HeaderMap) -> Page {
    let c = staff(&s, &headers, Scope::ListsRead).await?;
    segments_page(&s, &c, &SegmentForm::default(), None, None, StatusCode::OK).await
}

/// Parses the filter textarea, with a message fit to show next to it.
pub(super) fn parse_filter(text: &str) -> Result<SegmentFilter, ApiError> {
    let v: serde_json::Value = serde_json::from_str(text.trim())
        .map_err(|e| ApiError::invalid(format!("the filter is not valid JSON: {e}")))?;
    SegmentFilter::parse(&v).map_err(|e| ApiError::invalid(format!("the filter is not valid: {e}")))
}

/// `POST /segments`: previews a filter's count, or saves the segment and opens it.
pub(super) async fn create_segment(
    State(s): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<SegmentForm>,
) -> Page {
    let preview_only = f.action == "preview";
    let c = staff(
        &s,
        &headers,
        if preview_only {
            Scope::ListsRead
        } else {
            Scope::ListsWrite
        },
    )
    .await?;
    check_post(&headers, &c, &f.csrf)?;
    let filter = match parse_filter(&f.filter) {
        Ok(filter) => filter,
        Err(e) => {
            return segments_page(&s, &c, &f, None, Some(e.message), e.status).await;
        }
    };
    let name = f.name.trim();
    if preview_only {
        let n = s.store.count_matching(&filter).await?;
        return segments_page(&s, &c, &f, Some(n), None, StatusCode::OK).await;
    }
    if name.is_empty() || name.chars().count() > 200 {
        let e = ApiError::invalid("a segment name is 1 to 200 characters");
        return segments_page(&s, &c, &f, None, Some(e.message), e.status).await;
    }
    let id = match s.store.create_segment(name, &filter).await {
        Ok(id) => id,
        Err(e) => {
            let e = ApiError::from(e);
            if e.status.is_client_error() {
                return segments_page(&s, &c, &f, None, Some(e.message), e.status).await;
            }
            return Err(e.into());
        }
    };
    crate::segments::audit(&s, &c, "segment.create", id).await?;
    Ok(super::redirect(&format!("/segments/{id}")))
}

/// `GET /segments/{id}?after=`: the count and a page of the people it matches now.
pub(super) async fn segment(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<SegmentId>,
    Query(q): Query<PageQ>,
) -> Page {
    let c = staff(&s, &headers, Scope::ListsRead).await?;
    let seg = s.store.segment(id).await?;
    let count = s.store.count_matching(&seg.filter).await?;
    let people = s.store.page_matching(&seg.filter, q.after, PAGE).await?;
    let export = c
        .has(Scope::Export)
        .then(|| format!("/api/v1/segments/{id}/export.csv"));
    let more = next_link(
        &format!("/segments/{id}"),
        &[],
        people.len(),
        people.last().map(|p| p.id.0),
    );
    render(
        &s,
        "members.html",
        Some(&c),
        context! { title => seg.name, count, export, more, paged => q.after.is_some(), filter => Value::from_serialize(&seg.filter), people => Value::from_serialize(&people) },
    )
}
