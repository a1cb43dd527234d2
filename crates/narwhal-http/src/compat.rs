//! The Stripe-compatible API under `/v1/` (the redundant path): the HTTP half of
//! [`narwhal_pay::compat`], which holds the logic and documents the subset.
//!
//! These routes speak Stripe's wire format, not Narwhal's: form-encoded bodies,
//! `Authorization: Bearer KEY`, `Idempotency-Key`, and errors in Stripe's envelope
//! (`{"error": {"type", "code", "message", "param"}}`). That is why they sit outside
//! the OpenAPI route table; `docs/api.md` documents them.
//!
//! The key is a Narwhal API token (`nwl_...`, made with `narwhal admin token`) holding
//! `donations:write` (create, confirm, retrieve) and `donations:refund` (refunds). A
//! missing or unknown key is 401 and a key without the scope 403, as Stripe answers.
//! Idempotency keys and intents are scoped to the token: another key sees neither.

use crate::auth;
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use narwhal_domain::Scope;
use narwhal_pay::compat::{Compat, Reply};
use narwhal_pay::stripe::form::Fields;
use narwhal_pay::stripe::wire::{error_type, ApiError};

/// The routes, merged into the application's router.
pub fn router() -> axum::Router<AppState> {
    axum::Router::new()
        .route("/v1/payment_intents", post(create_intent))
        .route("/v1/payment_intents/{id}", get(retrieve_intent))
        .route("/v1/payment_intents/{id}/confirm", post(confirm_intent))
        .route("/v1/refunds", post(create_refund))
}

fn respond(reply: Reply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut res = (status, axum::Json(reply.body)).into_response();
    if reply.replayed {
        res.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    res
}

fn stripe_error(status: u16, kind: &str, message: &str, code: Option<&str>) -> Reply {
    let mut e = ApiError::new(kind, message);
    if let Some(c) = code {
        e = e.code(c);
    }
    Reply {
        status,
        body: serde_json::to_value(e.envelope()).unwrap_or_default(),
        replayed: false,
    }
}

/// The service and the caller's idempotency scope, or the Stripe-shaped refusal.
async fn caller(
    state: &AppState,
    headers: &HeaderMap,
    scope: Scope,
) -> Result<(Compat, String), Reply> {
    let unauthenticated = || {
        stripe_error(
            401,
            error_type::INVALID_REQUEST_ERROR,
            "Invalid API Key provided.",
            None,
        )
    };
    // Only API tokens: a browser session is not a secret key.
    if headers.get(axum::http::header::AUTHORIZATION).is_none() {
        return Err(stripe_error(
            401,
            error_type::INVALID_REQUEST_ERROR,
            "You did not provide an API key. Provide it as 'Authorization: Bearer KEY'.",
            None,
        ));
    }
    let c = match auth::authenticate(state, headers).await {
        Ok(Some(c)) if c.session.is_none() => c,
        Ok(_) => return Err(unauthenticated()),
        Err(e) if e.status == StatusCode::UNAUTHORIZED => return Err(unauthenticated()),
        Err(_) => {
            return Err(stripe_error(
                500,
                error_type::API_ERROR,
                "The key could not be checked; retry the request.",
                None,
            ))
        }
    };
    if !c.has(scope) {
        return Err(stripe_error(
            403,
            error_type::INVALID_REQUEST_ERROR,
            &format!(
                "The provided key does not have the {} permission.",
                scope.as_str()
            ),
            Some("permission_denied"),
        ));
    }
    let Some(compat) = state.compat.clone() else {
        return Err(stripe_error(
            503,
            error_type::API_ERROR,
            "Donations are not configured on this node.",
            None,
        ));
    };
    // The scope of keys and intents is the API key itself (token names are not
    // unique): a prefix of the hash the token is stored under.
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default();
    Ok((compat, format!("key:{}", &auth::sha256_hex(bearer)[..24])))
}

fn form(body: &Bytes) -> Result<Fields, Reply> {
    let text = std::str::from_utf8(body).map_err(|_| {
        stripe_error(
            400,
            error_type::INVALID_REQUEST_ERROR,
            "The body must be UTF-8, form-encoded.",
            Some("parameter_invalid_string"),
        )
    })?;
    Fields::parse(text).map_err(|_| {
        stripe_error(
            400,
            error_type::INVALID_REQUEST_ERROR,
            "The body could not be decoded as application/x-www-form-urlencoded.",
            Some("parameter_invalid_string"),
        )
    })
}

fn idempotency_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
}

/// What a POST handler works with: the service, the caller's scope, the form and the
/// idempotency key.
struct Post {
    compat: Compat,
    scope: String,
    fields: Fields,
    key: Option<String>,
}

async fn post_request(
    state: &AppState,
    headers: &HeaderMap,
    needs: Scope,
    body: &Bytes,
) -> Result<Post, Reply> {
    let (compat, scope) = caller(state, headers, needs).await?;
    Ok(Post {
        compat,
        scope,
        fields: form(body)?,
        key: idempotency_key(headers),
    })
}

async fn create_intent(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    match post_request(&state, &headers, Scope::DonationsWrite, &body).await {
        Ok(p) => respond(
            p.compat
                .create_intent(&p.scope, p.key.as_deref(), &p.fields)
                .await,
        ),
        Err(r) => respond(r),
    }
}

async fn confirm_intent(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match post_request(&state, &headers, Scope::DonationsWrite, &body).await {
        Ok(p) => respond(
            p.compat
                .confirm_intent(&p.scope, p.key.as_deref(), &id, &p.fields)
                .await,
        ),
        Err(r) => respond(r),
    }
}

async fn retrieve_intent(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match caller(&state, &headers, Scope::DonationsWrite).await {
        Ok((compat, scope)) => respond(compat.retrieve_intent(&scope, &id).await),
        Err(r) => respond(r),
    }
}

async fn create_refund(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    match post_request(&state, &headers, Scope::DonationsRefund, &body).await {
        Ok(p) => respond(
            p.compat
                .create_refund(&p.scope, p.key.as_deref(), &p.fields)
                .await,
        ),
        Err(r) => respond(r),
    }
}
