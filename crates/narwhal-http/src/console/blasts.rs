//! Console pages for blasts: the list, a blast's live progress (a small script polls
//! the status and feedback API with the session cookie while it sends), its actions
//! (send now, pause, resume, cancel: CSRF-checked forms), preview and test send, who
//! failed and why, the split by provider account, and the compose form, whose template
//! errors come back in the form with part, line and column before anything is saved.
//!
//! Every action goes through the same handler as the API, so the audit log and the
//! rules (which states may move where) are the same whichever way staff come.

use super::{check_post, redirect, render, staff, Fail, Page};
use crate::auth::Caller;
use crate::blasts::{NewBlastBody, PreviewBody, ScheduleBody, TargetBody};
use crate::error::{ApiError, Json, Path as ApiPath};
use crate::AppState;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::Extension;
use minijinja::{context, Value};
use narwhal_domain::{ListId, PersonId, Scope, SegmentId};
use narwhal_store::blasts::{BlastId, BlastState};
use serde::Deserialize;

/// Up to this many recipients, the page counts per account at once; above, on demand.
const ACCOUNTS_INLINE_MAX: i64 = 200_000;
/// Failures shown on the page (the rest through the API).
const FAILURES_SHOWN: i64 = 50;

/// `GET /blasts`.
pub(super) async fn index(State(s): State<AppState>, headers: HeaderMap) -> Page {
    let c = staff(&s, &headers, Scope::MailRead).await?;
    let mut blasts = Vec::new();
    for b in s.store.blasts(None, 100).await? {
        blasts.push(crate::blasts::status_of(&s, &b).await?);
    }
    render(
        &s,
        "blasts.html",
        Some(&c),
        context! { blasts => Value::from_serialize(&blasts), can_send => c.has(Scope::MailSend) },
    )
}

#[derive(Deserialize, Default)]
pub(super) struct ShowQ {
    accounts: Option<String>,
}

/// What a blast page shows besides the blast itself.
#[derive(Default)]
struct Extra {
    error: Option<String>,
    preview: Option<serde_json::Value>,
    person_id: Option<String>,
    test: Option<serde_json::Value>,
    all_accounts: bool,
}

/// `GET /blasts/{id}`.
pub(super) async fn show(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Query(q): Query<ShowQ>,
) -> Page {
    let c = staff(&s, &headers, Scope::MailRead).await?;
    let extra = Extra {
        all_accounts: q.accounts.is_some(),
        ..Extra::default()
    };
    page(&s, &c, id, extra, StatusCode::OK).await
}

async fn page(s: &AppState, c: &Caller, id: i64, extra: Extra, status: StatusCode) -> Page {
    let blast = s.store.blast(BlastId(id)).await?;
    let b = crate::blasts::status_of(s, &blast).await?;
    let f = s.store.blast_feedback(blast.id).await?;
    let failures = s
        .store
        .blast_failures(blast.id, None, FAILURES_SHOWN)
        .await?;
    let more_failures = (failures.len() as i64 == FAILURES_SHOWN)
        .then(|| failures.last().map(|x| x.person_id.0))
        .flatten();
    let accounts = if extra.all_accounts || blast.counts.total <= ACCOUNTS_INLINE_MAX {
        Some(s.store.blast_accounts(blast.id).await?)
    } else {
        None
    };
    let actions: Vec<_> = match blast.state {
        BlastState::Draft => vec![("schedule", "Send now"), ("cancel", "Cancel")],
        BlastState::Scheduled | BlastState::Sending => {
            vec![("pause", "Pause"), ("cancel", "Cancel")]
        }
        BlastState::Paused => vec![("resume", "Resume"), ("cancel", "Cancel")],
        BlastState::Cancelled | BlastState::Done => vec![],
    }
    .into_iter()
    .map(|(action, label)| context! { action, label })
    .collect();
    let live = matches!(blast.state, BlastState::Scheduled | BlastState::Sending);
    let mut r = render(
        s,
        "blast.html",
        Some(c),
        context! {
            b => Value::from_serialize(&b), f => Value::from_serialize(f),
            failures => Value::from_serialize(&failures), more_failures,
            accounts => accounts.map(|a| Value::from_serialize(&a)),
            actions, live, can_send => c.has(Scope::MailSend),
            error => extra.error, preview => extra.preview.map(|p| Value::from_serialize(&p)),
            person_id => extra.person_id, test => extra.test.map(|t| Value::from_serialize(&t)),
        },
    )?;
    *r.status_mut() = status;
    Ok(r)
}

#[derive(Deserialize)]
pub(super) struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

/// `POST /blasts/{id}/schedule|pause|resume|cancel`: the action is the last segment.
pub(super) async fn act(
    State(s): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<i64>,
    Form(f): Form<CsrfOnly>,
) -> Page {
    let action = uri.path().rsplit('/').next().unwrap_or("").to_string();
    let c = staff(&s, &headers, Scope::MailSend).await?;
    check_post(&headers, &c, &f.csrf)?;
    let (st, ext, p) = (State(s.clone()), Extension(c.clone()), ApiPath(id));
    let done = match action.as_str() {
        "schedule" => crate::blasts::schedule(st, ext, p, Json(ScheduleBody::default())).await,
        "pause" => crate::blasts::pause(st, ext, p).await,
        "resume" => crate::blasts::resume(st, ext, p).await,
        "cancel" => crate::blasts::cancel(st, ext, p).await,
        _ => return Err(ApiError::not_found("action").into()),
    };
    match done {
        Ok(_) => Ok(redirect(&format!("/blasts/{id}"))),
        Err(e) if e.status.is_client_error() && e.status != StatusCode::NOT_FOUND => {
            let extra = Extra {
                error: Some(e.message),
                ..Extra::default()
            };
            page(&s, &c, id, extra, StatusCode::UNPROCESSABLE_ENTITY).await
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
pub(super) struct PreviewForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    person_id: String,
    #[serde(default)]
    to: Option<String>,
}

fn person(raw: &str) -> Result<Option<PersonId>, ApiError> {
    let t = raw.trim();
    if t.is_empty() {
        return Ok(None);
    }
    t.parse::<i64>()
        .map(|n| Some(PersonId(n)))
        .map_err(|_| ApiError::invalid("person #: a number, or empty for the fallbacks"))
}

/// `POST /blasts/{id}/preview`: the page with the message as that person gets it.
pub(super) async fn preview(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(f): Form<PreviewForm>,
) -> Page {
    let c = staff(&s, &headers, Scope::MailRead).await?;
    check_post(&headers, &c, &f.csrf)?;
    try_out(&s, &c, id, f, false).await
}

/// `POST /blasts/{id}/test`: send it to one address; the page says what happened.
pub(super) async fn test(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(f): Form<PreviewForm>,
) -> Page {
    let c = staff(&s, &headers, Scope::MailSend).await?;
    check_post(&headers, &c, &f.csrf)?;
    try_out(&s, &c, id, f, true).await
}

async fn try_out(s: &AppState, c: &Caller, id: i64, f: PreviewForm, test: bool) -> Page {
    s.store.blast(BlastId(id)).await?;
    let mut extra = Extra {
        person_id: Some(f.person_id.clone()),
        ..Extra::default()
    };
    let result = match person(&f.person_id) {
        Err(e) => Err(e),
        Ok(person_id) => {
            let body = PreviewBody {
                person_id,
                to: test.then(|| f.to.clone().unwrap_or_default()),
            };
            let (st, p) = (State(s.clone()), ApiPath(id));
            if test {
                crate::blasts::test_send(st, Extension(c.clone()), p, Json(body)).await
            } else {
                crate::blasts::preview(st, p, Json(body)).await
            }
        }
    };
    match result {
        Ok(Json(v)) if test => extra.test = Some(v),
        Ok(Json(v)) => extra.preview = Some(v),
        Err(e) if e.status.is_client_error() => {
            extra.error = Some(e.message);
            return page(s, c, id, extra, StatusCode::UNPROCESSABLE_ENTITY).await;
        }
        Err(e) => return Err(e.into()),
    }
    page(s, c, id, extra, StatusCode::OK).await
}

#[derive(Deserialize, serde::Serialize, Default)]
pub(super) struct NewForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    target: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    subject: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    html: String,
    #[serde(default, deserialize_with = "checkbox")]
    keep_message_ids: bool,
}

fn checkbox<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let v: Option<String> = Option::deserialize(d)?;
    Ok(v.is_some_and(|v| !v.is_empty()))
}

/// `GET /blasts/new`.
pub(super) async fn new_page(State(s): State<AppState>, headers: HeaderMap) -> Page {
    let c = staff(&s, &headers, Scope::MailSend).await?;
    compose_page(&s, &c, None, None, StatusCode::OK).await
}

async fn compose_page(
    s: &AppState,
    c: &Caller,
    form: Option<&NewForm>,
    error: Option<String>,
    status: StatusCode,
) -> Page {
    let lists = s.store.lists().await?;
    let segments = s.store.segments().await?;
    let default_from = s
        .mail
        .as_ref()
        .and_then(|m| m.default_from.as_ref())
        .map(|e| e.as_str().to_string());
    // Without a form, the checkbox starts checked.
    let form = form.map(Value::from_serialize);
    let mut r = render(
        s,
        "blast_new.html",
        Some(c),
        context! { lists => Value::from_serialize(&lists), segments => Value::from_serialize(&segments),
        default_from, form, error },
    )?;
    *r.status_mut() = status;
    Ok(r)
}

fn target(raw: &str) -> Result<TargetBody, ApiError> {
    let bad = || ApiError::invalid("choose a list or a segment");
    let (kind, id) = raw.split_once(':').ok_or_else(bad)?;
    let id: i64 = id.parse().map_err(|_| bad())?;
    Ok(match kind {
        "list" => TargetBody {
            list: Some(ListId(id)),
            segment: None,
            filter: None,
        },
        "segment" => TargetBody {
            list: None,
            segment: Some(SegmentId(id)),
            filter: None,
        },
        _ => return Err(bad()),
    })
}

fn non_empty(s: &str) -> Option<String> {
    (!s.trim().is_empty()).then(|| s.to_string())
}

/// `POST /blasts/new`: check and save as a draft, or show the form with the error.
pub(super) async fn create(
    State(s): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<NewForm>,
) -> Page {
    let c = staff(&s, &headers, Scope::MailSend).await?;
    check_post(&headers, &c, &f.csrf)?;
    let made = match target(&f.target) {
        Err(e) => Err(e),
        Ok(t) => {
            let body = NewBlastBody {
                name: f.name.clone(),
                target: t,
                subject: f.subject.clone(),
                text: non_empty(&f.text),
                html: non_empty(&f.html),
                from: non_empty(&f.from).map(|v| v.trim().to_string()),
                keep_message_ids: f.keep_message_ids,
            };
            crate::blasts::create(State(s.clone()), Extension(c.clone()), Json(body)).await
        }
    };
    match made {
        Ok(resp) => {
            let bytes = axum::body::to_bytes(resp.into_body(), 4096)
                .await
                .map_err(|_| ApiError::internal())?;
            let v: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|_| ApiError::internal())?;
            let id = v["id"].as_i64().ok_or_else(ApiError::internal)?;
            Ok(redirect(&format!("/blasts/{id}")))
        }
        Err(e) if e.status.is_client_error() => {
            compose_page(
                &s,
                &c,
                Some(&f),
                Some(e.message),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await
        }
        Err(e) => Err(Fail::Api(e)),
    }
}
