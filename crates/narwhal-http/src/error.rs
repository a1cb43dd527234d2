//! The one API error type and its written policy.
//!
//! Every failure leaves the API as `{"error":{"code","message","request_id"}}` with a
//! stable machine `code`. Handlers return [`ApiError`]; its response carries an
//! [`ErrorInfo`] extension that the request middleware turns into the JSON body (it
//! knows the request id) and logs once when the fault is ours (5xx).
//!
//! | cause | status | code |
//! | --- | --- | --- |
//! | row not found, unknown route | 404 | `not_found` |
//! | unique key taken | 409 | `conflict` |
//! | request makes no sense against the data | 422 | `invalid` |
//! | JSON field of the wrong shape or unknown | 422 | `invalid_field` |
//! | body is not JSON | 400 | `malformed_json` |
//! | body not `application/json` | 415 | `unsupported_media_type` |
//! | body over the limit | 413 | `body_too_large` |
//! | no credentials / bad credentials | 401 | `unauthenticated` |
//! | credentials lack the scope | 403 | `forbidden` |
//! | database down or failing | 503 | `unavailable` |
//! | handler took too long | 503 | `timeout` |

use axum::extract::rejection::{FormRejection, JsonRejection, QueryRejection};
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use narwhal_people::PeopleError;
use narwhal_store::StoreError;
use serde::de::DeserializeOwned;

/// An error on its way to the caller.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable machine code (see the table above).
    pub code: &'static str,
    /// Safe to show: never contains field values, SQL or secrets.
    pub message: String,
}

/// What the middleware needs to render an error body; attached to the response.
#[derive(Debug, Clone)]
pub struct ErrorInfo {
    /// The stable machine code.
    pub code: &'static str,
    /// The safe message.
    pub message: String,
}

impl ApiError {
    /// An error with any status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    /// 404 `not_found`: "WHAT not found".
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }
    /// 422 `invalid`: the request makes no sense against the data.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }
    /// 400 with the given code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    /// 401 `unauthenticated`.
    pub fn unauthenticated() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "credentials are missing or not valid",
        )
    }
    /// 403 `forbidden`, naming the scope that is missing.
    pub fn forbidden(scope: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this needs the scope {scope}"),
        )
    }
    /// 503 `unavailable`: the database cannot be reached; worth retrying.
    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the database is unavailable; retry later",
        )
    }
    /// 500 `internal`: our fault; the details are logged, not shown.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "an internal error occurred",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // The body is written by the middleware, which knows the request id.
        let mut r = self.status.into_response();
        r.extensions_mut().insert(ErrorInfo {
            code: self.code,
            message: self.message,
        });
        r
    }
}

/// Renders the JSON error body.
pub fn error_body(code: &str, message: &str, request_id: &str) -> serde_json::Value {
    serde_json::json!({"error": {"code": code, "message": message, "request_id": request_id}})
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => Self::not_found(what),
            StoreError::Conflict(what) => Self::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("{what} already exists"),
            ),
            StoreError::Invalid(m) => Self::invalid(m),
            StoreError::Database(e) => {
                // Logged once here, without the query or its values.
                tracing::error!(error.kind = %db_kind(&e), "database error");
                Self::unavailable()
            }
            StoreError::Corrupt(_) => {
                tracing::error!("corrupt stored data");
                Self::internal()
            }
        }
    }
}

/// A category for the log; the error text itself may quote SQL or values.
fn db_kind(e: &dyn std::error::Error) -> &'static str {
    let s = e.to_string();
    if s.contains("pool timed out") {
        "pool_timeout"
    } else if s.to_ascii_lowercase().contains("connect") || s.contains("io error") {
        "connection"
    } else {
        "query"
    }
}

impl From<PeopleError> for ApiError {
    fn from(e: PeopleError) -> Self {
        match e {
            PeopleError::Invalid(m) => Self::invalid(m),
            PeopleError::NotFound(what) => Self::not_found(what),
            PeopleError::Conflict(m) => Self::new(StatusCode::CONFLICT, "conflict", m),
            PeopleError::Store(s) => s.into(),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonDataError(e) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                serde_message(&e.body_text()),
            ),
            JsonRejection::JsonSyntaxError(_) => {
                Self::bad_request("malformed_json", "the body is not valid JSON")
            }
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send Content-Type: application/json",
            ),
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => too_large(),
            other => Self::bad_request("bad_request", other.body_text()),
        }
    }
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "the request body is over the size limit",
    )
}

/// axum prefixes serde's message with its own text; keep serde's part.
fn serde_message(text: &str) -> String {
    text.split_once(": ")
        .map(|(_, m)| m.to_string())
        .unwrap_or_else(|| text.to_string())
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::bad_request("invalid_query", serde_message(&r.body_text()))
    }
}

impl From<FormRejection> for ApiError {
    fn from(r: FormRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return too_large();
        }
        Self::bad_request("invalid_form", serde_message(&r.body_text()))
    }
}

/// `Json<T>` whose rejections are [`ApiError`]s.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(v) = axum::Json::<T>::from_request(req, state).await?;
        Ok(Self(v))
    }
}

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `Query<T>` whose rejections are [`ApiError`]s.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> axum::extract::FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(v) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Self(v))
    }
}

/// What handlers return.
pub type ApiResult<T> = Result<T, ApiError>;

/// `Path<T>` whose rejections are [`ApiError`]s.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> axum::extract::FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(v) = axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::bad_request("invalid_path", "a path parameter is not valid"))?;
        Ok(Self(v))
    }
}
