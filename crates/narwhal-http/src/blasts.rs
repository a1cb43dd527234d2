//! `/api/v1/blasts`: create (templates checked first), preview, test send, schedule,
//! pause, resume, cancel, status with ETA, who failed and why, resend to failed; and
//! `/api/v1/suppressions`.
//!
//! The edge never sends a blast itself: scheduling writes the blast's state and its
//! `blast.send` job in one transaction, and a node's blast worker does the rest. The
//! one message the edge hands to a provider is a test send, to an address staff type.

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Json, Path, Query};
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use narwhal_domain::{Email, ListId, PersonId, SegmentFilter, SegmentId};
use narwhal_mail::blast::{BlastSender, Templates};
use narwhal_mail::provider::{Content, MessageKey};
use narwhal_mail::{OutgoingMessage, SendOutcome};
use narwhal_store::audit::AuditEntry;
use narwhal_store::blasts::{
    Blast, BlastContent, BlastId, BlastState, BlastTarget, ClaimedRecipient, NewBlast,
};
use serde::Deserialize;
use serde_json::{json, Value};

/// What the edge needs of the mail side: the node's blast sender (its accounts for test
/// sends and ETAs, and its compose settings for previews and unsubscribe links) and the
/// default sender address.
#[derive(Clone)]
pub struct MailEdge {
    /// The same sender the node's blast worker runs with.
    pub sender: BlastSender,
    /// Used when a new blast names no `from`.
    pub default_from: Option<Email>,
}

pub(crate) fn mail(s: &AppState) -> ApiResult<&MailEdge> {
    s.mail.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "mail_not_configured",
            "mail is not configured on this node",
        )
    })
}

/// Who a new blast goes to: exactly one of these.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetBody {
    /// A static list.
    pub list: Option<ListId>,
    /// A saved segment.
    pub segment: Option<SegmentId>,
    /// A filter in the segment language.
    pub filter: Option<Value>,
}

/// The body of `POST /api/v1/blasts`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewBlastBody {
    /// 1 to 200 characters.
    pub name: String,
    /// Who it goes to.
    pub target: TargetBody,
    /// The subject template.
    pub subject: String,
    /// The text part's template.
    pub text: Option<String>,
    /// The HTML part's template.
    pub html: Option<String>,
    /// The sender address (default: `mail.from_address`).
    pub from: Option<String>,
    /// Keep provider message ids (about 30 bytes per recipient more).
    #[serde(default)]
    pub keep_message_ids: bool,
}

fn target(t: TargetBody) -> ApiResult<BlastTarget> {
    match (t.list, t.segment, t.filter) {
        (Some(l), None, None) => Ok(BlastTarget::List(l)),
        (None, Some(s), None) => Ok(BlastTarget::Segment(s)),
        (None, None, Some(f)) => SegmentFilter::parse(&f)
            .map(BlastTarget::Filter)
            .map_err(|e| ApiError::invalid(format!("target.filter: {e}"))),
        _ => Err(ApiError::invalid(
            "target: give exactly one of list, segment or filter",
        )),
    }
}

fn template_error(message: String) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_template",
        message,
    )
}

/// `POST /api/v1/blasts`: Create a blast (a draft); templates are checked first.
pub async fn create(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Json(b): Json<NewBlastBody>,
) -> ApiResult<Response> {
    let edge = mail(&s)?;
    let name = b.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::invalid("a blast name is 1 to 200 characters"));
    }
    let target = target(b.target)?;
    match &target {
        BlastTarget::List(l) => {
            s.store.list(*l).await?;
        }
        BlastTarget::Segment(g) => {
            s.store.segment(*g).await?;
        }
        _ => {}
    }
    let from = match b.from.as_deref() {
        Some(f) => Email::parse(f).map_err(|_| ApiError::invalid("from: not a valid address"))?,
        None => edge
            .default_from
            .clone()
            .ok_or_else(|| ApiError::invalid("from: required (no mail.from_address is set)"))?,
    };
    if b.text.as_deref().unwrap_or("").trim().is_empty()
        && b.html.as_deref().unwrap_or("").trim().is_empty()
    {
        return Err(ApiError::invalid("give a text or an html part"));
    }
    let content = BlastContent::Inline {
        subject: b.subject,
        text: b.text,
        html: b.html,
    };
    Templates::compile(&content, &edge.sender.compose().sender).map_err(template_error)?;
    let id = s
        .store
        .create_blast(&NewBlast {
            name,
            target,
            content,
            from_email: from,
            keep_message_ids: b.keep_message_ids,
        })
        .await?;
    s.store
        .audit(&AuditEntry::new(
            &caller.actor,
            "blast.create",
            "blast",
            id.0,
            json!({}),
        ))
        .await?;
    Ok((StatusCode::CREATED, Json(json!({"id": id}))).into_response())
}

/// A blast with its progress figures: what status pages and the CLI show.
pub async fn status_of(s: &AppState, b: &Blast) -> ApiResult<Value> {
    let (due, waiting) = if b.materialized {
        s.store.blast_unfinished(b.id).await?
    } else {
        (0, 0)
    };
    let pending = b.counts.pending();
    let eta = match (&s.mail, b.state) {
        (Some(m), BlastState::Sending | BlastState::Scheduled)
            if pending > 0 || !b.materialized =>
        {
            m.sender
                .eta(u64::try_from(pending).unwrap_or(0))
                .map(|d| d.as_secs())
        }
        (_, BlastState::Done) => Some(0),
        _ => None,
    };
    Ok(json!({
        "id": b.id, "name": b.name, "state": b.state.as_str(), "reason": b.state_reason,
        "from": b.from_email, "scheduled_at": b.scheduled_at, "created_at": b.created_at,
        "finished_at": b.finished_at,
        "total": b.counts.total, "sent": b.counts.sent, "failed": b.counts.failed,
        "skipped": b.counts.skipped, "ambiguous": b.counts.ambiguous,
        "throttled_waiting": waiting, "pending": pending, "in_flight_or_due": due,
        "throttle_answers": b.counts.throttled, "possible_duplicates": b.counts.reclaimed,
        "eta_seconds": eta,
    }))
}

/// `GET /api/v1/blasts`: Recent blasts with their progress.
pub async fn index(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    let mut out = Vec::new();
    for b in s.store.blasts(None, 100).await? {
        out.push(status_of(&s, &b).await?);
    }
    Ok(Json(json!({"blasts": out})))
}

/// `GET /api/v1/blasts/{id}`: A blast's progress.
pub async fn show(State(s): State<AppState>, Path(id): Path<i64>) -> ApiResult<Json<Value>> {
    let b = s.store.blast(BlastId(id)).await?;
    Ok(Json(status_of(&s, &b).await?))
}

/// The body of a preview or test send.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviewBody {
    /// Whose values fill the template (none: the fallbacks).
    pub person_id: Option<PersonId>,
    /// Test sends only: the address that receives it.
    pub to: Option<String>,
}

async fn render_for(
    s: &AppState,
    edge: &MailEdge,
    b: &Blast,
    person: Option<PersonId>,
) -> ApiResult<Content> {
    let t =
        Templates::compile(&b.content, &edge.sender.compose().sender).map_err(template_error)?;
    let r = match person {
        Some(pid) => {
            let p = s.store.get_person(pid).await?;
            ClaimedRecipient {
                person_id: pid,
                email: p.row.email.clone(),
                first_name: p.row.first_name.clone(),
                last_name: p.row.last_name.clone(),
                city: p.row.city.clone(),
                state: p.row.state.clone(),
                zip: p.row.zip.clone(),
                custom: Value::Object(p.row.custom.clone()).to_string(),
                attempts: 0,
                eligible: true,
            }
        }
        None => ClaimedRecipient {
            person_id: PersonId(0),
            email: None,
            first_name: None,
            last_name: None,
            city: None,
            state: None,
            zip: None,
            custom: "{}".into(),
            attempts: 0,
            eligible: true,
        },
    };
    narwhal_mail::blast::render(&t, &r, b.id, edge.sender.compose()).map_err(template_error)
}

fn content_json(c: &Content) -> Value {
    match c {
        Content::Simple {
            subject,
            text,
            html,
            ..
        } => json!({"subject": subject, "text": text, "html": html}),
        Content::Raw(_) => json!({"subject": "", "text": null, "html": null}),
    }
}

/// `POST /api/v1/blasts/{id}/preview`: The message as one person would get it.
pub async fn preview(
    State(s): State<AppState>,
    Path(id): Path<i64>,
    Json(body): Json<PreviewBody>,
) -> ApiResult<Json<Value>> {
    let edge = mail(&s)?;
    let b = s.store.blast(BlastId(id)).await?;
    let c = render_for(&s, edge, &b, body.person_id).await?;
    Ok(Json(content_json(&c)))
}

/// `POST /api/v1/blasts/{id}/test`: Send the message (as a chosen person would get it)
/// to one address, through the first configured account.
pub async fn test_send(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<i64>,
    Json(body): Json<PreviewBody>,
) -> ApiResult<Json<Value>> {
    let edge = mail(&s)?;
    let to = body
        .to
        .as_deref()
        .ok_or_else(|| ApiError::invalid("to: required"))
        .and_then(|t| Email::parse(t).map_err(|_| ApiError::invalid("to: not a valid address")))?;
    let b = s.store.blast(BlastId(id)).await?;
    let content = render_for(&s, edge, &b, body.person_id).await?;
    let account = edge.sender.accounts().first().ok_or_else(|| {
        ApiError::invalid("no provider account is configured; a test send needs one")
    })?;
    let from = Email::parse(&b.from_email).map_err(|_| ApiError::internal())?;
    let msg = OutgoingMessage {
        key: MessageKey(0),
        from,
        to,
        content: Content::Simple {
            subject: format!(
                "[TEST] {}",
                content_json(&content)["subject"].as_str().unwrap_or("")
            ),
            text: match &content {
                Content::Simple { text, .. } => text.clone(),
                Content::Raw(_) => None,
            },
            html: match &content {
                Content::Simple { html, .. } => html.clone(),
                Content::Raw(_) => None,
            },
            headers: Vec::new(),
        },
    };
    let out = account
        .provider
        .send_batch(std::slice::from_ref(&msg))
        .await;
    s.store
        .audit(&AuditEntry::new(
            &caller.actor,
            "blast.test_send",
            "blast",
            id,
            json!({"provider": account.provider.name()}),
        ))
        .await?;
    let (outcome, detail) = match out.first() {
        Some(SendOutcome::Accepted { .. }) => ("accepted", None),
        Some(o @ SendOutcome::Rejected { reason, .. }) => (o.label(), Some(reason.clone())),
        Some(o @ SendOutcome::TransientError { reason })
        | Some(o @ SendOutcome::Ambiguous { reason }) => (o.label(), Some(reason.clone())),
        Some(o) => (o.label(), None),
        None => ("no_answer", None),
    };
    Ok(Json(
        json!({"outcome": outcome, "reason": detail, "provider": account.provider.name()}),
    ))
}

/// The body of `POST /api/v1/blasts/{id}/schedule`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ScheduleBody {
    /// When to start (ms since the epoch); absent or past: now.
    pub at: Option<i64>,
}

async fn audited(s: &AppState, caller: &Caller, id: i64, action: &str) -> ApiResult<Json<Value>> {
    s.store
        .audit(&AuditEntry::new(
            &caller.actor,
            action,
            "blast",
            id,
            json!({}),
        ))
        .await?;
    let b = s.store.blast(BlastId(id)).await?;
    Ok(Json(status_of(s, &b).await?))
}

/// `POST /api/v1/blasts/{id}/schedule`: Send now or at a time.
pub async fn schedule(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<i64>,
    Json(body): Json<ScheduleBody>,
) -> ApiResult<Json<Value>> {
    let now = crate::now_ms();
    let at = body.at.unwrap_or(now).max(now);
    // The estimate before the send, and no send to nobody.
    let audience = s.store.count_audience(BlastId(id)).await?;
    if audience == 0 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "empty_audience",
            "this blast's list or segment matches nobody who can be emailed (everyone in it is unsubscribed, bounced, complained, suppressed or has no address); nothing was scheduled",
        ));
    }
    s.store.schedule_blast(BlastId(id), at, 1).await?;
    let Json(mut v) = audited(&s, &caller, id, "blast.schedule").await?;
    v["audience"] = json!(audience);
    if let Some(m) = &s.mail {
        let eta = m.sender.eta(u64::try_from(audience).unwrap_or(0));
        let wait = u64::try_from((at - now).max(0) / 1000).unwrap_or(0);
        v["eta_seconds"] = json!(eta.map(|d| d.as_secs() + wait));
    }
    Ok(Json(v))
}

/// `POST /api/v1/blasts/{id}/pause`: Pause; the worker stops within one slice.
pub async fn pause(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<i64>,
) -> ApiResult<Json<Value>> {
    let reason = format!("paused by {}", caller.actor);
    s.store.pause_blast(BlastId(id), Some(&reason)).await?;
    audited(&s, &caller, id, "blast.pause").await
}

/// `POST /api/v1/blasts/{id}/resume`: Resume a paused blast.
pub async fn resume(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<i64>,
) -> ApiResult<Json<Value>> {
    s.store.resume_blast(BlastId(id), 1).await?;
    audited(&s, &caller, id, "blast.resume").await
}

/// `POST /api/v1/blasts/{id}/cancel`: Cancel; nothing more is sent.
pub async fn cancel(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<i64>,
) -> ApiResult<Json<Value>> {
    s.store.cancel_blast(BlastId(id)).await?;
    audited(&s, &caller, id, "blast.cancel").await
}

/// Keyset paging by person id.
#[derive(Deserialize)]
pub struct FailuresQuery {
    /// The previous page's `next_after`.
    pub after: Option<PersonId>,
    /// 1 to 1000 (default 100).
    pub limit: Option<i64>,
}

/// `GET /api/v1/blasts/{id}/failures`: Who failed and why (after, limit).
pub async fn failures(
    State(s): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<FailuresQuery>,
) -> ApiResult<Json<Value>> {
    s.store.blast(BlastId(id)).await?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let rows = s.store.blast_failures(BlastId(id), q.after, limit).await?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|f| f.person_id))
        .flatten();
    Ok(Json(json!({"failures": rows, "next_after": next})))
}

/// `POST /api/v1/blasts/{id}/resend-failed`: A new draft to the recipients this blast
/// failed (send it with its own schedule call).
pub async fn resend_failed(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<i64>,
) -> ApiResult<Response> {
    let new = s.store.create_resend_to_failed(BlastId(id)).await?;
    s.store
        .audit(&AuditEntry::new(
            &caller.actor,
            "blast.resend_failed",
            "blast",
            new.0,
            json!({"of": id}),
        ))
        .await?;
    Ok((StatusCode::CREATED, Json(json!({"id": new}))).into_response())
}

/// Paging of the suppression list by address.
#[derive(Deserialize)]
pub struct SuppressionsQuery {
    /// The previous page's `next_after`.
    pub after: Option<String>,
    /// 1 to 1000 (default 100).
    pub limit: Option<i64>,
}

/// `GET /api/v1/suppressions`: The suppression list (after, limit).
pub async fn suppressions(
    State(s): State<AppState>,
    Query(q): Query<SuppressionsQuery>,
) -> ApiResult<Json<Value>> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let rows = s.store.suppressions(q.after.as_deref(), limit).await?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.email.clone()))
        .flatten();
    Ok(Json(json!({"suppressions": rows, "next_after": next})))
}
