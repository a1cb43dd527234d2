//! Who is calling and what they may do. Denied unless a scope grants it.
//!
//! Two kinds of credentials: `Authorization: Bearer <token>` (API tokens, scopes stored
//! with the token) and the `narwhal_session` cookie (staff logins, scopes from the
//! user's role). Only SHA-256 hashes of tokens and session ids are stored.

use crate::error::{ApiError, ApiResult, Json};
use crate::routes::Access;
use crate::AppState;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, COOKIE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use narwhal_domain::Scope;
use narwhal_store::auth::ApiToken;
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "narwhal_session";
/// How long a login lasts.
pub const SESSION_TTL_MS: i64 = 12 * 60 * 60 * 1000;

/// An authenticated caller, put in request extensions by [`require`].
#[derive(Debug, Clone)]
pub struct Caller {
    /// `user:NAME` or `token:NAME`, written to the audit log.
    pub actor: String,
    /// What the caller may do.
    pub scopes: Vec<Scope>,
    /// The session id (plaintext) when the caller came by cookie; the CSRF key.
    pub session: Option<String>,
    /// The logged-in user, when the caller came by cookie (tokens have none).
    pub user: Option<narwhal_domain::UserId>,
}

impl Caller {
    /// True when the caller holds `scope`.
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// Hashes a password with Argon2id and a random salt (PHC string).
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// True when `password` matches the stored PHC hash.
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A new random secret: `(plaintext, sha256 hex)`. Store the hash, show the plaintext once.
pub fn new_token() -> (String, String) {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    let plain = format!("nwl_{}", hex(&b));
    let hash = sha256_hex(&plain);
    (plain, hash)
}

/// SHA-256 of a string, lower-case hex: how tokens and session ids are stored.
pub fn sha256_hex(s: &str) -> String {
    hex(&Sha256::digest(s.as_bytes()))
}

pub(crate) fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

/// The CSRF token of a session: a hash of the session id, so nothing more is stored.
pub fn csrf_token(session: &str) -> String {
    sha256_hex(&format!("csrf:{session}"))
}

/// Reads a cookie's value from the request headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// API tokens this node found live recently, by hash, each trusted for the
/// configured time ([`crate::HttpConfig::token_cache_ttl`]) before it is read again.
///
/// A client sends its token with every request; reading the token table each time
/// was one database statement per request, and at a donation peak on PostgreSQL it
/// was about a third of the statements a gift cost (2,000 gifts a second took 1,600
/// with errors with it, about 1,850 without). Only live tokens are kept: an unknown or
/// revoked one is looked up every time, so a new token works at once and a revoked one
/// stops working on every node within the time.
#[derive(Default)]
pub struct TokenCache {
    entries: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, ApiToken)>>,
}

/// Tokens held at most; past it the cache starts again empty (campaigns have tens).
const TOKENS_CACHED: usize = 10_000;

impl TokenCache {
    /// The token with this hash, if it was found live less than `ttl` ago.
    pub fn get(&self, hash: &str, ttl: std::time::Duration) -> Option<ApiToken> {
        let entries = self.entries.lock().ok()?;
        let (at, t) = entries.get(hash)?;
        (at.elapsed() < ttl).then(|| t.clone())
    }

    /// Remembers a token just found live (nothing when `ttl` is zero).
    pub fn put(&self, hash: String, t: &ApiToken, ttl: std::time::Duration) {
        if ttl.is_zero() || t.revoked {
            return;
        }
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= TOKENS_CACHED {
                entries.clear();
            }
            entries.insert(hash, (std::time::Instant::now(), t.clone()));
        }
    }
}

/// Resolves credentials, if any. A presented but unknown credential is an error
/// (`Err(unauthenticated)`), not anonymity.
pub async fn authenticate(state: &AppState, headers: &HeaderMap) -> ApiResult<Option<Caller>> {
    if let Some(v) = headers.get(AUTHORIZATION) {
        let token = v
            .to_str()
            .ok()
            .and_then(|s| s.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(ApiError::unauthenticated)?;
        let hash = sha256_hex(token);
        let ttl = state.config.token_cache_ttl;
        let t = match state.tokens.get(&hash, ttl) {
            Some(t) => t,
            None => {
                let t = state
                    .store
                    .token_by_hash(&hash)
                    .await?
                    .ok_or_else(ApiError::unauthenticated)?;
                state.tokens.put(hash, &t, ttl);
                t
            }
        };
        return Ok(Some(Caller {
            actor: format!("token:{}", t.name),
            scopes: t.scopes,
            session: None,
            user: None,
        }));
    }
    if let Some(sid) = cookie(headers, SESSION_COOKIE) {
        return match state.store.session_user(&sha256_hex(&sid)).await? {
            Some(u) => Ok(Some(Caller {
                actor: format!("user:{}", u.username),
                scopes: u.role.scopes().to_vec(),
                session: Some(sid),
                user: Some(u.id),
            })),
            None => Ok(None),
        };
    }
    Ok(None)
}

/// Middleware for one route: authenticate, check the route's scope, hand the caller on.
/// Public routes pass; watcher routes need any credentials here and a watcher row in
/// their handler.
pub async fn require(
    State((state, access)): State<(AppState, Access)>,
    mut req: Request,
    next: Next,
) -> Response {
    if access == Access::Public {
        return next.run(req).await;
    }
    if access == Access::Watcher {
        return match crate::turnout::authenticate_watcher(&state, req.headers()).await {
            Ok(Some((caller, watcher))) => {
                req.extensions_mut().insert(caller);
                req.extensions_mut().insert(watcher);
                next.run(req).await
            }
            Ok(None) => ApiError::unauthenticated().into_response(),
            Err(e) => e.into_response(),
        };
    }
    let caller = match authenticate(&state, req.headers()).await {
        Ok(Some(c)) => c,
        Ok(None) => return ApiError::unauthenticated().into_response(),
        Err(e) => return e.into_response(),
    };
    if let Some(scope) = access.scope() {
        if !caller.has(scope) {
            return ApiError::forbidden(scope.as_str()).into_response();
        }
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// Checks a username and password; `None` when wrong (without saying which part).
pub async fn check_login(
    state: &AppState,
    username: &str,
    password: &str,
) -> ApiResult<Option<narwhal_store::auth::User>> {
    let user = state.store.user_by_name(username.trim()).await?;
    let Some(user) = user else {
        // Same work as a real check, so timing does not reveal which usernames exist.
        let _ = verify_password(password, dummy_hash());
        return Ok(None);
    };
    if user.disabled || !verify_password(password, &user.password_hash) {
        return Ok(None);
    }
    Ok(Some(user))
}

/// A real hash of nothing in particular, for equal-time misses.
fn dummy_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| hash_password("narwhal-dummy").unwrap_or_default())
}

/// Starts a session for a user; returns the `Set-Cookie` value.
pub async fn start_session(
    state: &AppState,
    user: &narwhal_store::auth::User,
) -> ApiResult<HeaderValue> {
    let (sid, hash) = new_token();
    state
        .store
        .create_session(&hash, user.id, SESSION_TTL_MS)
        .await?;
    session_cookie(&sid, SESSION_TTL_MS / 1000, state.config.cookie_secure)
}

/// A `Set-Cookie` value for the session cookie (empty value and age 0 clears it).
pub fn session_cookie(value: &str, max_age_s: i64, secure: bool) -> ApiResult<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_s}{secure}"
    ))
    .map_err(|_| ApiError::internal())
}

/// Ends the caller's session, if it came by cookie; returns the clearing cookie.
pub async fn end_session(state: &AppState, headers: &HeaderMap) -> ApiResult<HeaderValue> {
    if let Some(sid) = cookie(headers, SESSION_COOKIE) {
        let hash = sha256_hex(&sid);
        state.store.delete_session(&hash).await?;
        state.turnout.logins.forget(&hash);
    }
    session_cookie("", 0, state.config.cookie_secure)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
/// The body of `POST /api/v1/sessions`.
pub struct LoginBody {
    username: String,
    password: String,
}

/// `POST /api/v1/sessions`: log in with JSON, get the session cookie.
pub async fn api_login(
    State(state): State<AppState>,
    Json(body): Json<LoginBody>,
) -> ApiResult<Response> {
    let Some(user) = check_login(&state, &body.username, &body.password).await? else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "wrong username or password",
        ));
    };
    let cookie = start_session(&state, &user).await?;
    let mut r = (
        StatusCode::CREATED,
        axum::Json(serde_json::json!({"username": user.username, "role": user.role})),
    )
        .into_response();
    r.headers_mut().insert(SET_COOKIE, cookie);
    Ok(r)
}

/// `DELETE /api/v1/sessions`: log out.
pub async fn api_logout(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<Response> {
    let cookie = end_session(&state, &headers).await?;
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(SET_COOKIE, cookie);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_round_trip() {
        let h = hash_password("correct horse").unwrap_or_default();
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn tokens_hash_to_what_is_stored() {
        let (plain, hash) = new_token();
        assert_eq!(sha256_hex(&plain), hash);
        assert_ne!(new_token().0, plain);
        assert_eq!(hash.len(), 64);
    }

    #[test]
    fn reads_cookies() {
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_static("a=1; narwhal_session=abc; b=2"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "c"), None);
    }
}

#[cfg(test)]
mod token_cache_tests {
    use super::*;
    use std::time::Duration;

    fn token(revoked: bool) -> ApiToken {
        ApiToken {
            id: narwhal_domain::TokenId(1),
            name: "page".into(),
            scopes: vec![Scope::DonationsWrite],
            created_by: "test".into(),
            created_at: 0,
            revoked,
        }
    }

    #[test]
    fn keeps_live_tokens_for_the_time_only() {
        let c = TokenCache::default();
        let ttl = Duration::from_secs(60);
        assert!(c.get("h", ttl).is_none(), "unknown tokens are looked up");
        c.put("h".into(), &token(false), ttl);
        assert_eq!(c.get("h", ttl).map(|t| t.name), Some("page".to_string()));
        assert!(
            c.get("h", Duration::ZERO).is_none(),
            "past its time it is read again"
        );
        assert!(c.get("other", ttl).is_none());
    }

    #[test]
    fn never_keeps_a_revoked_token_or_anything_when_off() {
        let c = TokenCache::default();
        c.put("r".into(), &token(true), Duration::from_secs(60));
        assert!(c.get("r", Duration::from_secs(60)).is_none());
        c.put("z".into(), &token(false), Duration::ZERO);
        assert!(c.get("z", Duration::from_secs(60)).is_none());
    }
}
