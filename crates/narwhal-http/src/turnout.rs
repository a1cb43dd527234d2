//! `/api/v1/turnout`: election day. Watchers log in with a link token or a PIN, check
//! their readiness, read their polling place's remaining list and send batches of
//! reports; staff read turnout per precinct.
//!
//! Watcher routes are authorized by the caller's watcher row, not by a scope: a
//! watcher acts only on their own polling place, whatever else they send.

use crate::auth::{start_session, Caller};
use crate::error::{ApiError, ApiResult, Json, Query};
use crate::AppState;
use axum::extract::State;
use axum::http::header::SET_COOKIE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use narwhal_domain::PersonId;
use narwhal_store::turnout::Watcher;
use narwhal_turnout::{Channel, LoginFailure, ReportItem, Reporter, Turnout, TurnoutError};
use serde::Deserialize;
use serde_json::json;

impl From<TurnoutError> for ApiError {
    fn from(e: TurnoutError) -> Self {
        match e {
            TurnoutError::Invalid(m) => Self::invalid(m),
            TurnoutError::NotFound(what) => Self::not_found(what),
            TurnoutError::Csv(e) => Self::invalid(e.to_string()),
            TurnoutError::Store(s) => s.into(),
        }
    }
}

fn service(s: &AppState) -> Turnout {
    Turnout::new(s.store.clone())
}

fn login_error(f: LoginFailure) -> ApiError {
    let code = match f {
        LoginFailure::Wrong => "unauthenticated",
        LoginFailure::Expired => "login_expired",
    };
    ApiError::new(StatusCode::UNAUTHORIZED, code, f.to_string())
}

/// The watcher row of the calling user; 403 for anyone else (staff, tokens,
/// volunteers without a polling place).
async fn watcher(s: &AppState, caller: &Caller) -> ApiResult<Watcher> {
    let not = || {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this is for poll watchers: log in with your watcher link or PIN",
        )
    };
    let user = caller.user.ok_or_else(not)?;
    let w = service(s).watcher_for(user).await?.ok_or_else(not)?;
    if w.expires_at.is_some_and(|t| t <= crate::now_ms()) {
        return Err(login_error(LoginFailure::Expired));
    }
    Ok(w)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
/// The body of `POST /api/v1/turnout/sessions`: a link token, or username and PIN.
pub struct WatcherLogin {
    /// The token of a login link.
    #[serde(default)]
    pub token: Option<String>,
    /// With `pin`.
    #[serde(default)]
    pub username: Option<String>,
    /// The 6-digit PIN.
    #[serde(default)]
    pub pin: Option<String>,
}

/// `POST /api/v1/turnout/sessions`: a watcher logs in; sets the session cookie.
pub async fn login(State(s): State<AppState>, Json(b): Json<WatcherLogin>) -> ApiResult<Response> {
    let t = service(&s);
    let found = match (b.token, b.username, b.pin) {
        (Some(token), None, None) => t.login_link(&token).await?,
        (None, Some(u), Some(pin)) => t.login_pin(&u, &pin).await?,
        _ => return Err(ApiError::invalid("send either token, or username and pin")),
    };
    let w = found.map_err(login_error)?;
    let user = s
        .store
        .user_by_id(w.user_id)
        .await?
        .ok_or_else(|| login_error(LoginFailure::Wrong))?;
    let cookie = start_session(&s, &user).await?;
    let mut r = (
        StatusCode::CREATED,
        axum::Json(json!({"username": user.username, "polling_place": w.polling_place})),
    )
        .into_response();
    r.headers_mut().insert(SET_COOKIE, cookie);
    Ok(r)
}

/// `GET /api/v1/turnout/me`: readiness, days before: "you are set up for X".
pub async fn me(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<narwhal_turnout::Readiness>> {
    let w = watcher(&s, &caller).await?;
    Ok(Json(service(&s).readiness(&w).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
/// Paging of `GET /api/v1/turnout/list`.
pub struct ListQuery {
    /// The last person id of the previous page.
    pub after: Option<i64>,
    /// At most this many (1 to 10000, default 1000).
    pub limit: Option<i64>,
}

/// `GET /api/v1/turnout/list`: my polling place's supporters not yet voted.
pub async fn list(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let w = watcher(&s, &caller).await?;
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let voters = service(&s)
        .remaining(&w.polling_place, q.after.map(PersonId), limit)
        .await?;
    let next = if voters.len() as i64 == limit {
        voters.last().map(|v| v.person_id)
    } else {
        None
    };
    Ok(Json(
        json!({"polling_place": w.polling_place, "voters": voters, "next_after": next}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
/// The body of `POST /api/v1/turnout/reports`.
pub struct ReportBatch {
    /// Up to [`narwhal_turnout::MAX_BATCH`] reports.
    pub reports: Vec<ReportItem>,
    /// How the reports came; a watcher sends `app`.
    #[serde(default)]
    pub channel: Option<Channel>,
}

/// `POST /api/v1/turnout/reports`: a batch of reports, committed together; each item
/// gets its own outcome (accepted, duplicate, rejected with a reason).
pub async fn reports(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Json(b): Json<ReportBatch>,
) -> ApiResult<Json<narwhal_turnout::BatchResult>> {
    let w = watcher(&s, &caller).await?;
    let channel = b.channel.unwrap_or(Channel::App);
    if channel != Channel::App {
        return Err(ApiError::invalid(
            "a poll watcher reports on the app channel",
        ));
    }
    let res = service(&s)
        .ingest(&Reporter::Watcher(w), channel, &b.reports)
        .await?;
    Ok(Json(res))
}

/// `GET /api/v1/turnout/summary`: turnout per precinct and per polling place.
pub async fn summary(State(s): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    let t = service(&s);
    let precincts = t.by_precinct().await?;
    let places = t.places().await?;
    let universe: i64 = precincts.iter().map(|p| p.universe).sum();
    let voted: i64 = precincts.iter().map(|p| p.voted).sum();
    Ok(Json(
        json!({"universe": universe, "voted": voted, "precincts": precincts, "polling_places": places}),
    ))
}
