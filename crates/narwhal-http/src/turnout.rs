//! `/api/v1/turnout`: election day. Watchers log in with a link token or a PIN, check
//! their readiness, read their polling place's remaining list and send batches of
//! reports; staff read turnout per precinct, watch the live dashboard (server-sent
//! events), set the expected curve, build turfs and call lists and export what
//! remains of them, and import early-vote files.
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
use narwhal_store::auth::WatcherSession;
use narwhal_store::turnout::Watcher;
use narwhal_turnout::{Channel, LoginFailure, ReportItem, Reporter, Turnout, TurnoutError};
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// How long a node trusts what it read of a watcher's session (the session, its user
/// and the watcher row) before reading it again: a watcher's phone posts several
/// batches a second, and two lookups per batch were most of the database's
/// transactions on election day. Logging out on this node ends a session at once; a
/// login disabled, re-issued (to another polling place) or logged out on another node
/// stops working within this time. Session and login expiry times are checked on every
/// request.
pub const WATCHER_LOGIN_TTL: Duration = Duration::from_secs(1);
/// Sessions a node remembers at most (far above one per watcher of a node).
const WATCHER_LOGINS_MAX: usize = 100_000;

/// One node's recently read watcher sessions, by session hash (see
/// [`WATCHER_LOGIN_TTL`]). Holds hashes only, never a session id.
#[derive(Default)]
pub struct WatcherLogins {
    map: Mutex<HashMap<String, (Instant, Arc<WatcherSession>)>>,
}

impl std::fmt::Debug for WatcherLogins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WatcherLogins")
    }
}

impl WatcherLogins {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Arc<WatcherSession>)>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live session with this hash: remembered if read less than
    /// [`WATCHER_LOGIN_TTL`] ago, else read now. `None` for an unknown, expired or
    /// disabled one.
    async fn resolve(
        &self,
        store: &narwhal_store::Store,
        token_hash: &str,
    ) -> ApiResult<Option<Arc<WatcherSession>>> {
        let now = Instant::now();
        let known = self
            .lock()
            .get(token_hash)
            .filter(|(at, _)| now.duration_since(*at) < WATCHER_LOGIN_TTL)
            .map(|(_, s)| s.clone());
        let session = match known {
            Some(s) => s,
            None => {
                let Some(s) = store.watcher_session(token_hash).await? else {
                    self.forget(token_hash);
                    return Ok(None);
                };
                let s = Arc::new(s);
                let mut map = self.lock();
                if map.len() >= WATCHER_LOGINS_MAX {
                    map.retain(|_, (at, _)| now.duration_since(*at) < WATCHER_LOGIN_TTL);
                    if map.len() >= WATCHER_LOGINS_MAX {
                        map.clear();
                    }
                }
                map.insert(token_hash.to_string(), (now, s.clone()));
                s
            }
        };
        Ok(Some(session).filter(|s| s.session_expires_at > crate::now_ms()))
    }

    /// Forgets a session (logged out on this node).
    pub fn forget(&self, token_hash: &str) {
        self.lock().remove(token_hash);
    }
}

/// The watcher row of the caller of a watcher route, put in request extensions by
/// [`crate::auth::require`] beside the [`Caller`]; `None` for anyone else (staff,
/// tokens, volunteers without a polling place).
#[derive(Debug, Clone)]
pub struct CallerWatcher(Option<Watcher>);

/// Authenticates the caller of a watcher route. A session cookie is resolved through
/// this node's [`WatcherLogins`]; a bearer token as on any route (it is no watcher).
pub(crate) async fn authenticate_watcher(
    s: &AppState,
    headers: &axum::http::HeaderMap,
) -> ApiResult<Option<(Caller, CallerWatcher)>> {
    let sid = match crate::auth::cookie(headers, crate::auth::SESSION_COOKIE) {
        Some(sid) if !headers.contains_key(axum::http::header::AUTHORIZATION) => sid,
        _ => {
            return Ok(crate::auth::authenticate(s, headers)
                .await?
                .map(|c| (c, CallerWatcher(None))))
        }
    };
    let Some(w) = s
        .turnout
        .logins
        .resolve(&s.store, &crate::auth::sha256_hex(&sid))
        .await?
    else {
        return Ok(None);
    };
    let caller = Caller {
        actor: format!("user:{}", w.username),
        scopes: w.role.scopes().to_vec(),
        session: Some(sid),
        user: Some(w.user),
    };
    Ok(Some((caller, CallerWatcher(w.watcher.clone()))))
}

/// The watcher row of the calling user; 403 for anyone else, 401 once it expired.
fn watcher(w: &CallerWatcher) -> ApiResult<Watcher> {
    let w = w.0.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this is for poll watchers: log in with your watcher link or PIN",
        )
    })?;
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
    Extension(caller): Extension<CallerWatcher>,
) -> ApiResult<Json<narwhal_turnout::Readiness>> {
    let w = watcher(&caller)?;
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
    Extension(caller): Extension<CallerWatcher>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let w = watcher(&caller)?;
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
    Extension(caller): Extension<CallerWatcher>,
    Json(b): Json<ReportBatch>,
) -> ApiResult<Json<narwhal_turnout::BatchResult>> {
    let w = watcher(&caller)?;
    let channel = b.channel.unwrap_or(Channel::App);
    if channel != Channel::App {
        return Err(ApiError::invalid(
            "a poll watcher reports on the app channel",
        ));
    }
    let res = s
        .turnout
        .report(&Reporter::Watcher(w), channel, &b.reports)
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

/// The election-day side of a node: its live figures and the connection pool the
/// ingest uses. Cheap to clone; built inside the runtime (the pool connects lazily).
#[derive(Clone, Debug)]
pub struct TurnoutEdge {
    /// The live figures every dashboard and watcher stream of this node shares.
    pub live: narwhal_turnout::live::LiveTurnout,
    /// The ingest service, on a pool of its own ([`INGEST_POOL`] connections on
    /// PostgreSQL) so that a blast, an import or a flood of staff queries holding the
    /// shared pool cannot take election day's connections, and with this node's
    /// group commit.
    service: Turnout,
    /// Watcher sessions read lately (see [`WATCHER_LOGIN_TTL`]).
    pub logins: Arc<WatcherLogins>,
}

/// Connections of the ingest's own pool (PostgreSQL).
pub const INGEST_POOL: u32 = 8;

impl TurnoutEdge {
    /// The edge over `store`.
    pub fn new(store: &narwhal_store::Store) -> Self {
        Self {
            live: narwhal_turnout::live::LiveTurnout::new(store.clone()),
            service: Turnout::with_group_commit(store.dedicated(INGEST_POOL)),
            logins: Arc::new(WatcherLogins::default()),
        }
    }

    /// The service over the ingest's pool (batches share transactions).
    pub fn ingest(&self) -> Turnout {
        self.service.clone()
    }

    /// Ingests a batch and wakes this node's live figures when something changed.
    pub async fn report(
        &self,
        reporter: &Reporter,
        channel: Channel,
        items: &[ReportItem],
    ) -> Result<narwhal_turnout::BatchResult, TurnoutError> {
        let res = self.ingest().ingest(reporter, channel, items).await?;
        if res.accepted > 0 {
            self.live.nudge();
        }
        Ok(res)
    }
}

/// `GET /api/v1/turnout/dashboard`: voted against the universe and the expected curve,
/// per state, county, polling place and precinct, hour by hour; the same figures the
/// live stream sends.
pub async fn dashboard(
    State(s): State<AppState>,
) -> ApiResult<Json<narwhal_turnout::live::Dashboard>> {
    Ok(Json(narwhal_turnout::live::compute(&s.store).await?))
}

type EventStream = axum::response::sse::Sse<
    axum::response::sse::KeepAliveStream<
        futures_util::stream::BoxStream<'static, Result<axum::response::sse::Event, axum::Error>>,
    >,
>;

/// The latest figures as server-sent events: the current ones at once, then each new
/// computation `map` turns into an event (`None`: nothing to send for it).
fn live_events<F>(s: &AppState, map: F) -> EventStream
where
    F: Fn(&narwhal_turnout::live::Dashboard) -> Option<axum::response::sse::Event> + Send + 'static,
{
    use axum::response::sse::{KeepAlive, Sse};
    use futures_util::StreamExt;
    let rx = s.turnout.live.subscribe();
    let stream =
        futures_util::stream::unfold((rx, map, false), |(mut rx, map, waited)| async move {
            let mut waited = waited;
            loop {
                if waited && rx.changed().await.is_err() {
                    return None;
                }
                waited = true;
                let latest = rx.borrow_and_update().clone();
                if let Some(ev) = latest.as_deref().and_then(&map) {
                    return Some((Ok(ev), (rx, map, true)));
                }
            }
        });
    Sse::new(stream.boxed())
        .keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15)))
}

/// `GET /api/v1/turnout/live`: the dashboard as server-sent events (`turnout`, with
/// the change clock as the event id), within a second of any report on any node.
pub async fn live(State(s): State<AppState>) -> EventStream {
    live_events(&s, |d| {
        axum::response::sse::Event::default()
            .event("turnout")
            .id(d.seq.to_string())
            .json_data(d)
            .ok()
    })
}

/// `GET /api/v1/turnout/me/live`: a watcher's polling place figures as server-sent
/// events (`place`), sent when they change.
pub async fn my_live(
    State(s): State<AppState>,
    Extension(caller): Extension<CallerWatcher>,
) -> ApiResult<EventStream> {
    let w = watcher(&caller)?;
    let last = std::sync::Mutex::new(None::<(i64, i64)>);
    Ok(live_events(&s, move |d| {
        let f = d
            .place(&w.polling_place)
            .map(|p| (p.figures.universe, p.figures.voted))
            .unwrap_or((0, 0));
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        if *last == Some(f) {
            return None;
        }
        *last = Some(f);
        axum::response::sse::Event::default()
            .event("place")
            .id(d.seq.to_string())
            .json_data(json!({"polling_place": w.polling_place, "universe": f.0, "voted": f.1, "remaining": f.0 - f.1}))
            .ok()
    }))
}

/// `GET /api/v1/turnout/curve`: the expected turnout curve in force.
pub async fn curve(
    State(s): State<AppState>,
) -> ApiResult<Json<narwhal_turnout::live::ExpectedCurve>> {
    Ok(Json(narwhal_turnout::live::curve(&s.store).await?))
}

/// `PUT /api/v1/turnout/curve`: sets the expected curve for every node.
pub async fn set_curve(
    State(s): State<AppState>,
    Json(c): Json<narwhal_turnout::live::ExpectedCurve>,
) -> ApiResult<Json<narwhal_turnout::live::ExpectedCurve>> {
    narwhal_turnout::live::set_curve(&s.store, &c)
        .await
        .map_err(ApiError::invalid)?;
    s.turnout.live.nudge();
    Ok(Json(c))
}

/// `GET /api/v1/turnout/lists`: every turf and call list with what remains of it.
pub async fn lists(State(s): State<AppState>) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(json!({"lists": service(&s).lists().await?})))
}

/// `POST /api/v1/turnout/lists`: a turf or call list from a segment, a polling place
/// or a precinct (or empty, to assign people).
pub async fn create_list(
    State(s): State<AppState>,
    Json(b): Json<narwhal_turnout::lists::NewGotvList>,
) -> ApiResult<(StatusCode, Json<narwhal_store::turnout_live::GotvList>)> {
    Ok((
        StatusCode::CREATED,
        Json(service(&s).create_list(&b).await?),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
/// Paging of a list's remaining members.
pub struct PageQuery {
    /// The last person id of the previous page.
    pub after: Option<i64>,
    /// At most this many (1 to 10000, default 500).
    pub limit: Option<i64>,
}

/// `GET /api/v1/turnout/lists/{id}`: the list's counts and a page of who remains.
pub async fn list_remaining(
    State(s): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<i64>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let t = service(&s);
    let list = t.list(id).await?;
    let limit = q.limit.unwrap_or(500).clamp(1, 10_000);
    let voters = t.list_remaining(id, q.after.map(PersonId), limit).await?;
    let next = if voters.len() as i64 == limit {
        voters.last().map(|v| v.person_id)
    } else {
        None
    };
    Ok(Json(
        json!({"list": list, "voters": voters, "next_after": next}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
/// The body of `POST /api/v1/turnout/lists/{id}/members`.
pub struct Assign {
    /// People to assign; those outside the GOTV universe are skipped.
    pub person_ids: Vec<i64>,
}

/// `POST /api/v1/turnout/lists/{id}/members`: assign people to a list.
pub async fn assign(
    State(s): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<i64>,
    Json(b): Json<Assign>,
) -> ApiResult<Json<serde_json::Value>> {
    if b.person_ids.len() > 10_000 {
        return Err(ApiError::invalid("at most 10000 people at once"));
    }
    let ids: Vec<PersonId> = b.person_ids.iter().map(|i| PersonId(*i)).collect();
    let added = service(&s).assign(id, &ids).await?;
    Ok(Json(json!({"added": added})))
}

/// `GET /api/v1/turnout/lists/{id}/export.csv`: a turf's walk sheet (address order)
/// or a call list's call sheet (phones), of who remains now.
pub async fn export_list(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    axum::extract::Path(id): axum::extract::Path<i64>,
) -> ApiResult<Response> {
    let (list, bytes) = service(&s).export_list(id).await?;
    crate::lists::export_audit(&s.store, &caller, "gotv_list", id).await?;
    let name = format!("{}-{}.csv", list.kind, list.id);
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "text/csv; charset=utf-8".to_string(),
            ),
            (
                axum::http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        bytes,
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
/// The body of `POST /api/v1/turnout/early-vote`.
pub struct NewEarlyVote {
    /// A file under the upload directory (`PUT /api/v1/uploads/{name}` first).
    pub path: String,
    /// The mapping, as TOML text (`[source] name`, `[columns] voter_id`, `voted_on`).
    pub mapping: String,
}

/// `POST /api/v1/turnout/early-vote`: import a state's early-vote or absentee file;
/// every supporter it names leaves the lists (channel `early_vote`, idempotent).
pub async fn early_vote(
    State(s): State<AppState>,
    Json(b): Json<NewEarlyVote>,
) -> ApiResult<Json<narwhal_turnout::early::EarlyVoteCounts>> {
    let mapping = narwhal_turnout::early::EarlyVoteMapping::parse(&b.mapping).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_mapping",
            e.to_string(),
        )
    })?;
    let path = crate::imports::resolve_upload(&s.config.upload_dir, &b.path)?;
    let counts = s
        .turnout
        .ingest()
        .import_early_vote(&path, &mapping)
        .await?;
    s.turnout.live.nudge();
    Ok(Json(counts))
}

/// The JSON Schemas of the election-day bodies added with the live dashboard, lists
/// and early vote; merged into [`crate::routes::schemas`].
pub fn schemas() -> serde_json::Map<String, serde_json::Value> {
    let r = |n: &str| json!({"$ref": format!("#/components/schemas/{n}")});
    let int = json!({"type": "integer"});
    let figures = |extra: serde_json::Value| {
        let mut o = json!({"type": "object",
            "required": ["universe", "voted", "voted_pct", "expected", "lag", "series"],
            "properties": {
                "universe": int, "voted": int,
                "voted_pct": {"type": "number", "description": "percent of the universe, one decimal"},
                "expected": {"type": "integer", "description": "voted expected by now from the curve"},
                "lag": {"type": "integer", "description": "expected minus voted; positive when behind"},
                "series": {"type": "array", "items": int, "description": "cumulative voted at the end of each hour since the polls opened, up to now"}}});
        for (k, v) in extra.as_object().into_iter().flatten() {
            o["properties"][k] = v.clone();
            if let Some(req) = o["required"].as_array_mut() {
                req.push(json!(k));
            }
        }
        o
    };
    let s = json!({
        "ExpectedCurve": {"type": "object", "additionalProperties": false, "required": ["opens_at", "hourly_pct"], "properties": {
            "opens_at": {"type": "integer", "description": "when the polls open, ms since the epoch", "examples": [1730800800000i64]},
            "hourly_pct": {"type": "array", "minItems": 1, "maxItems": 48, "items": {"type": "number", "minimum": 0, "maximum": 100},
                "description": "cumulative percent of the universe expected to have voted by the end of each hour", "examples": [[7.0, 13.0, 18.0, 23.0]]}}},
        "TurnoutFigures": figures(json!({})),
        "CountyFigures": figures(json!({"county": {"type": "string"}})),
        "PlaceFigures": figures(json!({"polling_place": {"type": "string"}})),
        "PrecinctFigures": figures(json!({"county": {"type": "string"}, "precinct": {"type": "string"}, "polling_place": {"type": "string"}})),
        "TurnoutDashboard": {"type": "object", "required": ["seq", "at", "curve", "expected_pct", "state", "counties", "polling_places", "precincts"], "properties": {
            "seq": {"type": "integer", "description": "the change clock these figures reflect"},
            "at": {"type": "integer", "description": "when computed, ms"},
            "curve": r("ExpectedCurve"), "expected_pct": {"type": "number"},
            "state": r("TurnoutFigures"),
            "counties": {"type": "array", "items": r("CountyFigures")},
            "polling_places": {"type": "array", "items": r("PlaceFigures")},
            "precincts": {"type": "array", "items": r("PrecinctFigures"), "description": "the most behind the curve first"}}},
        "NewGotvList": {"type": "object", "additionalProperties": false, "required": ["name", "kind"],
            "description": "At most one of segment, polling_place, precinct; none makes an empty list to assign people to.",
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 200, "examples": ["Lincoln doors"]},
                "kind": {"type": "string", "enum": ["turf", "calls"], "examples": ["turf"]},
                "segment": {"type": ["integer", "null"], "examples": [null]},
                "polling_place": {"type": ["string", "null"], "examples": ["FRA-12"]},
                "precinct": {"type": ["object", "null"], "additionalProperties": false, "required": ["county", "precinct"],
                    "properties": {"county": {"type": "string"}, "precinct": {"type": "string"}}, "examples": [null]}}},
        "GotvList": {"type": "object", "required": ["id", "kind", "name", "source", "created_at", "members", "remaining"], "properties": {
            "id": int, "kind": {"type": "string", "enum": ["turf", "calls"]}, "name": {"type": "string"},
            "source": {"type": "string"}, "created_at": int, "members": int,
            "remaining": {"type": "integer", "description": "members not yet reported as voted"}}},
        "GotvLists": {"type": "object", "required": ["lists"], "properties": {"lists": {"type": "array", "items": r("GotvList")}}},
        "ListRow": {"type": "object", "required": ["person_id", "voter_code", "precinct", "polling_place"], "properties": {
            "person_id": int, "voter_code": {"type": "string"},
            "first_name": {"type": ["string", "null"]}, "last_name": {"type": ["string", "null"]},
            "address": {"type": ["string", "null"]}, "address2": {"type": ["string", "null"]},
            "city": {"type": ["string", "null"]}, "zip": {"type": ["string", "null"]},
            "phone": {"type": ["string", "null"]}, "precinct": {"type": "string"}, "polling_place": {"type": "string"}}},
        "GotvListPage": {"type": "object", "required": ["list", "voters"], "properties": {
            "list": r("GotvList"), "voters": {"type": "array", "items": r("ListRow")},
            "next_after": {"type": ["integer", "null"]}}},
        "GotvAssign": {"type": "object", "additionalProperties": false, "required": ["person_ids"], "properties": {
            "person_ids": {"type": "array", "items": int, "maxItems": 10000, "examples": [[12, 13]]}}},
        "NewEarlyVote": {"type": "object", "additionalProperties": false, "required": ["path", "mapping"], "properties": {
            "path": {"type": "string", "examples": ["absentee-2024-11-01.csv"]},
            "mapping": {"type": "string", "description": "TOML: [source] name; [columns] voter_id, voted_on (optional)",
                "examples": ["[source]\nname = \"oh-absentee\"\n[columns]\nvoter_id = \"SOS_VOTERID\"\nvoted_on = \"DATE_RETURNED\"\n"]}}},
        "EarlyVoteCounts": {"type": "object", "required": ["rows", "reported", "already", "not_in_universe", "unknown_voter", "rejected"], "properties": {
            "rows": int, "reported": {"type": "integer", "description": "supporters newly off the lists"},
            "already": {"type": "integer", "description": "reported by this source before"},
            "not_in_universe": int, "unknown_voter": int,
            "rejected": {"type": "integer", "description": "rows that could not be read; see rejects_path"},
            "rejects_path": {"type": ["string", "null"]}}}
    });
    s.as_object().cloned().unwrap_or_default()
}
