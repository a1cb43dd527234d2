//! Unsubscribe links: `/u/{token}`.
//!
//! - `POST /u/{token}` is the RFC 8058 one-click endpoint a mail client calls from
//!   `List-Unsubscribe-Post`: no cookie, no confirmation, any body; 200 when done.
//! - `GET /u/{token}` is the page a person lands on from the footer link: it shows a
//!   button that posts to the same URL. A GET never unsubscribes, because mail
//!   scanners and link previews fetch every link in a message (RFC 8058, section 1).
//!
//! Both verify the token's signature first: an unknown or forged token gets a 404
//! page and changes nothing. A valid one sets the person's email consent to
//! `unsubscribed` at once with an audit entry; blast claims read consent, so a running
//! blast skips them from its next slice on.

use crate::blasts::mail;
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use narwhal_domain::PersonId;

/// The routes, merged into the application router.
pub fn router() -> Router<AppState> {
    Router::new().route("/u/{token}", get(page).post(one_click))
}

fn html(status: StatusCode, title: &str, body: &str) -> Response {
    let doc = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"referrer\" content=\"no-referrer\"><title>{title}</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:2rem auto;padding:0 1rem}}\
         button{{font-size:1.1rem;padding:.7rem 1.2rem}}</style></head><body><h1>{title}</h1>{body}</body></html>"
    );
    (status, Html(doc)).into_response()
}

fn not_found() -> Response {
    html(
        StatusCode::NOT_FOUND,
        "Link not valid",
        "<p>This unsubscribe link is not one we sent, or it was copied incompletely. Nothing was changed.</p>",
    )
}

/// `(blast, person)` for a valid token, `None` for anything else.
fn verify(s: &AppState, token: &str) -> Option<(i64, i64)> {
    let edge = mail(s).ok()?;
    edge.sender.compose().signer.verify(token).ok()
}

async fn page(State(s): State<AppState>, Path(token): Path<String>) -> Response {
    if verify(&s, &token).is_none() {
        return not_found();
    }
    // The token is URL-safe base64: nothing in it needs escaping, but keep it so.
    let t: String = token
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    html(
        StatusCode::OK,
        "Unsubscribe",
        &format!(
            "<p>Stop receiving these emails?</p>\
             <form method=\"post\" action=\"/u/{t}\"><input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\
             <button type=\"submit\">Unsubscribe</button></form>"
        ),
    )
}

async fn one_click(State(s): State<AppState>, Path(token): Path<String>) -> Response {
    let Some((blast, person)) = verify(&s, &token) else {
        return not_found();
    };
    let detail = serde_json::json!({"blast": blast, "via": "link"});
    match s
        .store
        .unsubscribe_email(PersonId(person), "unsubscribe-link", detail)
        .await
    {
        Ok(changed) => {
            tracing::info!(
                person.id = person,
                blast.id = blast,
                changed,
                "unsubscribed"
            );
            html(
                StatusCode::OK,
                "You are unsubscribed",
                "<p>You will not receive these emails any more.</p>",
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "unsubscribe failed");
            html(
                StatusCode::SERVICE_UNAVAILABLE,
                "Please try again",
                "<p>We could not record your unsubscribe just now. Please try again in a minute.</p>",
            )
        }
    }
}
