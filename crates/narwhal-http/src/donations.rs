//! Donations over HTTP: the API (`/api/v1/donations`), the intake every channel shares
//! (abuse limits, then [`Donations::take`]), and processor webhooks
//! (`/webhooks/stripe/{processor}`).
//!
//! Outcomes and errors, stable for clients:
//!
//! | what happened | status | code / body |
//! | --- | --- | --- |
//! | charged (committed) | 201 (200 when the key was seen before) | the donation, `outcome: succeeded` |
//! | every processor down: a pledge | 201 | `outcome: pledged` and a message |
//! | ambiguous charge still being confirmed | 202 | `outcome: processing` |
//! | card declined | 402 | `declined` |
//! | the processor refused the request | 402 | `payment_failed` |
//! | a field is wrong | 422 | the field's code: `invalid_amount`, `required`, `card_number_in_text`, `attestation_required`, `invalid_email`, ... |
//! | the same key with other parameters | 422 | `idempotency_key_reused` |
//! | the same key still in flight | 409 | `idempotency_in_flight` |
//! | over the contribution limit | 422 | `over_limit`, the room left in the message and in `Narwhal-Room-Cents` |
//! | card-testing limits | 429 + `Retry-After` | `too_many_attempts`, `blocked_after_declines` |
//! | a challenge is needed | 403 | `challenge_required` |
//!
//! The donor is thanked only from the committed state: every success body is read
//! back from the donation row after [`Donations::take`] committed it.

use crate::abuse::{Guard, Key, Refusal};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult, Json, Path, Query};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Extension;
use narwhal_mail::Secret;
use narwhal_pay::events::Applied;
use narwhal_pay::processor::RefundOutcome;
use narwhal_pay::service::{
    Attestations, DonationError, DonationRequest, Donations, Donor, Outcome, Recurrence, Taken,
};
use narwhal_pay::stripe::webhook;
use narwhal_store::donations::{DonationRow, DonationSearch};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

/// What the public donation page shows and where its card fields go.
#[derive(Clone, Debug)]
pub struct PageConfig {
    /// The committee's name, in the page title and the disclaimer.
    pub committee: String,
    /// The amount buttons, in cents.
    pub amounts_cents: Vec<i64>,
    /// The processor's tokenization base URL (`https://api.stripe.com`): the page's
    /// script sends the card fields there, never to us.
    pub tokenize_url: String,
    /// The publishable key the page tokenizes with (`pk_...`; public by design).
    pub publishable_key: String,
}

impl Default for PageConfig {
    fn default() -> Self {
        Self {
            committee: "Our campaign".into(),
            amounts_cents: vec![1_000, 2_500, 5_000, 10_000, 25_000],
            tokenize_url: narwhal_pay::stripe::DEFAULT_BASE_URL.into(),
            publishable_key: String::new(),
        }
    }
}

/// The donation side of a node: the service, the abuse guard, webhook secrets, the page.
#[derive(Clone)]
pub struct DonationsEdge {
    /// Takes gifts.
    pub service: Donations,
    /// Card-testing limits (per node; see [`crate::abuse`]).
    pub guard: Arc<Guard>,
    /// Webhook signing secrets by processor name (`whsec_...`).
    pub webhook_secrets: Arc<HashMap<String, Secret<String>>>,
    /// The public page.
    pub page: Arc<PageConfig>,
    /// Behind a proxy: the header carrying the client's address (its last entry is
    /// used). Unset: the TCP peer.
    pub client_ip_header: Option<HeaderName>,
}

impl DonationsEdge {
    /// An edge with default limits, no webhook secrets and the default page.
    pub fn new(service: Donations) -> Self {
        Self {
            service,
            guard: Arc::new(Guard::new(Default::default())),
            webhook_secrets: Arc::new(HashMap::new()),
            page: Arc::new(PageConfig::default()),
            client_ip_header: None,
        }
    }
}

/// The TCP peer's address, when the server runs with connect info.
pub struct Peer(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        ))
    }
}

/// The client's address as the abuse limits see it.
pub(crate) fn client_ip(edge: &DonationsEdge, peer: &Peer, headers: &HeaderMap) -> String {
    if let Some(h) = &edge.client_ip_header {
        if let Some(last) = headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .map(str::trim)
            .and_then(|v| v.parse::<IpAddr>().ok())
        {
            return last.to_string();
        }
    }
    peer.0
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "unknown".into())
}

pub(crate) fn edge(s: &AppState) -> ApiResult<&DonationsEdge> {
    s.donations.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "donations_not_configured",
            "donations are not configured on this node",
        )
    })
}

/// Why the intake did not take a gift.
pub(crate) enum Refused {
    /// The card-testing limits.
    Abuse(Refusal),
    /// The source is suspicious and the challenge answer is missing or wrong.
    Challenge,
    /// The service refused it.
    Donation(DonationError),
}

impl From<Refused> for ApiError {
    fn from(r: Refused) -> Self {
        match r {
            Refused::Abuse(r) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, r.code, r.message),
            Refused::Challenge => ApiError::new(
                StatusCode::FORBIDDEN,
                "challenge_required",
                "please complete the challenge to continue",
            ),
            Refused::Donation(e) => donation_error(e),
        }
    }
}

/// A refusal as a response (429s carry `Retry-After`).
pub(crate) fn refused_response(r: Refused) -> Response {
    let retry = match &r {
        Refused::Abuse(a) => Some(a.retry_after.as_secs().max(1)),
        _ => None,
    };
    let room = match &r {
        Refused::Donation(DonationError::OverLimit(l)) => Some(l.room_cents),
        _ => None,
    };
    let mut res = ApiError::from(r).into_response();
    if let Some(secs) = retry {
        res.headers_mut()
            .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if let Some(room) = room {
        res.headers_mut()
            .insert("narwhal-room-cents", HeaderValue::from(room));
    }
    res
}

/// The service's errors as API errors; never repeats a rejected value.
pub(crate) fn donation_error(e: DonationError) -> ApiError {
    match e {
        DonationError::Invalid {
            field,
            code,
            message,
        } => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            code,
            format!("{field}: {message}"),
        ),
        DonationError::KeyReused => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this idempotency key was already used for a different donation",
        ),
        DonationError::InFlight => ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_in_flight",
            "a request with this idempotency key is still in progress; retry shortly",
        ),
        DonationError::OverLimit(r) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "over_limit", r.message)
        }
        DonationError::Store(e) => e.into(),
        other => {
            // The hub or the database could not take it now: nothing was acknowledged.
            tracing::warn!(error = %kind_of(&other), "donation not taken");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "donations are unavailable for a moment; retry with the same idempotency key",
            )
        }
    }
}

/// A label for logs that carries no donor data.
fn kind_of(e: &DonationError) -> &'static str {
    match e {
        DonationError::People(_) => "people",
        DonationError::Store(_) => "store",
        _ => "other",
    }
}

/// The intake every channel shares: abuse limits and the challenge, then the service;
/// declines are counted (metrics, and against the keys).
pub(crate) async fn intake(
    s: &AppState,
    edge: &DonationsEdge,
    req: DonationRequest,
    challenge_response: Option<&str>,
) -> Result<Taken, Refused> {
    let ip = req.client_ip.clone().unwrap_or_else(|| "unknown".into());
    // Without a known address (no connect info) nobody is limited by address: one
    // shared "unknown" key would let one card tester block every donor.
    let mut keys = Vec::new();
    if ip != "unknown" {
        keys.push(Key::Ip(ip.clone()));
    }
    let email = req.donor.email.trim().to_ascii_lowercase();
    if !email.is_empty() {
        keys.push(Key::Email(email));
    }
    if let Some(pm) = req.payment_method.as_deref().filter(|p| !p.is_empty()) {
        keys.push(Key::Card(pm.to_string()));
    }
    let now = Instant::now();
    if let Err(r) = edge.guard.admit(&keys, now) {
        s.metrics.count("donation_blocked_total");
        return Err(Refused::Abuse(r));
    }
    if let Some(ch) = &edge.guard.challenge {
        if edge.guard.suspicious(&keys, now) {
            let ok = match challenge_response.filter(|r| !r.is_empty()) {
                Some(r) => ch.verify(r, &ip).await,
                None => false,
            };
            if !ok {
                return Err(Refused::Challenge);
            }
        }
    }
    let taken = edge.service.take(req).await.map_err(Refused::Donation)?;
    if taken.outcome == Outcome::Declined && !taken.replayed {
        s.metrics.count("donation_declines_total");
        if let Some(fp) = &taken.donation.card_fingerprint {
            keys.push(Key::Card(fp.clone()));
        }
        edge.guard.record_decline(&keys, Instant::now());
    }
    Ok(taken)
}

// ---------------------------------------------------------------------------
// The API

/// The donor as an API body: every field optional here, so that a missing one is
/// named with the code `required` by the service's validation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DonorBody {
    #[serde(default)]
    first_name: Option<String>,
    #[serde(default)]
    last_name: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    phone: Option<String>,
    #[serde(default)]
    address1: Option<String>,
    #[serde(default)]
    address2: Option<String>,
    #[serde(default)]
    city: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    zip: Option<String>,
    #[serde(default)]
    employer: Option<String>,
    #[serde(default)]
    occupation: Option<String>,
}

impl DonorBody {
    fn into_donor(self) -> Donor {
        Donor {
            first_name: self.first_name.unwrap_or_default(),
            last_name: self.last_name.unwrap_or_default(),
            email: self.email.unwrap_or_default(),
            phone: self.phone,
            address1: self.address1.unwrap_or_default(),
            address2: self.address2,
            city: self.city.unwrap_or_default(),
            state: self.state.unwrap_or_default(),
            zip: self.zip.unwrap_or_default(),
            employer: self.employer,
            occupation: self.occupation,
        }
    }
}

/// The attestations as an API body: absent is false.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationsBody {
    #[serde(default)]
    own_funds: bool,
    #[serde(default)]
    citizen_or_resident: bool,
    #[serde(default)]
    not_contractor: bool,
    #[serde(default = "yes")]
    personal_card: bool,
}

fn yes() -> bool {
    true
}

/// `POST /api/v1/donations`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDonationBody {
    /// Or the `Idempotency-Key` header (which wins).
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Dollars as the donor typed them (`"25"`, `"25.50"`), a string or a number.
    #[serde(default)]
    pub amount: Option<Value>,
    /// Or the amount in cents.
    #[serde(default)]
    pub amount_cents: Option<i64>,
    #[serde(default)]
    donor: DonorBody,
    #[serde(default)]
    attestations: AttestationsBody,
    /// The processor's token (`pm_...`).
    #[serde(default)]
    pub payment_method: Option<String>,
    /// Keep the card (as the processor's token) for one-click gifts.
    #[serde(default)]
    pub save_method: bool,
    /// Attribution: the link's refcode.
    #[serde(default)]
    pub refcode: Option<String>,
    /// Attribution: where the donor came from.
    #[serde(default)]
    pub source: Option<String>,
    /// Repeat the gift every month or week (the card is kept for it).
    #[serde(default)]
    pub recurring: Option<RecurringBody>,
}

/// A recurring gift's schedule in an API body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecurringBody {
    /// `month` or `week`.
    pub every: String,
    /// The last day (UTC, `YYYY-MM-DD`) on which an installment may be charged.
    #[serde(default)]
    pub ends_on: Option<String>,
}

impl RecurringBody {
    /// The service's schedule: `ends_on` becomes the end of that day (UTC).
    pub(crate) fn into_recurrence(self) -> Result<Recurrence, DonationError> {
        let ends_at = match self.ends_on.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(day) => Some(end_of_day_ms(day).ok_or_else(|| {
                bad(
                    "recurring.ends_on",
                    "invalid_date",
                    "the end date must be a date like 2026-11-03",
                )
            })?),
        };
        Ok(Recurrence {
            every: self.every.trim().to_ascii_lowercase(),
            ends_at,
        })
    }
}

/// The last millisecond (UTC) of a `YYYY-MM-DD` day.
pub(crate) fn end_of_day_ms(day: &str) -> Option<i64> {
    let mut parts = day.split('-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let (y, m, d): (i64, u32, u32) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let days = narwhal_domain::civil::days_from_civil(y, m, d);
    // 2026-02-30 is not a day: it would come back as March 2.
    (narwhal_domain::civil::civil_from_days(days) == (y, m, d))
        .then_some((days + 1) * 86_400_000 - 1)
}

fn bad(field: &'static str, code: &'static str, message: &str) -> DonationError {
    DonationError::Invalid {
        field,
        code,
        message: message.into(),
    }
}

/// Cents from `amount` (dollars, as typed) or `amount_cents`.
pub(crate) fn amount_of(amount: Option<&Value>, cents: Option<i64>) -> Result<i64, DonationError> {
    let typed = match amount {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(Value::Null) | None => None,
        Some(_) => {
            return Err(bad(
                "amount",
                "invalid_amount",
                "the amount must be a number of dollars",
            ))
        }
    };
    match (typed, cents) {
        (Some(t), _) => narwhal_domain::Cents::parse_dollars(&t)
            .map(|c| c.get())
            .map_err(|e| DonationError::Invalid {
                field: "amount",
                code: "invalid_amount",
                message: e.reason,
            }),
        (None, Some(c)) => {
            narwhal_domain::Cents::new(c)
                .map(|c| c.get())
                .map_err(|e| DonationError::Invalid {
                    field: "amount",
                    code: "invalid_amount",
                    message: e.reason,
                })
        }
        (None, None) => Err(bad("amount", "required", "an amount is required")),
    }
}

/// A donation as the API shows it: no card data beyond brand and last 4, no token.
#[derive(Debug, Serialize)]
pub struct DonationView {
    id: String,
    state: String,
    outcome: Outcome,
    amount_cents: i64,
    currency: String,
    refunded_cents: i64,
    channel: String,
    refcode: Option<String>,
    source: Option<String>,
    person_id: i64,
    itemized: bool,
    needs_followup: bool,
    card_brand: Option<String>,
    card_last4: Option<String>,
    processor: Option<String>,
    error_code: Option<String>,
    message: Option<String>,
    replayed: bool,
    /// For a new pledge only: the token of its payment link (`/donate/pledge/TOKEN`),
    /// shown once; send it to the donor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pledge_token: Option<String>,
    /// For a new recurring gift: the donor's cancel link, shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    cancel_url: Option<String>,
    created_at: i64,
    updated_at: i64,
}

/// What a donor is told for an outcome.
pub(crate) fn outcome_message(o: &Outcome) -> Option<&'static str> {
    match o {
        Outcome::Succeeded => Some("Thank you! Your contribution was received."),
        Outcome::Pledged => Some(
            "Our payment processor is unavailable right now. Your pledge is recorded and we will email you a payment link.",
        ),
        Outcome::Processing => Some("Your contribution is being confirmed."),
        Outcome::Declined => Some("Your card was declined. Please try another card."),
        Outcome::Failed => Some("The payment could not be completed."),
    }
}

pub(crate) fn view(d: &DonationRow, replayed: bool) -> DonationView {
    let outcome = narwhal_pay::service::outcome_of(&d.state);
    DonationView {
        id: d.public_id.clone(),
        state: d.state.clone(),
        message: outcome_message(&outcome).map(str::to_string),
        outcome,
        amount_cents: d.amount_cents,
        currency: d.currency.clone(),
        refunded_cents: d.refunded_cents,
        channel: d.channel.clone(),
        refcode: d.refcode.clone(),
        source: d.source.clone(),
        person_id: d.person_id,
        itemized: d.itemized,
        needs_followup: d.needs_followup,
        card_brand: d.card_brand.clone(),
        card_last4: d.card_last4.clone(),
        processor: d.processor.clone(),
        error_code: d.error_code.clone(),
        replayed,
        pledge_token: None,
        cancel_url: None,
        created_at: d.created_at,
        updated_at: d.updated_at,
    }
}

/// The answer for a taken gift: 201/200 with the committed donation, 202 while it is
/// confirmed, 402 for a decline or a refused payment.
pub(crate) fn taken_response(t: Taken) -> Response {
    match t.outcome {
        Outcome::Declined => ApiError::new(
            StatusCode::PAYMENT_REQUIRED,
            "declined",
            "the card was declined; try another card",
        )
        .into_response(),
        Outcome::Failed => ApiError::new(
            StatusCode::PAYMENT_REQUIRED,
            "payment_failed",
            "the payment could not be completed",
        )
        .into_response(),
        Outcome::Processing => {
            (StatusCode::ACCEPTED, Json(view(&t.donation, t.replayed))).into_response()
        }
        Outcome::Succeeded | Outcome::Pledged => {
            let status = if t.replayed {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            let mut v = view(&t.donation, t.replayed);
            v.pledge_token = t.pledge_token;
            v.cancel_url = t
                .plan_cancel_token
                .map(|c| format!("/donate/recurring/cancel/{c}"));
            (status, Json(v)).into_response()
        }
    }
}

/// `POST /api/v1/donations`: take a gift (server-to-server callers; `donations:write`).
pub async fn create(
    State(s): State<AppState>,
    peer: Peer,
    headers: HeaderMap,
    Json(body): Json<NewDonationBody>,
) -> ApiResult<Response> {
    let edge = edge(&s)?;
    let key = headers
        .get(crate::inbound::IDEMPOTENCY_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or(body.idempotency_key.clone())
        .unwrap_or_default();
    let amount = match amount_of(body.amount.as_ref(), body.amount_cents) {
        Ok(a) => a,
        Err(e) => return Ok(refused_response(Refused::Donation(e))),
    };
    if body
        .payment_method
        .as_deref()
        .is_none_or(|p| p.trim().is_empty())
    {
        return Ok(refused_response(Refused::Donation(bad(
            "payment_method",
            "required",
            "the processor's token for the card (pm_...) is required",
        ))));
    }
    let recurring = match body
        .recurring
        .map(RecurringBody::into_recurrence)
        .transpose()
    {
        Ok(r) => r,
        Err(e) => return Ok(refused_response(Refused::Donation(e))),
    };
    let a = body.attestations;
    let req = DonationRequest {
        idempotency_key: key,
        amount_cents: amount,
        donor: body.donor.into_donor(),
        attestations: Attestations {
            own_funds: a.own_funds,
            citizen_or_resident: a.citizen_or_resident,
            not_contractor: a.not_contractor,
            personal_card: a.personal_card,
        },
        payment_method: body.payment_method,
        save_method: body.save_method,
        refcode: body.refcode,
        source: body.source,
        channel: "api".into(),
        recurring,
        client_ip: Some(client_ip(edge, &peer, &headers)),
        plan_id: None,
        customer: None,
        processor: None,
    };
    Ok(match intake(&s, edge, req, None).await {
        Ok(t) => taken_response(t),
        Err(r) => refused_response(r),
    })
}

async fn by_public_id(s: &AppState, id: &str) -> ApiResult<DonationRow> {
    s.store
        .donation_by_public_id(id)
        .await?
        .ok_or_else(|| ApiError::not_found("donation"))
}

/// `GET /api/v1/donations/{public_id}`.
pub async fn show(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<DonationView>> {
    edge(&s)?;
    Ok(Json(view(&by_public_id(&s, &id).await?, false)))
}

/// Filters of `GET /api/v1/donations`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DonationQuery {
    state: Option<String>,
    refcode: Option<String>,
    email: Option<String>,
    /// Created at or after (ms).
    since: Option<i64>,
    /// Created before (ms).
    until: Option<i64>,
    /// Keyset cursor: the `next_before` of the previous page.
    before: Option<i64>,
    limit: Option<i64>,
}

impl DonationQuery {
    pub(crate) fn search(self) -> DonationSearch {
        let clean = |v: Option<String>| v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        DonationSearch {
            state: clean(self.state),
            refcode: clean(self.refcode),
            email: clean(self.email),
            since_ms: self.since,
            until_ms: self.until,
            before_id: self.before,
            limit: self.limit.unwrap_or(50).clamp(1, 200),
        }
    }
}

/// `GET /api/v1/donations`: search by state, refcode, email and time, newest first.
pub async fn index(
    State(s): State<AppState>,
    Query(q): Query<DonationQuery>,
) -> ApiResult<Json<Value>> {
    edge(&s)?;
    let search = q.search();
    let rows = s.store.search_donations(&search).await?;
    let next = (rows.len() as i64 == search.limit)
        .then(|| rows.last().map(|d| d.id))
        .flatten();
    let items: Vec<DonationView> = rows.iter().map(|d| view(d, false)).collect();
    Ok(Json(json!({"donations": items, "next_before": next})))
}

/// `POST /api/v1/donations/{public_id}/refund`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    /// Cents to refund; absent: all that is left.
    #[serde(default)]
    pub amount_cents: Option<i64>,
}

/// `POST /api/v1/donations/giving-links`: a one-click giving link for a donor with a
/// saved card, to put in an email (`donations:write`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GivingLinkBody {
    /// The donor (a person with a saved card).
    pub person_id: i64,
    /// Dollars (`"25"`), or `amount_cents`.
    #[serde(default)]
    pub amount: Option<Value>,
    /// The amount in cents, instead of `amount`.
    #[serde(default)]
    pub amount_cents: Option<i64>,
    /// How long the link works (default 14 days, at most 90).
    #[serde(default)]
    pub valid_days: Option<i64>,
}

/// A giving link as issued: the URL is shown once (only its hash is stored).
#[derive(Debug, Serialize)]
pub struct GivingLinkView {
    /// `/donate/give/TOKEN`, relative to the donation pages' public address.
    pub url: String,
    /// What one tap gives.
    pub amount_cents: i64,
    /// When the link stops working (ms).
    pub expires_at: i64,
    /// The saved card it charges, as the confirm page shows it.
    pub card_brand: Option<String>,
    /// Its last 4 digits.
    pub card_last4: Option<String>,
}

/// How long a giving link works unless the request says.
const DEFAULT_LINK_DAYS: i64 = 14;

/// `POST /api/v1/donations/giving-links`.
pub async fn giving_link(
    State(s): State<AppState>,
    Json(body): Json<GivingLinkBody>,
) -> ApiResult<Response> {
    let edge = edge(&s)?;
    let amount = match amount_of(body.amount.as_ref(), body.amount_cents) {
        Ok(a) => a,
        Err(e) => return Ok(refused_response(Refused::Donation(e))),
    };
    let days = body.valid_days.unwrap_or(DEFAULT_LINK_DAYS);
    if !(1..=90).contains(&days) {
        return Ok(refused_response(Refused::Donation(bad(
            "valid_days",
            "invalid_valid_days",
            "a giving link works for 1 to 90 days",
        ))));
    }
    let person = narwhal_domain::PersonId(body.person_id);
    let Some(method) = s.store.saved_methods(person).await?.into_iter().next() else {
        return Ok(refused_response(Refused::Donation(bad(
            "person_id",
            "no_saved_method",
            "this person has no saved card to give with",
        ))));
    };
    let valid_ms = days * 86_400_000;
    let token = edge
        .service
        .issue_one_click_link(person, method.id, amount, valid_ms)
        .await
        .map_err(donation_error)?;
    Ok((
        StatusCode::CREATED,
        Json(GivingLinkView {
            url: format!("/donate/give/{token}"),
            amount_cents: amount,
            expires_at: narwhal_store::now_ms() + valid_ms,
            card_brand: method.card_brand,
            card_last4: method.card_last4,
        }),
    )
        .into_response())
}

/// `POST /api/v1/donations/{public_id}/refund` (staff, `donations:refund`): refunds at
/// the processor under a key derived from the donation's refunded total (a retry of
/// the same refund is the same refund), then records it.
pub async fn refund(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Extension(caller): Extension<Caller>,
    Json(body): Json<RefundBody>,
) -> ApiResult<Response> {
    let edge = edge(&s)?;
    let d = by_public_id(&s, &id).await?;
    if !matches!(d.state.as_str(), "succeeded" | "partially_refunded") {
        return Err(ApiError::invalid(format!(
            "a {} donation cannot be refunded",
            d.state
        )));
    }
    let left = d.amount_cents - d.refunded_cents;
    let amount = body.amount_cents.unwrap_or(left);
    if amount <= 0 || amount > left {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_amount",
            format!("amount_cents: between 1 and {left}"),
        ));
    }
    let (Some(processor), Some(pref)) = (d.processor.as_deref(), d.processor_ref.as_deref()) else {
        return Err(ApiError::invalid("this donation has no processor charge"));
    };
    let Some((_, p)) = edge.service.router.by_name(processor) else {
        return Err(ApiError::invalid(
            "the processor that charged this donation is not configured",
        ));
    };
    let key = format!("refund-{}-{}-{amount}", d.public_id, d.refunded_cents);
    match p.refund(pref, amount, &key).await {
        RefundOutcome::Refunded { refund_ref, amount } => {
            s.store
                .record_refund(d.id, &refund_ref, amount, &edge.service.config.limits)
                .await?;
            s.store
                .audit(&narwhal_store::audit::AuditEntry::new(
                    &caller.actor,
                    "donation.refund",
                    "donation",
                    &d.public_id,
                    json!({"amount_cents": amount}),
                ))
                .await?;
            let d = by_public_id(&s, &id).await?;
            Ok(Json(view(&d, false)).into_response())
        }
        RefundOutcome::Refused { code, .. } => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "refund_refused",
            format!("the processor refused the refund ({code})"),
        )),
        RefundOutcome::Failed { .. } => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "processor_unavailable",
            "the processor could not be reached; retry the refund",
        )),
    }
}

// ---------------------------------------------------------------------------
// Webhooks

/// The webhook routes (outside `/api/v1`: the processor signs them, no token).
pub fn router() -> axum::Router<AppState> {
    axum::Router::new().route("/webhooks/stripe/{processor}", post(stripe_webhook))
}

#[derive(Deserialize)]
struct EventHead {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    data: EventData,
}

#[derive(Deserialize)]
struct EventData {
    object: Value,
}

/// `POST /webhooks/stripe/{processor}`: verifies `Stripe-Signature` with that
/// account's signing secret (300 s tolerance), deduplicates by event id and applies
/// the event. Forged: 400 `invalid_signature`; stale or replayed later: 400
/// `stale_signature`; no header: 400 `missing_signature`. A refund or dispute of a
/// donation not settled yet: 409 `not_ready` (the processor delivers it again).
pub async fn stripe_webhook(
    State(s): State<AppState>,
    axum::extract::Path(processor): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let edge = edge(&s)?;
    let secret = edge
        .webhook_secrets
        .get(&processor)
        .ok_or_else(|| ApiError::not_found("webhook endpoint"))?;
    let header = headers
        .get(webhook::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok());
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if let Err(e) = webhook::verify(
        header,
        &body,
        secret.expose(),
        now,
        webhook::DEFAULT_TOLERANCE_SECS,
    ) {
        let code = match e {
            webhook::WebhookError::Missing => "missing_signature",
            webhook::WebhookError::Malformed(_) | webhook::WebhookError::NoMatch => {
                "invalid_signature"
            }
            webhook::WebhookError::Stale { .. } => "stale_signature",
        };
        tracing::warn!(processor = %processor, code, "webhook refused");
        return Err(ApiError::bad_request(code, e.to_string()));
    }
    let event: EventHead = serde_json::from_slice(&body)
        .map_err(|_| ApiError::bad_request("malformed_event", "the event is not a Stripe event"))?;
    if s.store.payment_event_seen(&event.id).await? {
        return Ok(Json(json!({"received": true, "duplicate": true})).into_response());
    }
    let applied = edge
        .service
        .apply_event(&processor, &event.kind, &event.data.object)
        .await
        .map_err(donation_error)?;
    if applied == Applied::NotReady {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_ready",
            "the donation is not settled yet; deliver this event again later",
        ));
    }
    let object_ref = event.data.object.get("id").and_then(Value::as_str);
    s.store
        .record_payment_event(
            &event.id,
            &processor,
            &event.kind,
            object_ref,
            &String::from_utf8_lossy(&body),
        )
        .await?;
    let applied = match applied {
        Applied::Changed => "changed",
        Applied::Unchanged => "unchanged",
        Applied::Ignored | Applied::NotReady => "ignored",
    };
    Ok(Json(json!({"received": true, "duplicate": false, "applied": applied})).into_response())
}

// ---------------------------------------------------------------------------
// OpenAPI

/// The JSON Schemas of the donation bodies, merged into `components/schemas`.
pub fn schemas() -> serde_json::Map<String, Value> {
    let opt = |ex: &str| json!({"type": ["string", "null"], "examples": [ex]});
    let r = |name: &str| json!({"$ref": format!("#/components/schemas/{name}")});
    let v = json!({
        "NewDonation": {"type": "object", "additionalProperties": false, "properties": {
            "idempotency_key": {"type": ["string", "null"], "maxLength": 255, "description": "or the Idempotency-Key header, which wins", "examples": ["3f1c9a7e-donation-1"]},
            "amount": {"type": ["string", "number", "null"], "description": "dollars as typed: \"25\", \"25.50\"", "examples": ["25.00"]},
            "amount_cents": {"type": ["integer", "null"], "minimum": 1, "examples": [null]},
            "donor": {"type": "object", "additionalProperties": false, "description": "every part but phone, address2, employer and occupation is required (code required)",
                "properties": {
                    "first_name": opt("Ada"), "last_name": opt("Lovelace"), "email": opt("ada@example.org"),
                    "phone": opt("+16145550101"), "address1": opt("12 Main St"), "address2": opt("Apt 3"),
                    "city": opt("Columbus"), "state": opt("OH"), "zip": opt("43215"),
                    "employer": opt("Acme"), "occupation": opt("Engineer")},
                "examples": [{"first_name": "Ada", "last_name": "Lovelace", "email": "ada@example.org",
                    "address1": "12 Main St", "city": "Columbus", "state": "OH", "zip": "43215",
                    "employer": "Acme", "occupation": "Engineer"}]},
            "attestations": {"type": "object", "additionalProperties": false, "description": "all must be true (code attestation_required)",
                "properties": {"own_funds": {"type": "boolean"}, "citizen_or_resident": {"type": "boolean"},
                    "not_contractor": {"type": "boolean"}, "personal_card": {"type": "boolean"}},
                "examples": [{"own_funds": true, "citizen_or_resident": true, "not_contractor": true}]},
            "payment_method": {"type": ["string", "null"], "pattern": "^[A-Za-z0-9_]+$", "description": "the processor's token; never a card number", "examples": ["pm_card_visa"]},
            "save_method": {"type": "boolean", "examples": [false]},
            "refcode": opt("email-0412"), "source": opt("newsletter"),
            "recurring": {"type": ["object", "null"], "additionalProperties": false, "required": ["every"],
                "description": "repeat the gift (the card is kept for it); the answer's cancel_url is the donor's cancel link",
                "properties": {"every": {"type": "string", "enum": ["month", "week"]},
                    "ends_on": {"type": ["string", "null"], "description": "last day an installment may be charged (UTC)", "examples": ["2026-11-03"]}},
                "examples": [null]}}},
        "Donation": {"type": "object", "required": ["id", "state", "outcome", "amount_cents", "currency", "refunded_cents", "channel", "person_id", "itemized", "needs_followup", "replayed", "created_at", "updated_at"],
            "properties": {
                "id": {"type": "string", "examples": ["don_5c2e0a9b7d1f3e4a6b8c0d2e"]},
                "state": {"type": "string", "enum": ["processing", "succeeded", "declined", "failed", "pledged", "canceled", "partially_refunded", "refunded", "disputed"]},
                "outcome": {"type": "string", "enum": ["succeeded", "declined", "failed", "pledged", "processing"]},
                "amount_cents": {"type": "integer"}, "currency": {"type": "string"}, "refunded_cents": {"type": "integer"},
                "channel": {"type": "string"}, "refcode": {"type": ["string", "null"]}, "source": {"type": ["string", "null"]},
                "person_id": {"type": "integer"}, "itemized": {"type": "boolean"}, "needs_followup": {"type": "boolean"},
                "card_brand": {"type": ["string", "null"]}, "card_last4": {"type": ["string", "null"]},
                "processor": {"type": ["string", "null"], "description": "the account that charged it"},
                "error_code": {"type": ["string", "null"]}, "message": {"type": ["string", "null"], "description": "what to tell the donor"},
                "replayed": {"type": "boolean", "description": "the idempotency key was seen before; nothing was charged now"},
                "pledge_token": {"type": "string", "description": "a new pledge's payment link token (/donate/pledge/TOKEN), shown once"},
                "cancel_url": {"type": "string", "description": "a new recurring gift's cancel link for the donor, shown once"},
                "created_at": {"type": "integer"}, "updated_at": {"type": "integer"}}},
        "DonationPage": {"type": "object", "required": ["donations", "next_before"], "properties": {
            "donations": {"type": "array", "items": r("Donation")},
            "next_before": {"type": ["integer", "null"], "description": "pass as before= for the next page"}}},
        "GivingLinkRequest": {"type": "object", "additionalProperties": false, "required": ["person_id"], "properties": {
            "person_id": {"type": "integer", "examples": [42]},
            "amount": {"type": ["string", "number", "null"], "description": "dollars, or amount_cents", "examples": ["25"]},
            "amount_cents": {"type": ["integer", "null"], "minimum": 1, "examples": [null]},
            "valid_days": {"type": ["integer", "null"], "minimum": 1, "maximum": 90, "description": "default 14", "examples": [14]}}},
        "GivingLink": {"type": "object", "required": ["url", "amount_cents", "expires_at"], "properties": {
            "url": {"type": "string", "description": "/donate/give/TOKEN: a single-use one-tap confirm page, shown once", "examples": ["/donate/give/7Hq2..."]},
            "amount_cents": {"type": "integer"}, "expires_at": {"type": "integer"},
            "card_brand": {"type": ["string", "null"]}, "card_last4": {"type": ["string", "null"]}}},
        "RefundRequest": {"type": "object", "additionalProperties": false, "properties": {
            "amount_cents": {"type": ["integer", "null"], "minimum": 1, "description": "absent: all that is left", "examples": [500]}}}
    });
    match v {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}
