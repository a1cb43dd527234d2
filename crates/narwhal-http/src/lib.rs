//! Narwhal's HTTP edge: the JSON API under `/api/v1`, its errors, auth, OpenAPI
//! document, metrics and health checks, uploads, and the server-rendered staff console.
//!
//! Only this crate knows status codes and axum.
//!
//! # The route table
//!
//! Every API route is declared once, as data, in [`routes::ROUTES`]: method, path,
//! scope, success status, summary, request body ([`routes::Body`]: none, JSON naming
//! its schema, or raw bytes), the schema of its success body, and the handler. The
//! axum router ([`router`]) and the OpenAPI 3.1 document ([`routes::openapi`], served
//! at `/api/openapi.json`) are both built from that table, and the JSON Schemas of the
//! bodies ([`routes::schemas`]) sit beside it. Tests hold them together: every route is
//! routed and documented, every named schema exists, the documented request
//! properties are exactly what the Rust types accept, and live responses carry exactly
//! the documented properties. Adding a route is one line in the table.
//!
//! # The error policy
//!
//! Every API failure leaves as `{"error":{"code","message","request_id"}}` with a
//! stable machine `code` (the full table is in [`error`]). Caller's faults are 4xx:
//! `invalid_field`, `malformed_json`, `invalid`, `not_found`, `conflict`,
//! `unauthenticated`, `forbidden`, `body_too_large`, `invalid_name`, ... Ours are 5xx:
//! `unavailable` (the database, worth retrying), `timeout` (over `request_timeout`),
//! `internal`. Messages are safe to show: never field values, SQL or secrets. Handlers
//! return [`error::ApiError`]; the request middleware ([`requests::track`]) writes the
//! body with the request id and logs 5xx once, with the matched route and never the
//! query string or body. The console shows the same errors as small HTML pages, and a
//! caller's mistake in a form comes back in the form, inline.
//!
//! # Invariants
//!
//! - Every `/api/v1` route names the scope it needs; without credentials it is 401,
//!   without the scope 403. Public routes are marked so in the table. Poll-watcher
//!   routes (`Access::Watcher`) need a login and then the caller's watcher row, which
//!   limits them to that watcher's polling place; no scope grants them.
//! - Console forms that change state carry the session's CSRF token and refuse a
//!   cross-site `Origin`.
//! - Uploads never overwrite and never leave a partial file: they are written to a
//!   temporary file, synced, and linked to their name only when complete.
//! - Imports read only files under the upload directory; a rejects download serves
//!   only the path recorded on the import row.
//! - Logs carry method, matched route, status and latency: never query strings or
//!   bodies, which may hold personal data.

// The OpenAPI schemas are one large `json!` literal.
#![recursion_limit = "512"]
#![warn(missing_docs)]

pub mod abuse;
pub mod audit;
pub mod auth;
pub mod blasts;
pub mod compat;
pub mod console;
pub mod donate;
pub mod donations;
pub mod error;
pub mod feedback;
pub mod imports;
pub mod inbound;
pub mod lists;
pub mod metrics;
pub mod ops;
pub mod people;
pub mod requests;
pub mod routes;
pub mod segments;
pub mod sms;
pub mod tls;
pub mod turnout;
pub mod unsubscribe;
pub mod uploads;
pub mod watch;

pub use auth::{hash_password, new_token, verify_password};

use axum::extract::DefaultBodyLimit;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub(crate) use narwhal_store::now_ms;

/// Settings of the HTTP edge.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Largest accepted request body; bigger ones get 413.
    pub max_body_bytes: usize,
    /// A request taking longer gets 503 `timeout`.
    pub request_timeout: Duration,
    /// Mark the session cookie `Secure` (on whenever served over HTTPS).
    pub cookie_secure: bool,
    /// Imports may only read files under this directory; uploads land here.
    pub upload_dir: PathBuf,
    /// Largest accepted upload (`PUT /api/v1/uploads/{name}`, the console's upload
    /// form); bigger ones get 413 and leave no file behind.
    pub max_upload_bytes: u64,
    /// Replaces `request_timeout` on the routes that stream uploads
    /// ([`uploads::LONG_ROUTES`]): a large file over a slow link takes a while.
    pub upload_timeout: Duration,
    /// The SMS provider's auth token that signs inbound SMS webhooks ([`sms`]); by
    /// default from `NARWHAL_TWILIO_AUTH_TOKEN`. Without it the webhook refuses all.
    pub sms_auth_token: Option<sms::SmsAuthToken>,
    /// How SES bounce and complaint notifications (through SNS) are verified and
    /// applied ([`feedback`]).
    pub ses_feedback: feedback::SesFeedbackConfig,
    /// How long a node trusts an API token it found live before reading it again
    /// ([`auth::TokenCache`]): a revoked token stops working on every node within
    /// this time. Zero reads the token at every request.
    pub token_cache_ttl: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 2 * 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            cookie_secure: false,
            upload_dir: PathBuf::from("uploads"),
            max_upload_bytes: 2 * 1024 * 1024 * 1024,
            upload_timeout: Duration::from_secs(60 * 60),
            sms_auth_token: sms::SmsAuthToken::from_env(),
            ses_feedback: feedback::SesFeedbackConfig::default(),
            token_cache_ttl: Duration::from_secs(2),
        }
    }
}

/// Everything a handler needs, behind one shared pointer: every request clones the
/// state for each extractor and middleware that takes it, and one reference count is
/// cheaper to touch than one per part.
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

impl std::ops::Deref for AppState {
    type Target = AppParts;
    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// The parts of [`AppState`].
#[derive(Clone)]
pub struct AppParts {
    /// Storage: the only way to the database.
    pub store: narwhal_store::Store,
    /// The people service: identity resolution, edits, merges.
    pub hub: narwhal_people::Hub,
    /// The edge's settings.
    pub config: Arc<HttpConfig>,
    /// Request counts and durations for `/metrics`.
    pub metrics: Arc<metrics::Metrics>,
    /// The console's templates, parsed once.
    pub templates: Arc<minijinja::Environment<'static>>,
    /// The mail side (blasts, previews, unsubscribe links); `None` when the node has no
    /// mail settings, and then those routes answer 503 `mail_not_configured`.
    pub mail: Option<blasts::MailEdge>,
    /// Election day: the live turnout figures and the ingest's own pool.
    pub turnout: turnout::TurnoutEdge,
    /// Donations (API, page, webhooks); `None` when the node has no `[donations]`
    /// settings, and then those routes answer 503 `donations_not_configured`.
    pub donations: Option<donations::DonationsEdge>,
    /// The Stripe-compatible API (`/v1/...`, [`compat`]); `None` when the node takes no
    /// donations, and then those routes answer 503.
    pub compat: Option<narwhal_pay::compat::Compat>,
    /// API tokens found live recently ([`auth::TokenCache`]).
    pub tokens: Arc<auth::TokenCache>,
}

impl AppState {
    /// State over `store` with a hub, fresh metrics and the parsed console templates.
    pub fn new(store: narwhal_store::Store, config: HttpConfig) -> Self {
        Self(Arc::new(AppParts {
            hub: narwhal_people::Hub::new(store.clone()),
            turnout: turnout::TurnoutEdge::new(&store),
            store,
            config: Arc::new(config),
            metrics: Arc::new(metrics::Metrics::default()),
            templates: Arc::new(console::environment()),
            mail: None,
            donations: None,
            compat: None,
            tokens: Arc::new(auth::TokenCache::default()),
        }))
    }

    /// With the donation side.
    pub fn with_donations(mut self, donations: donations::DonationsEdge) -> Self {
        Arc::make_mut(&mut self.0).donations = Some(donations);
        self
    }

    /// With the Stripe-compatible API.
    pub fn with_compat(mut self, compat: narwhal_pay::compat::Compat) -> Self {
        Arc::make_mut(&mut self.0).compat = Some(compat);
        self
    }

    /// With the mail side.
    pub fn with_mail(mut self, mail: blasts::MailEdge) -> Self {
        Arc::make_mut(&mut self.0).mail = Some(mail);
        self
    }
}

/// The whole application: API, OpenAPI, ops endpoints and console.
pub fn router(state: AppState) -> axum::Router {
    let mut r = axum::Router::new();
    for route in routes::ROUTES {
        r = r.route(route.path, routes::method_router(route, &state));
    }
    r.merge(ops::router())
        .merge(console::router())
        .merge(unsubscribe::router())
        .merge(watch::router())
        .merge(sms::router())
        .merge(compat::router())
        .merge(feedback::router())
        .merge(donations::router())
        .merge(donate::router())
        .merge(console::donations::router())
        .fallback(requests::not_found)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            requests::track,
        ))
        .with_state(state)
}

/// Serves until `shutdown` resolves, then finishes in-flight requests and returns.
/// Handlers see the peer's address (`ConnectInfo`), for the donation abuse limits.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
