//! The public donation page (`/donate`), its thank-you and pledge pages.
//!
//! Server-rendered, mobile-first, one small inline script. The card is the processor's
//! business: the card inputs have no `name`, so a form post can never carry them; the
//! script sends them straight to the processor's tokenization endpoint (Stripe's
//! `POST /v1/payment_methods` with the publishable key) and submits only the returned
//! `pm_...` token with the rest of the form. Without JavaScript the form says the card
//! form needs it, and a post without a token is refused before anything is stored.
//!
//! The thank-you page is reached only by redirect after [`Donations::take`] committed
//! the gift, and it reads the donation's committed state: a donation not yet charged is
//! never thanked.
//!
//! [`Donations::take`]: narwhal_pay::service::Donations::take

mod giving;

use crate::donations::{
    amount_of, client_ip, edge, intake, outcome_message, refused_response, DonationsEdge, Peer,
    Refused,
};
use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Form, Path, Query, State};
use axum::http::header::LOCATION;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use minijinja::{context, Environment, Value};
use narwhal_domain::money::format_dollars;
use narwhal_pay::service::{
    new_token, Attestations, DonationError, DonationRequest, Donor, Outcome,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::OnceLock;

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut e = Environment::new();
        for (name, src) in [
            ("layout.html", include_str!("layout.html")),
            ("form.html", include_str!("form.html")),
            ("message.html", include_str!("message.html")),
            ("confirm.html", include_str!("confirm.html")),
        ] {
            if let Err(err) = e.add_template(name, src) {
                tracing::error!(template = name, error = %err, "donation template does not parse");
            }
        }
        e
    })
}

/// The page's routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/donate", get(page).post(submit))
        .route("/donate/thanks/{id}", get(thanks))
        .route(
            "/donate/pledge/{token}",
            get(pledge_page).post(pledge_submit),
        )
        .route(
            "/donate/give/{token}",
            get(giving::one_click_page).post(giving::one_click_submit),
        )
        .route(
            "/donate/one-tap",
            axum::routing::post(giving::one_tap_submit),
        )
        .route(
            "/donate/one-tap/forget",
            axum::routing::post(giving::one_tap_forget),
        )
        .route(
            "/donate/recurring/cancel/{token}",
            get(giving::cancel_page).post(giving::cancel_submit),
        )
}

fn render(status: StatusCode, name: &str, edge: &DonationsEdge, ctx: Value) -> Response {
    let ctx = context! { committee => edge.page.committee.clone(), ..ctx };
    match env().get_template(name).and_then(|t| t.render(ctx)) {
        Ok(html) => {
            let mut r = (status, Html(html)).into_response();
            r.headers_mut()
                .insert("cache-control", HeaderValue::from_static("no-store"));
            r
        }
        Err(e) => {
            tracing::error!(template = name, error = %e, "donation page render failed");
            ApiError::internal().into_response()
        }
    }
}

fn message(
    edge: &DonationsEdge,
    status: StatusCode,
    kind: &str,
    title: &str,
    text: &str,
    link: Option<(String, &str)>,
    refresh: bool,
) -> Response {
    let (link, link_text) = match link {
        Some((l, t)) => (Some(l), t),
        None => (None, ""),
    };
    render(
        status,
        "message.html",
        edge,
        context! { kind, title, message => text, link, link_text, refresh },
    )
}

/// The donor fields in form order: name, label, input type, autocomplete, required.
const FIELDS: &[(&str, &str, &str, &str, bool)] = &[
    ("first_name", "First name", "text", "given-name", true),
    ("last_name", "Last name", "text", "family-name", true),
    ("email", "Email", "email", "email", true),
    ("phone", "Phone", "tel", "tel", false),
    ("address1", "Street address", "text", "address-line1", true),
    (
        "address2",
        "Apartment, suite",
        "text",
        "address-line2",
        false,
    ),
    ("city", "City", "text", "address-level2", true),
    ("state", "State", "text", "address-level1", true),
    ("zip", "ZIP code", "text", "postal-code", true),
    ("employer", "Employer", "text", "organization", true),
    (
        "occupation",
        "Occupation",
        "text",
        "organization-title",
        true,
    ),
];

const ATTESTATIONS: &[(&str, &str)] = &[
    (
        "own_funds",
        "This contribution is made from my own funds, not those of another person.",
    ),
    (
        "citizen_or_resident",
        "I am a U.S. citizen or lawfully admitted permanent resident.",
    ),
    ("not_contractor", "I am not a federal contractor."),
    (
        "personal_card",
        "I am making this contribution with my own personal card, not a corporate or business card.",
    ),
];

fn not_configured() -> Response {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "donations_not_configured",
        "donations are not configured on this node",
    )
    .into_response()
}

#[allow(clippy::too_many_arguments)]
fn form_page(
    edge: &DonationsEdge,
    status: StatusCode,
    action: &str,
    pledge: Option<String>,
    values: &BTreeMap<String, String>,
    errors: &BTreeMap<String, String>,
    error: Option<&str>,
    challenge: bool,
    quick: Option<Value>,
) -> Response {
    let (key, _) = new_token();
    let amounts: Vec<Value> = edge
        .page
        .amounts_cents
        .iter()
        .map(|c| {
            let value = format!("{}.{:02}", c / 100, c % 100);
            let label = format_dollars(*c);
            let label = label.strip_suffix(".00").unwrap_or(&label).to_string();
            Value::from_serialize(BTreeMap::from([("value", value), ("label", label)]))
        })
        .collect();
    let fields: Vec<Value> = FIELDS
        .iter()
        .map(|(name, label, kind, auto, required)| {
            context! { name, label, kind, auto, required }
        })
        .collect();
    let attestations: Vec<Value> = ATTESTATIONS
        .iter()
        .map(|(name, text)| context! { name, text })
        .collect();
    let challenge = if challenge {
        edge.guard.challenge.as_ref().map(|c| c.widget())
    } else {
        None
    };
    render(
        status,
        "form.html",
        edge,
        context! {
            action, pledge, key, amounts, fields, attestations, challenge, error, quick,
            values => Value::from_serialize(values),
            errors => Value::from_serialize(errors),
            refcode => values.get("refcode").cloned().unwrap_or_default(),
            source => values.get("source").cloned().unwrap_or_default(),
            tokenize_url => edge.page.tokenize_url.trim_end_matches('/').to_string(),
            publishable_key => edge.page.publishable_key.clone(),
        },
    )
}

/// `?refcode=&source=`: attribution carried from the link into the form.
#[derive(Deserialize, Default)]
struct Attribution {
    refcode: Option<String>,
    source: Option<String>,
    amount: Option<String>,
}

async fn page(
    State(s): State<AppState>,
    Query(q): Query<Attribution>,
    headers: HeaderMap,
) -> Response {
    let Ok(edge) = edge(&s) else {
        return not_configured();
    };
    let mut values = BTreeMap::new();
    for (k, v) in [
        ("refcode", q.refcode),
        ("source", q.source),
        ("amount", q.amount),
    ] {
        if let Some(v) = v.filter(|v| v.len() <= 100) {
            values.insert(k.to_string(), v);
        }
    }
    let quick = giving::one_tap_offer(edge, &headers).await;
    form_page(
        edge,
        StatusCode::OK,
        "/donate",
        None,
        &values,
        &BTreeMap::new(),
        None,
        false,
        quick,
    )
}

/// Every field is optional here: a missing one is named by the service's validation.
/// Unknown fields are ignored and never stored (the card inputs have no name anyway).
#[derive(Deserialize, Default)]
struct DonateForm {
    #[serde(default)]
    idempotency_key: String,
    #[serde(default)]
    payment_method: String,
    #[serde(default)]
    challenge_response: Option<String>,
    #[serde(flatten)]
    rest: BTreeMap<String, String>,
}

impl DonateForm {
    fn get(&self, k: &str) -> String {
        self.rest
            .get(k)
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    }
    fn opt(&self, k: &str) -> Option<String> {
        Some(self.get(k)).filter(|v| !v.is_empty())
    }
    fn yes(&self, k: &str) -> bool {
        !self.get(k).is_empty()
    }
    /// What to put back in the form after an error: the donor's own entries, except a
    /// value that was refused for looking like a card number.
    fn values(&self, refused: Option<&str>) -> BTreeMap<String, String> {
        let mut v = BTreeMap::new();
        for k in FIELDS
            .iter()
            .map(|f| f.0)
            .chain([
                "amount",
                "amount_other",
                "frequency",
                "save_method",
                "refcode",
                "source",
            ])
            .chain(ATTESTATIONS.iter().map(|a| a.0))
        {
            if Some(k) != refused {
                v.insert(k.to_string(), self.get(k));
            }
        }
        v
    }
}

async fn submit(
    State(s): State<AppState>,
    peer: Peer,
    headers: HeaderMap,
    Form(f): Form<DonateForm>,
) -> Response {
    let Ok(edge) = edge(&s) else {
        return not_configured();
    };
    let again = |status: StatusCode, field: Option<&str>, msg: &str, challenge: bool| {
        let refused = field.filter(|_| status == StatusCode::UNPROCESSABLE_ENTITY);
        let mut errors = BTreeMap::new();
        if let Some(field) = field {
            errors.insert(field.to_string(), msg.to_string());
        }
        form_page(
            edge,
            status,
            "/donate",
            None,
            &f.values(refused),
            &errors,
            Some(msg),
            challenge,
            None,
        )
    };
    let typed = f.opt("amount_other").or_else(|| f.opt("amount"));
    let amount = match amount_of(typed.map(serde_json::Value::String).as_ref(), None) {
        Ok(a) => a,
        Err(DonationError::Invalid { message, .. }) => {
            return again(
                StatusCode::UNPROCESSABLE_ENTITY,
                Some("amount"),
                &format!("Amount: {message}"),
                false,
            )
        }
        Err(_) => return ApiError::internal().into_response(),
    };
    let pm = f.payment_method.trim().to_string();
    if pm.is_empty() {
        return again(
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
            "Please enter your card. The secure card form needs JavaScript.",
            false,
        );
    }
    let recurring = match f.get("frequency").as_str() {
        "" | "once" => None,
        every @ ("month" | "week") => Some(narwhal_pay::service::Recurrence {
            every: every.to_string(),
            ends_at: None,
        }),
        _ => {
            return again(
                StatusCode::UNPROCESSABLE_ENTITY,
                Some("frequency"),
                "Please choose once, every month or every week.",
                false,
            )
        }
    };
    let key = if f.idempotency_key.trim().is_empty() {
        new_token().0
    } else {
        f.idempotency_key.trim().to_string()
    };
    let req = DonationRequest {
        idempotency_key: key,
        amount_cents: amount,
        donor: Donor {
            first_name: f.get("first_name"),
            last_name: f.get("last_name"),
            email: f.get("email"),
            phone: f.opt("phone"),
            address1: f.get("address1"),
            address2: f.opt("address2"),
            city: f.get("city"),
            state: f.get("state"),
            zip: f.get("zip"),
            employer: f.opt("employer"),
            occupation: f.opt("occupation"),
        },
        attestations: Attestations {
            own_funds: f.yes("own_funds"),
            citizen_or_resident: f.yes("citizen_or_resident"),
            not_contractor: f.yes("not_contractor"),
            personal_card: f.yes("personal_card"),
        },
        payment_method: Some(pm),
        save_method: f.yes("save_method"),
        refcode: f.opt("refcode"),
        source: f.opt("source"),
        channel: "page".into(),
        recurring,
        client_ip: Some(client_ip(edge, &peer, &headers)),
        plan_id: None,
        customer: None,
        processor: None,
    };
    match intake(&s, edge, req, f.challenge_response.as_deref()).await {
        Ok(t) => match t.outcome {
            // A new plan's cancel link is shown once, on the thank-you page; a saved
            // card makes this device one that gives in one tap.
            Outcome::Succeeded => {
                let mut r = match &t.plan_cancel_token {
                    Some(c) => {
                        see_other(&format!("/donate/thanks/{}?plan={c}", t.donation.public_id))
                    }
                    None => see_other(&format!("/donate/thanks/{}", t.donation.public_id)),
                };
                if f.yes("save_method") {
                    if let Some(method) = t.saved_method_id {
                        giving::remember_device(&s, edge, &mut r, t.donation.person_id, method)
                            .await;
                    }
                }
                r
            }
            Outcome::Declined | Outcome::Failed => again(
                StatusCode::PAYMENT_REQUIRED,
                None,
                outcome_message(&t.outcome).unwrap_or_default(),
                false,
            ),
            Outcome::Pledged => pledged(edge, t.pledge_token.as_deref()),
            Outcome::Processing => confirming(edge, &t.donation.public_id),
        },
        Err(Refused::Donation(DonationError::Invalid { field, message, .. })) => again(
            StatusCode::UNPROCESSABLE_ENTITY,
            Some(field),
            &message,
            false,
        ),
        Err(Refused::Donation(DonationError::OverLimit(r))) => again(
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("amount"),
            &r.message,
            false,
        ),
        Err(Refused::Donation(DonationError::KeyReused)) => again(
            StatusCode::UNPROCESSABLE_ENTITY,
            None,
            "The form changed after it was sent. Please check it and contribute again.",
            false,
        ),
        Err(Refused::Challenge) => again(
            StatusCode::FORBIDDEN,
            None,
            "Please complete the check below and try again.",
            true,
        ),
        Err(other) => refused_response(other),
    }
}

fn see_other(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(LOCATION, v);
    }
    r
}

fn pledged(edge: &DonationsEdge, token: Option<&str>) -> Response {
    message(
        edge,
        StatusCode::CREATED,
        "ok",
        "Your pledge is recorded",
        outcome_message(&Outcome::Pledged).unwrap_or_default(),
        token.map(|t| {
            (
                format!("/donate/pledge/{t}"),
                "Or keep this link and complete your pledge later",
            )
        }),
        false,
    )
}

fn confirming(edge: &DonationsEdge, public_id: &str) -> Response {
    message(
        edge,
        StatusCode::ACCEPTED,
        "ok",
        "One moment",
        "Your contribution is being confirmed with the payment processor.",
        Some((format!("/donate/thanks/{public_id}"), "Check again")),
        false,
    )
}

/// `?plan=TOKEN` on the thank-you page of a new recurring gift: its cancel link.
#[derive(Deserialize, Default)]
struct ThanksQuery {
    plan: Option<String>,
}

/// The thank-you page: only for a donation whose charge is committed.
async fn thanks(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<ThanksQuery>,
) -> Response {
    let Ok(edge) = edge(&s) else {
        return not_configured();
    };
    let d = match s.store.donation_by_public_id(&id).await {
        Ok(Some(d)) => d,
        Ok(None) => {
            return message(
                edge,
                StatusCode::NOT_FOUND,
                "alert",
                "Not found",
                "We could not find this contribution.",
                None,
                false,
            )
        }
        Err(e) => return ApiError::from(e).into_response(),
    };
    match narwhal_pay::service::outcome_of(&d.state) {
        Outcome::Succeeded => {
            // The plan this gift started (its first installment has no plan id yet).
            let plan = match q.plan.filter(|p| !p.is_empty()) {
                Some(token) => edge
                    .service
                    .plan_by_cancel_token(&token)
                    .await
                    .ok()
                    .flatten()
                    .filter(|p| p.person_id == d.person_id && p.state == "active")
                    .map(|p| (p.every, token)),
                None => None,
            };
            match plan {
                Some((every, token)) => message(
                    edge,
                    StatusCode::OK,
                    "ok",
                    "Thank you!",
                    &format!(
                        "Your contribution of {} was received, and it will repeat every {every}. Keep this page's link to cancel at any time.",
                        format_dollars(d.amount_cents)
                    ),
                    Some((
                        format!("/donate/recurring/cancel/{token}"),
                        "Cancel my recurring gift",
                    )),
                    false,
                ),
                None => message(
                    edge,
                    StatusCode::OK,
                    "ok",
                    "Thank you!",
                    &format!(
                        "Your contribution of {} was received.",
                        format_dollars(d.amount_cents)
                    ),
                    None,
                    false,
                ),
            }
        }
        Outcome::Processing => {
            let mut r = confirming(edge, &d.public_id);
            *r.status_mut() = StatusCode::OK;
            r
        }
        other => message(
            edge,
            StatusCode::OK,
            "alert",
            "Not completed",
            outcome_message(&other).unwrap_or_default(),
            Some(("/donate".into(), "Contribute")),
            false,
        ),
    }
}

/// `YYYY-MM-DD` (UTC) of a time in ms.
fn day_of(ms: i64) -> String {
    let (y, m, d) = narwhal_domain::civil::civil_from_days(ms.div_euclid(86_400_000));
    format!("{y:04}-{m:02}-{d:02}")
}

fn unknown_link(edge: &DonationsEdge) -> Response {
    message(
        edge,
        StatusCode::NOT_FOUND,
        "alert",
        "Link not valid",
        "This payment link is unknown or was already used.",
        Some(("/donate".into(), "Contribute")),
        false,
    )
}

async fn pledge_page(State(s): State<AppState>, Path(token): Path<String>) -> Response {
    let Ok(edge) = edge(&s) else {
        return not_configured();
    };
    match edge.service.pledge_by_token(&token).await {
        Ok(Some(d)) => form_page(
            edge,
            StatusCode::OK,
            &format!("/donate/pledge/{token}"),
            Some(format_dollars(d.amount_cents)),
            &BTreeMap::new(),
            &BTreeMap::new(),
            None,
            false,
            None,
        ),
        Ok(None) => unknown_link(edge),
        Err(e) => refused_response(Refused::Donation(e)),
    }
}

async fn pledge_submit(
    State(s): State<AppState>,
    Path(token): Path<String>,
    peer: Peer,
    headers: HeaderMap,
    Form(f): Form<DonateForm>,
) -> Response {
    let Ok(edge) = edge(&s) else {
        return not_configured();
    };
    let pm = f.payment_method.trim().to_string();
    let d = match edge.service.pledge_by_token(&token).await {
        Ok(Some(d)) => d,
        Ok(None) => return unknown_link(edge),
        Err(e) => return refused_response(Refused::Donation(e)),
    };
    let again = |status: StatusCode, msg: &str| {
        form_page(
            edge,
            status,
            &format!("/donate/pledge/{token}"),
            Some(format_dollars(d.amount_cents)),
            &BTreeMap::new(),
            &BTreeMap::new(),
            Some(msg),
            false,
            None,
        )
    };
    if pm.is_empty() {
        return again(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Please enter your card. The secure card form needs JavaScript.",
        );
    }
    let keys = [
        crate::abuse::Key::Ip(client_ip(edge, &peer, &headers)),
        crate::abuse::Key::Card(pm.clone()),
    ];
    if let Err(r) = edge.guard.admit(&keys, std::time::Instant::now()) {
        s.metrics.count("donation_blocked_total");
        return refused_response(Refused::Abuse(r));
    }
    match edge.service.complete_pledge(&token, &pm).await {
        Ok(t) => match t.outcome {
            Outcome::Succeeded => see_other(&format!("/donate/thanks/{}", t.donation.public_id)),
            Outcome::Declined | Outcome::Failed => {
                s.metrics.count("donation_declines_total");
                edge.guard.record_decline(&keys, std::time::Instant::now());
                again(
                    StatusCode::PAYMENT_REQUIRED,
                    outcome_message(&Outcome::Declined).unwrap_or_default(),
                )
            }
            Outcome::Pledged => again(
                StatusCode::SERVICE_UNAVAILABLE,
                "Our payment processor is still unavailable. Please try this link again later.",
            ),
            Outcome::Processing => confirming(edge, &t.donation.public_id),
        },
        Err(DonationError::Invalid { message, .. }) => {
            again(StatusCode::UNPROCESSABLE_ENTITY, &message)
        }
        Err(e) => refused_response(Refused::Donation(e)),
    }
}
