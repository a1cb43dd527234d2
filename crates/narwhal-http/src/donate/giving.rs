//! The donor's own giving links: a one-click gift (`/donate/give/{token}`, issued by
//! `POST /api/v1/donations/giving-links` for a donor with a saved card), one-tap gifts
//! from a device that saved a card on the page (`/donate/one-tap`, by a cookie), and
//! the cancel link of a recurring gift (`/donate/recurring/cancel/{token}`).
//!
//! Each link is a page first and an action only on its button: a `GET` never gives
//! or cancels, so a mail scanner or a link preview that fetches the URL does nothing.
//! The tokens are random and stored only as hashes; the request log names the route,
//! never the token.

use super::{message, not_configured, render, see_other, ATTESTATIONS};
use crate::donations::{client_ip, edge, outcome_message, refused_response, Peer, Refused};
use crate::AppState;
use axum::extract::{Form, Path, State};
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use minijinja::context;
use narwhal_domain::money::format_dollars;
use narwhal_pay::service::{DonationError, Outcome};

/// A giving link that cannot be used: unknown (404), expired (410) or used (410).
fn link_refused(edge: &crate::donations::DonationsEdge, e: DonationError) -> Response {
    match e {
        DonationError::Invalid { code, message, .. } => {
            let status = match code {
                "expired_link" | "used_link" => StatusCode::GONE,
                _ => StatusCode::NOT_FOUND,
            };
            super::message(
                edge,
                status,
                "alert",
                "Link not valid",
                &message,
                Some(("/donate".into(), "Contribute on the donation page")),
                false,
            )
        }
        other => refused_response(Refused::Donation(other)),
    }
}

fn one_click_form(
    edge: &crate::donations::DonationsEdge,
    status: StatusCode,
    token: &str,
    offer: &narwhal_pay::giving::OneClickOffer,
    error: Option<&str>,
) -> Response {
    let amount = format_dollars(offer.amount_cents);
    let card = match (&offer.card_brand, &offer.card_last4) {
        (Some(b), Some(l)) => format!("{b} ending in {l}"),
        _ => "your saved card".to_string(),
    };
    let facts = vec![("Amount", amount.clone()), ("Card", card)];
    let text: Vec<&str> = ATTESTATIONS.iter().map(|(_, t)| *t).collect();
    render(
        status,
        "confirm.html",
        edge,
        context! {
            title => format!("Give {amount} in one tap"),
            facts, text, error,
            action => format!("/donate/give/{token}"),
            button => format!("Give {amount}"),
            link => "/donate", link_text => "Give a different amount",
        },
    )
}

/// `GET /donate/give/{token}`: what the link gives, and one button.
pub(super) async fn one_click_page(
    State(s): State<AppState>,
    Path(token): Path<String>,
) -> Response {
    let Ok(edge) = edge(&s) else {
        return not_configured();
    };
    match edge.service.one_click_offer(&token).await {
        Ok(offer) => one_click_form(edge, StatusCode::OK, &token, &offer, None),
        Err(e) => link_refused(edge, e),
    }
}

/// `POST /donate/give/{token}`: gives once; a second tap shows the same gift.
pub(super) async fn one_click_submit(
    State(s): State<AppState>,
    Path(token): Path<String>,
    peer: Peer,
    headers: HeaderMap,
) -> Response {
    let Ok(edge) = edge(&s) else {
        return not_configured();
    };
    let ip = client_ip(edge, &peer, &headers);
    let keys = [crate::abuse::Key::Ip(ip.clone())];
    if let Err(r) = edge.guard.admit(&keys, std::time::Instant::now()) {
        s.metrics.count("donation_blocked_total");
        return refused_response(Refused::Abuse(r));
    }
    // Read before the tap uses it, to show the form again after a decline.
    let offer = edge.service.one_click_offer(&token).await.ok();
    match edge.service.give_one_click(&token, Some(ip)).await {
        Ok(t) => saved_card_outcome(&s, edge, &keys, &t),
        Err(e @ DonationError::Invalid { .. }) => match (&e, offer) {
            // The link was fine a moment ago: the gift itself was refused.
            (DonationError::Invalid { message, .. }, Some(o))
                if !matches!(
                    e,
                    DonationError::Invalid {
                        code: "unknown_link" | "expired_link" | "used_link",
                        ..
                    }
                ) =>
            {
                one_click_form(
                    edge,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &token,
                    &o,
                    Some(message),
                )
            }
            _ => link_refused(edge, e),
        },
        Err(e) => refused_response(Refused::Donation(e)),
    }
}

/// The page after a gift with a saved card (a giving link or a one-tap device): the
/// thank-you page, or why not, with a decline counted against the source.
fn saved_card_outcome(
    s: &AppState,
    edge: &crate::donations::DonationsEdge,
    keys: &[crate::abuse::Key],
    t: &narwhal_pay::service::Taken,
) -> Response {
    match t.outcome {
        Outcome::Succeeded => see_other(&format!("/donate/thanks/{}", t.donation.public_id)),
        Outcome::Processing => super::confirming(edge, &t.donation.public_id),
        Outcome::Pledged => super::pledged(edge, t.pledge_token.as_deref()),
        Outcome::Declined | Outcome::Failed => {
            s.metrics.count("donation_declines_total");
            edge.guard.record_decline(keys, std::time::Instant::now());
            message(
                edge,
                StatusCode::PAYMENT_REQUIRED,
                "alert",
                "Not completed",
                outcome_message(&t.outcome).unwrap_or_default(),
                Some(("/donate".into(), "Contribute with another card")),
                false,
            )
        }
    }
}

/// `GET /donate/recurring/cancel/{token}`: the plan, and one button to stop it.
pub(super) async fn cancel_page(State(s): State<AppState>, Path(token): Path<String>) -> Response {
    let Ok(edge) = edge(&s) else {
        return not_configured();
    };
    match edge.service.plan_by_cancel_token(&token).await {
        Ok(Some(plan)) if plan.state == "active" => {
            let amount = format_dollars(plan.amount_cents);
            let next = super::day_of(plan.next_charge_at);
            render(
                StatusCode::OK,
                "confirm.html",
                edge,
                context! {
                    title => "Cancel your recurring gift",
                    facts => vec![
                        ("Amount", amount),
                        ("Repeats", format!("every {}", plan.every)),
                        ("Next gift", next),
                    ],
                    text => vec!["Nothing more will be charged after you cancel. Gifts already made are not refunded."],
                    action => format!("/donate/recurring/cancel/{token}"),
                    button => "Cancel my recurring gift",
                },
            )
        }
        Ok(Some(_)) => already_ended(edge),
        Ok(None) => cancel_unknown(edge),
        Err(e) => refused_response(Refused::Donation(e)),
    }
}

/// `POST /donate/recurring/cancel/{token}`: stops the plan (a second post says so).
pub(super) async fn cancel_submit(
    State(s): State<AppState>,
    Path(token): Path<String>,
) -> Response {
    let Ok(edge) = edge(&s) else {
        return not_configured();
    };
    match edge.service.cancel_plan(&token).await {
        Ok(true) => message(
            edge,
            StatusCode::OK,
            "ok",
            "Your recurring gift is canceled",
            "Nothing more will be charged. Thank you for your support.",
            None,
            false,
        ),
        Ok(false) => match edge.service.plan_by_cancel_token(&token).await {
            Ok(Some(_)) => already_ended(edge),
            Ok(None) => cancel_unknown(edge),
            Err(e) => refused_response(Refused::Donation(e)),
        },
        Err(e) => refused_response(Refused::Donation(e)),
    }
}

fn already_ended(edge: &crate::donations::DonationsEdge) -> Response {
    message(
        edge,
        StatusCode::OK,
        "ok",
        "Nothing to cancel",
        "This recurring gift has already ended: nothing more will be charged.",
        None,
        false,
    )
}

fn cancel_unknown(edge: &crate::donations::DonationsEdge) -> Response {
    message(
        edge,
        StatusCode::NOT_FOUND,
        "alert",
        "Link not valid",
        "This cancel link is not valid. Reply to any of our emails and we will stop your gift.",
        None,
        false,
    )
}

/// The cookie of a device that gives in one tap (its value is a random token, stored
/// only as a hash, that names one saved card).
const DEVICE_COOKIE: &str = "narwhal_donor";
/// How long a device is remembered.
const DEVICE_DAYS: i64 = 180;

fn device_cookie(value: &str, max_age_s: i64, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{DEVICE_COOKIE}={value}; Path=/donate; HttpOnly; SameSite=Lax; Max-Age={max_age_s}{secure}"
    ))
    .ok()
}

/// After a gift that saved the card: this device gives in one tap from now on. A
/// failure here only costs the convenience, never the gift (already committed).
pub(super) async fn remember_device(
    s: &AppState,
    edge: &crate::donations::DonationsEdge,
    r: &mut Response,
    person_id: i64,
    saved_method_id: i64,
) {
    let days = DEVICE_DAYS * 86_400_000;
    match edge
        .service
        .remember_device(person_id, saved_method_id, days)
        .await
    {
        Ok(token) => {
            if let Some(c) = device_cookie(&token, days / 1000, s.config.cookie_secure) {
                r.headers_mut().insert(SET_COOKIE, c);
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not remember the donor's device"),
    }
}

/// What the page offers a remembered device: the donor's first name, the card, and a
/// fresh idempotency key for the one-tap form.
pub(super) async fn one_tap_offer(
    edge: &crate::donations::DonationsEdge,
    headers: &HeaderMap,
) -> Option<minijinja::Value> {
    let token = crate::auth::cookie(headers, DEVICE_COOKIE)?;
    let (method, donor) = edge.service.device_offer(&token).await.ok()??;
    let card = match (&method.card_brand, &method.card_last4) {
        (Some(b), Some(l)) => format!("{b} card ending in {l}"),
        _ => "saved card".to_string(),
    };
    let (key, _) = narwhal_pay::service::new_token();
    Some(context! { name => donor.first_name.trim().to_string(), card, key })
}

/// The one-tap form: an amount button and the page's idempotency key.
#[derive(serde::Deserialize, Default)]
pub(super) struct OneTapForm {
    #[serde(default)]
    amount: String,
    #[serde(default)]
    idempotency_key: String,
}

/// `POST /donate/one-tap`: gives the chosen amount with this device's saved card.
pub(super) async fn one_tap_submit(
    State(s): State<AppState>,
    peer: Peer,
    headers: HeaderMap,
    Form(f): Form<OneTapForm>,
) -> Response {
    let Ok(edge) = edge(&s) else {
        return not_configured();
    };
    let forgotten = || {
        message(
            edge,
            StatusCode::UNAUTHORIZED,
            "alert",
            "Please use the form",
            "This device no longer remembers your card. Please contribute with the form.",
            Some(("/donate".into(), "Contribute")),
            false,
        )
    };
    let Some(device) = crate::auth::cookie(&headers, DEVICE_COOKIE) else {
        return forgotten();
    };
    let amount =
        match crate::donations::amount_of(Some(&serde_json::Value::String(f.amount.clone())), None)
        {
            Ok(a) => a,
            Err(DonationError::Invalid { message, .. }) => {
                return super::message(
                    edge,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "alert",
                    "Please choose an amount",
                    &format!("Amount: {message}"),
                    Some(("/donate".into(), "Back")),
                    false,
                )
            }
            Err(e) => return refused_response(Refused::Donation(e)),
        };
    let key = f.idempotency_key.trim();
    if key.is_empty() || key.len() > 255 {
        return super::message(
            edge,
            StatusCode::UNPROCESSABLE_ENTITY,
            "alert",
            "Please try again",
            "The form was incomplete. Please open the donation page again.",
            Some(("/donate".into(), "Back")),
            false,
        );
    }
    let ip = client_ip(edge, &peer, &headers);
    let keys = [crate::abuse::Key::Ip(ip.clone())];
    if let Err(r) = edge.guard.admit(&keys, std::time::Instant::now()) {
        s.metrics.count("donation_blocked_total");
        return refused_response(Refused::Abuse(r));
    }
    match edge
        .service
        .give_from_device(&device, amount, format!("onetap_{key}"), Some(ip))
        .await
    {
        Ok(None) => forgotten(),
        Ok(Some(t)) => saved_card_outcome(&s, edge, &keys, &t),
        Err(DonationError::Invalid { message, .. }) => super::message(
            edge,
            StatusCode::UNPROCESSABLE_ENTITY,
            "alert",
            "Not completed",
            &message,
            Some(("/donate".into(), "Back")),
            false,
        ),
        Err(e) => refused_response(Refused::Donation(e)),
    }
}

/// `POST /donate/one-tap/forget`: this device stops giving in one tap.
pub(super) async fn one_tap_forget(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let Ok(edge) = edge(&s) else {
        return not_configured();
    };
    if let Some(device) = crate::auth::cookie(&headers, DEVICE_COOKIE) {
        if let Err(e) = edge.service.forget_device(&device).await {
            return refused_response(Refused::Donation(e));
        }
    }
    let mut r = see_other("/donate");
    if let Some(c) = device_cookie("", 0, s.config.cookie_secure) {
        r.headers_mut().insert(SET_COOKIE, c);
    }
    r
}
