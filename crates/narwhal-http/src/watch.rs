//! `/watch/`: the poll-watcher app. Plain HTML, CSS and JavaScript embedded in the
//! binary (no build step), installable as a PWA.
//!
//! - The service worker (`/watch/sw.js`, scope `/watch/`) caches the app shell when it
//!   installs, and answers the shell and `GET /api/v1/turnout/list` network-first with
//!   the cache as fallback, so the app and the polling place's list open offline.
//! - Reports are written to IndexedDB first (strict durability) under a
//!   client-generated report id, then sent in batches of up to 100 to
//!   `POST /api/v1/turnout/reports`, retried with exponential backoff and jitter. A
//!   report leaves the device's queue only when the server has answered for it, so a
//!   crash or restart loses nothing and a retry never counts twice (the server is
//!   idempotent by report id).
//!
//! The app talks only to the API routes in [`crate::routes::ROUTES`]; this module
//! serves static files and holds no state.

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use crate::AppState;

const HTML: &str = include_str!("watch/index.html");
const JS: &str = include_str!("watch/app.js");
const CSS: &str = include_str!("watch/app.css");
const SW: &str = include_str!("watch/sw.js");
const MANIFEST: &str = include_str!("watch/manifest.webmanifest");
const ICON: &str = include_str!("watch/icon.svg");

/// The app's routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/watch", get(|| async { Redirect::permanent("/watch/") }))
        .route(
            "/watch/",
            get(|| async { file(HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/watch/app.js",
            get(|| async { file(JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/watch/app.css",
            get(|| async { file(CSS, "text/css; charset=utf-8") }),
        )
        .route(
            "/watch/sw.js",
            get(|| async { file(SW, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/watch/manifest.webmanifest",
            get(|| async { file(MANIFEST, "application/manifest+json") }),
        )
        .route(
            "/watch/icon.svg",
            get(|| async { file(ICON, "image/svg+xml") }),
        )
}

/// A static file; `no-cache` so browsers revalidate (the service worker keeps the
/// offline copy).
fn file(body: &'static str, content_type: &'static str) -> Response {
    let mut r = body.into_response();
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shell_names_what_the_worker_caches() {
        for asset in ["app.js", "app.css", "manifest.webmanifest", "icon.svg"] {
            assert!(SW.contains(&format!("/watch/{asset}")), "sw caches {asset}");
        }
        assert!(HTML.contains("/watch/app.js") && HTML.contains("/watch/manifest.webmanifest"));
        let m: serde_json::Value = serde_json::from_str(MANIFEST).unwrap_or_default();
        assert_eq!(m["start_url"], "/watch/");
        assert_eq!(m["display"], "standalone");
    }
}
