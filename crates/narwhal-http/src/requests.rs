//! The per-request middleware: request id, tracing span, timeout, error bodies, metrics.

use crate::error::{error_body, ApiError, ErrorInfo};
use crate::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::RngCore;
use std::time::Instant;
use tracing::Instrument;

/// The header carrying the request id, in and out.
pub const REQUEST_ID: &str = "x-request-id";

/// The request's id, in request extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Accepts a caller's id when it is short, printable ASCII; otherwise makes one.
fn request_id(req: &Request) -> String {
    req.headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| {
            let mut b = [0u8; 12];
            rand::thread_rng().fill_bytes(&mut b);
            crate::auth::hex(&b)
        })
}

/// Middleware around every request: request id, span, timeout (`request_timeout`, or `upload_timeout` on [`crate::uploads::LONG_ROUTES`]), JSON error bodies, metrics and one log line.
pub async fn track(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request_id(&req);
    let method = req.method().as_str().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id, method = %method, route = %route);
    let long = crate::uploads::LONG_ROUTES
        .iter()
        .any(|(m, r)| *m == method && *r == route);
    let timeout = if long {
        state.config.upload_timeout
    } else {
        state.config.request_timeout
    };
    let res = tokio::time::timeout(timeout, next.run(req).instrument(span.clone())).await;
    let mut res = match res {
        Ok(r) => r,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "the request took too long",
        )
        .into_response(),
    };
    let status = res.status();
    let info = res.extensions().get::<ErrorInfo>().cloned().or_else(|| {
        (status == StatusCode::METHOD_NOT_ALLOWED).then(|| ErrorInfo {
            code: "method_not_allowed",
            message: "this route does not answer that method".into(),
        })
    });
    if let Some(info) = info {
        if status.is_server_error() {
            span.in_scope(|| {
                tracing::error!(status = status.as_u16(), code = info.code, "request failed")
            });
        }
        let headers = std::mem::take(res.headers_mut());
        let mut fresh = (
            status,
            axum::Json(error_body(info.code, &info.message, &id)),
        )
            .into_response();
        for (k, v) in headers.iter() {
            if k != axum::http::header::CONTENT_TYPE && k != axum::http::header::CONTENT_LENGTH {
                fresh.headers_mut().insert(k.clone(), v.clone());
            }
        }
        res = fresh;
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(REQUEST_ID, v);
    }
    // Shed load says when to come back: every 503 carries Retry-After, so clients back
    // off instead of hammering a node that is already short of database.
    if status == StatusCode::SERVICE_UNAVAILABLE
        && !res.headers().contains_key(axum::http::header::RETRY_AFTER)
    {
        res.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            HeaderValue::from_static("1"),
        );
    }
    let secs = started.elapsed().as_secs_f64();
    state
        .metrics
        .observe(&method, &route, status.as_u16(), secs);
    span.in_scope(|| {
        tracing::info!(
            status = status.as_u16(),
            latency_ms = (secs * 1000.0) as u64,
            "request"
        )
    });
    res
}

/// Unknown routes.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}
