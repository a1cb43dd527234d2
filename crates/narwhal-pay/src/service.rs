//! Taking a donation: validate, resolve the donor, commit, charge, settle, commit.
//!
//! The path of one gift ([`Donations::take`]):
//! 1. Validate the request (amount, donor fields, attestations, no card number in any
//!    free-text field) and hash its parameters.
//! 2. Resolve the donor to a person in the hub (a commit of its own, made by the same
//!    group-commit stage just before step 3's, for the same batch of gifts).
//! 3. One durable commit: the donation (state `processing`) under the client's
//!    idempotency key, its designation and reservation against the donor's limits, and
//!    its first attempt row naming the processor about to be called. A reused key
//!    returns the stored donation (or refuses other parameters); a gift over the limit
//!    stops here with the room left.
//! 4. Call the processor with the attempt key as `Idempotency-Key`.
//!    - Succeeded, declined or refused: commit the final state (ledger postings with a
//!      charge; room given back without one). Only then answer the donor.
//!    - Unavailable (known not charged): close the attempt, open the next one at the
//!      next processor, durably, and call it.
//!    - Ambiguous: ask the same processor what became of the attempt key until it
//!      answers (bounded by `settle_timeout`). Charged: succeeded. Not charged: fail
//!      over as above. Still unknown: the donation stays `processing`, the donor is told
//!      it is being confirmed, and the settler ([`Donations::settle_unsettled`]) asks
//!      again later. Nothing else happens to that donation meanwhile. The lost
//!      answer still counts against the processor's breaker: new donations may go to
//!      the next processor, which is safe because they were never sent anywhere.
//! 5. No processor up: the donation becomes a **pledge** (no card data kept) with a
//!    single-use completion token; the donor is told we will send a payment link.

use crate::batch::{Batcher, Workers};
use crate::processor::{ChargeOutcome, ChargeRequest, Charged, LookupOutcome};
use crate::router::Router;
use narwhal_domain::card::contains_card_number;
use narwhal_domain::limits::{LimitRefusal, LimitTable};
use narwhal_domain::{Cents, Email, PersonDraft, PersonId, PhoneE164, PostalAddress};
use narwhal_people::Hub;
use narwhal_store::donations::{
    attempt, year_of_ms, Begun, CardOnFile, Completion, DonationRow, FailOver, Finish, NewDonation,
    NewDonors,
};
use narwhal_store::{now_ms, Backend, Store, StoreError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// The donor as they filled in the form. Every field is checked for card numbers.
#[derive(Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Donor {
    pub first_name: String,
    pub last_name: String,
    pub email: String,
    #[serde(default)]
    pub phone: Option<String>,
    pub address1: String,
    #[serde(default)]
    pub address2: Option<String>,
    pub city: String,
    pub state: String,
    pub zip: String,
    /// Asked of every donor; required once the cycle aggregate passes $200.
    #[serde(default)]
    pub employer: Option<String>,
    #[serde(default)]
    pub occupation: Option<String>,
}

impl std::fmt::Debug for Donor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Donor([redacted])")
    }
}

/// The attestations federal law requires of a donor.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Attestations {
    /// The gift is made from the donor's own funds, not those of another.
    pub own_funds: bool,
    /// The donor is a US citizen or lawful permanent resident.
    pub citizen_or_resident: bool,
    /// The donor is not a federal contractor.
    pub not_contractor: bool,
    /// The gift is made on a personal card, not a corporate one.
    #[serde(default = "yes")]
    pub personal_card: bool,
}

fn yes() -> bool {
    true
}

/// A gift as asked for.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct DonationRequest {
    /// The client's key: the same key is the same donation, forever.
    pub idempotency_key: String,
    /// The amount in cents.
    pub amount_cents: i64,
    pub donor: Donor,
    pub attestations: Attestations,
    /// The processor's token for the card (`pm_...`); `None` only for a pledge.
    pub payment_method: Option<String>,
    /// Keep the card (as a processor token) for one-click gifts.
    #[serde(default)]
    pub save_method: bool,
    #[serde(default)]
    pub refcode: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    /// `page`, `api`, `compat`, `one_click`, `recurring`.
    pub channel: String,
    /// Repeat this gift every week or month from now on (the card is saved).
    #[serde(default)]
    pub recurring: Option<Recurrence>,
    #[serde(skip)]
    pub client_ip: Option<String>,
    #[serde(skip)]
    pub plan_id: Option<i64>,
    /// The processor's customer for a saved method (one-click and recurring gifts).
    #[serde(skip)]
    pub customer: Option<String>,
    /// Only this processor may charge it (a saved method belongs to one account).
    #[serde(skip)]
    pub processor: Option<String>,
}

/// How often a recurring gift repeats, and until when.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Recurrence {
    /// `month` or `week`.
    pub every: String,
    /// No installment after this time (ms since the epoch), e.g. election day.
    #[serde(default)]
    pub ends_at: Option<i64>,
}

/// Why a donation was not taken. Nothing here ever repeats a rejected value.
#[derive(Debug, thiserror::Error)]
pub enum DonationError {
    /// A field is wrong: `field`, a stable `code` and a message for the donor.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        code: &'static str,
        message: String,
    },
    /// The idempotency key was used before with other parameters.
    #[error("this idempotency key was already used for a different donation")]
    KeyReused,
    /// Another request with this key is still being processed.
    #[error("a request with this idempotency key is still in progress")]
    InFlight,
    /// Over the donor's contribution limit.
    #[error("{0}")]
    OverLimit(LimitRefusal),
    /// The database failed: nothing was acknowledged.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The hub could not resolve the donor.
    #[error("{0}")]
    People(String),
    /// The database could not commit now: nothing was acknowledged; retry with the
    /// same idempotency key.
    #[error("donations are unavailable for a moment: {0}")]
    Unavailable(String),
}

fn invalid(field: &'static str, code: &'static str, message: impl Into<String>) -> DonationError {
    DonationError::Invalid {
        field,
        code,
        message: message.into(),
    }
}

/// What the donor is told.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Charged: thank them.
    Succeeded,
    /// The card was declined: ask for another.
    Declined,
    /// Refused for another reason.
    Failed,
    /// Recorded as a pledge: we will email a payment link.
    Pledged,
    /// Being confirmed with the processor (an ambiguous attempt not settled yet).
    Processing,
}

/// The result of [`Donations::take`].
#[derive(Clone, Debug)]
pub struct Taken {
    pub outcome: Outcome,
    pub donation: DonationRow,
    /// For a new pledge: the completion token to put in the payment link (shown once).
    pub pledge_token: Option<String>,
    /// The same key was seen before: this is the stored donation, nothing was charged now.
    pub replayed: bool,
    /// The saved payment method, when the donor asked to save it.
    pub saved_method_id: Option<i64>,
    /// For a new recurring plan: the token of the donor's cancel link (shown once).
    pub plan_cancel_token: Option<String>,
}

/// What a charge needs besides the donation's ids.
struct ChargeCtx {
    person_id: i64,
    payment_method: String,
    customer: Option<String>,
    amount: i64,
    save_method: bool,
}

/// Settings of the donation service.
#[derive(Clone, Debug)]
pub struct PayConfig {
    pub limits: LimitTable,
    pub currency: String,
    /// How long to keep asking about an ambiguous attempt before leaving it to the settler.
    pub settle_timeout: Duration,
    /// The pause between status queries.
    pub settle_interval: Duration,
    /// An attempt left `started` this long (its node died) is settled by the settler.
    pub abandoned_after: Duration,
    /// How long after an attempt a "no charge found" answer is believed. A search can
    /// lag behind a charge (Stripe's by up to about a minute), and an ambiguous request
    /// may still be running at the processor: before this, "not found" means "not
    /// yet", and the donation waits rather than fail over.
    pub lookup_grace: Duration,
    /// The longest a new donation waits for the group commits that resolve its donor
    /// and store it. Past it the node is too far behind to answer in time, and the
    /// donor is told to retry (503 with `Retry-After`; nothing was stored or charged)
    /// instead of waiting in a line that only grows. Finishing a charged gift never
    /// waits on this.
    pub admit_wait: Duration,
}

impl Default for PayConfig {
    fn default() -> Self {
        Self {
            limits: LimitTable::default(),
            currency: "usd".into(),
            settle_timeout: Duration::from_secs(5),
            settle_interval: Duration::from_millis(250),
            abandoned_after: Duration::from_secs(60),
            lookup_grace: Duration::from_secs(60),
            admit_wait: Duration::from_secs(1),
        }
    }
}

/// The donation service.
#[derive(Clone)]
pub struct Donations {
    pub store: Store,
    pub hub: Hub,
    pub router: Arc<Router>,
    pub config: Arc<PayConfig>,
    batches: Arc<Batches>,
}

/// The group commits a donation goes through: taking it in (its donor resolved, then
/// the donation begun) and finishing it (see [`crate::batch`]).
struct Batches {
    intake: Batcher<Intake, (PersonId, Begun)>,
    finish: Batcher<Completion, DonationRow>,
    /// Per item: the new attempt's number, or why it could not be opened.
    fail_over: Batcher<FailOver, Result<i32, String>>,
}

/// A gift on its way in: its donor's record, and the donation to begin once the
/// donor is a person (`gift.person_id` is filled in then).
struct Intake {
    draft: PersonDraft,
    gift: NewDonation,
}

/// The most items in one group commit.
const MAX_BATCH: usize = 256;

const MAX_TEXT: usize = 200;

fn check_text(field: &'static str, value: &str, required: bool) -> Result<(), DonationError> {
    if contains_card_number(value) {
        return Err(invalid(
            field,
            "card_number_in_text",
            "this field looks like it contains a card number; card details go only in the card field",
        ));
    }
    if required && value.trim().is_empty() {
        return Err(invalid(field, "required", "this field is required"));
    }
    if value.len() > MAX_TEXT {
        return Err(invalid(
            field,
            "too_long",
            format!("at most {MAX_TEXT} characters"),
        ));
    }
    Ok(())
}

/// Checks a request and builds the donor's hub record. Pure.
pub fn validate(req: &DonationRequest) -> Result<PersonDraft, DonationError> {
    let key = req.idempotency_key.trim();
    if key.is_empty() || key.len() > 255 {
        return Err(invalid(
            "idempotency_key",
            "invalid_idempotency_key",
            "an idempotency key of 1 to 255 characters is required",
        ));
    }
    Cents::new(req.amount_cents).map_err(|e| invalid("amount", "invalid_amount", e.reason))?;
    let d = &req.donor;
    check_text("first_name", &d.first_name, true)?;
    check_text("last_name", &d.last_name, true)?;
    check_text("email", &d.email, true)?;
    check_text("address1", &d.address1, true)?;
    check_text("city", &d.city, true)?;
    check_text("state", &d.state, true)?;
    check_text("zip", &d.zip, true)?;
    for (field, v) in [
        ("phone", &d.phone),
        ("address2", &d.address2),
        ("employer", &d.employer),
        ("occupation", &d.occupation),
    ] {
        if let Some(v) = v {
            check_text(field, v, false)?;
        }
    }
    for (field, v) in [("refcode", &req.refcode), ("source", &req.source)] {
        if let Some(v) = v {
            check_text(field, v, false)?;
        }
    }
    if let Some(pm) = &req.payment_method {
        check_text("payment_method", pm, false)?;
        if pm.is_empty()
            || pm.len() > 255
            || !pm.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(invalid(
                "payment_method",
                "invalid_payment_method",
                "the payment method must be the processor's token (pm_...)",
            ));
        }
    }
    if let Some(r) = &req.recurring {
        if r.every != "month" && r.every != "week" {
            return Err(invalid(
                "recurring.every",
                "invalid_interval",
                "a recurring gift repeats every `month` or `week`",
            ));
        }
        if r.ends_at.is_some_and(|t| t <= now_ms()) {
            return Err(invalid(
                "recurring.ends_at",
                "invalid_end",
                "the end date must be in the future",
            ));
        }
    }
    let a = req.attestations;
    for (ok, field) in [
        (a.own_funds, "attestations.own_funds"),
        (a.citizen_or_resident, "attestations.citizen_or_resident"),
        (a.not_contractor, "attestations.not_contractor"),
        (a.personal_card, "attestations.personal_card"),
    ] {
        if !ok {
            return Err(invalid(
                field,
                "attestation_required",
                "federal law requires this statement to be true for a contribution",
            ));
        }
    }
    let email = Email::parse(&d.email).map_err(|e| invalid("email", "invalid_email", e.reason))?;
    let address = PostalAddress::parse(
        &d.address1,
        d.address2.as_deref().unwrap_or(""),
        &d.city,
        &d.state,
        &d.zip,
        "",
        "",
    )
    .map_err(|e| {
        let field = if e.what == "state" { "state" } else { "zip" };
        invalid(field, "invalid_address", e.reason)
    })?;
    let mut draft = PersonDraft {
        emails: vec![email],
        address: Some(address),
        ..PersonDraft::default()
    };
    draft.name.first_name = Some(d.first_name.trim().to_string());
    draft.name.last_name = Some(d.last_name.trim().to_string());
    if let Some(p) = d.phone.as_deref().filter(|p| !p.trim().is_empty()) {
        let phone = PhoneE164::parse(p).map_err(|e| invalid("phone", "invalid_phone", e.reason))?;
        draft.phones.push(phone);
    }
    Ok(draft)
}

/// A hash of everything that makes a request this request (not the key, not the IP).
pub fn request_hash(req: &DonationRequest) -> String {
    let canonical = serde_json::json!({
        "amount": req.amount_cents,
        "donor": req.donor,
        "attestations": req.attestations,
        "payment_method": req.payment_method,
        "save_method": req.save_method,
        "refcode": req.refcode,
        "source": req.source,
        "channel": req.channel,
        "recurring": req.recurring,
    });
    hex(&Sha256::digest(canonical.to_string().as_bytes()))
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random token (URL-safe hex) and its SHA-256 hash (what is stored).
pub fn new_token() -> (String, String) {
    let raw: [u8; 24] = rand_bytes();
    let token = hex(&raw);
    let hash = hex(&Sha256::digest(token.as_bytes()));
    (token, hash)
}

/// The stored hash of a token.
pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    use rand::RngCore;
    let mut b = [0u8; N];
    rand::thread_rng().fill_bytes(&mut b);
    b
}

/// Tries at recording a donation's outcome before the request gives up and leaves it
/// to the settler, and the first pause between them (doubled each time).
const FINISH_TRIES: u32 = 4;
const FINISH_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// A new public donation id: `don_`, the current second as 8 hex digits, then 96
/// random bits.
///
/// The time comes first so that ids (and the attempt keys built from them) sort by
/// creation: a donation's unique index entries then land at the right edge of the
/// index, a few pages every server keeps cached, instead of at random places in an
/// index that outgrows the cache as the table grows (at 2,000 gifts a second, each
/// random-keyed index is another 10 MB a minute to keep in memory). The random part
/// alone keeps an id unguessable.
pub fn new_public_id() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    public_id_at(secs, rand_bytes())
}

/// The public id of a donation created at `secs` (Unix time) with random part `raw`.
fn public_id_at(secs: u64, raw: [u8; 12]) -> String {
    // 8 hex digits hold seconds until 2106; later ones keep their low 32 bits.
    format!("don_{:08x}{}", secs & 0xffff_ffff, hex(&raw))
}

impl Donations {
    /// Builds the service and spawns its group-commit workers: on SQLite one per batch
    /// kind, on the commit thread (its single writer serializes them anyway, and
    /// there the writer is never left waiting for a busy runtime: see
    /// [`crate::batch::commit_thread`]); two per kind on PostgreSQL.
    pub fn new(store: Store, router: Arc<Router>, config: PayConfig) -> Self {
        let config = Arc::new(config);
        let hub = Hub::new(store.clone());
        let (on, workers) = match store.backend() {
            Backend::Sqlite => (Workers::CommitThread, 1),
            // Two batches in flight per stage, not four: when the node is busy, fewer
            // and larger batches share each round trip and commit among more gifts,
            // and that CPU is what the requests queue for (alternated 30 s runs at
            // 2,000/s: p50 122-125 ms against 250-270 ms with four). Two, not one, so
            // that a batch waiting on a donor's lock or a slow round trip does not hold
            // up every gift on the node.
            Backend::Postgres => (Workers::Shared, 2),
        };
        // One stage for both commits that come before the processor: the donors of a
        // batch are resolved, then the same batch of donations begins, back to back in
        // one worker. As two stages each gift waited in line twice, and crossed from a
        // worker to its request's task and back in between.
        let intake = {
            let hub = hub.clone();
            let store = store.clone();
            let config = config.clone();
            Batcher::spawn_on(on, MAX_BATCH, workers, move |batch: Vec<Intake>| {
                let hub = hub.clone();
                let store = store.clone();
                let config = config.clone();
                async move {
                    let (drafts, mut gifts): (Vec<PersonDraft>, Vec<NewDonation>) =
                        batch.into_iter().map(|i| (i.draft, i.gift)).unzip();
                    let people = if store.backend() == Backend::Postgres {
                        // Donors who are all new people are written in the statement
                        // that checks their keys and begins their gifts: one round trip
                        // and one commit for the stage (see
                        // `Store::begin_donations_for_new_people`).
                        match hub.plan_new_people(drafts, "donations", "donation", true) {
                            Err(drafts) => {
                                hub.upsert_batch(drafts, "donations", "donation", true)
                                    .await
                                    .map_err(|e| e.to_string())?
                                    .0
                            }
                            Ok(plan) => {
                                let done = store
                                    .begin_donations_for_new_people(
                                        &plan.changes,
                                        &plan.keys,
                                        &plan.person_of_input,
                                        &gifts,
                                        &config.limits,
                                    )
                                    .await
                                    .map_err(|e| e.to_string())?;
                                let held = match done {
                                    NewDonors::Begun(ids, begun) => {
                                        return Ok(plan
                                            .person_of_input
                                            .iter()
                                            .map(|&i| ids[i])
                                            .zip(begun)
                                            .collect());
                                    }
                                    // Someone is in the hub already: the statement was
                                    // the lookup, and the usual path goes on from it.
                                    NewDonors::Held(held) => Some(held),
                                    // Over a limit, a key stored before, someone else's
                                    // new person: the usual path, from a fresh lookup.
                                    NewDonors::NotFit => None,
                                };
                                hub.upsert_plan(plan, "donations", "donation", true, held)
                                    .await
                                    .map_err(|e| e.to_string())?
                                    .0
                            }
                        }
                    } else {
                        hub.upsert_batch(drafts, "donations", "donation", true)
                            .await
                            .map_err(|e| e.to_string())?
                            .0
                    };
                    if people.len() != gifts.len() {
                        return Err(format!(
                            "{} donors resolved for {} gifts",
                            people.len(),
                            gifts.len()
                        ));
                    }
                    for (gift, person) in gifts.iter_mut().zip(&people) {
                        gift.person_id = person.id;
                    }
                    let begun = store
                        .begin_donations(&gifts, &config.limits)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(people.into_iter().map(|p| p.id).zip(begun).collect())
                }
            })
        };
        let finish = {
            let store = store.clone();
            let config = config.clone();
            Batcher::spawn_on(on, MAX_BATCH, workers, move |batch: Vec<Completion>| {
                let store = store.clone();
                let config = config.clone();
                async move {
                    // Finishing is idempotent (guarded transitions, ledger keyed by
                    // txn), so a batch that failed (a deadlock, a dropped connection)
                    // is simply run again.
                    // Each caller gets its donation as committed, so the donor is
                    // answered without reading it again.
                    let mut last = String::new();
                    for _ in 0..3 {
                        match store.finish_donations_read(&batch, &config.limits).await {
                            Ok(v) => return Ok(v.into_iter().map(|(_, row)| row).collect()),
                            Err(e) => last = e.to_string(),
                        }
                    }
                    Err(last)
                }
            })
        };
        let fail_over = {
            let store = store.clone();
            Batcher::spawn_on(on, MAX_BATCH, workers, move |batch: Vec<FailOver>| {
                let store = store.clone();
                async move {
                    store
                        .fail_over_attempts(&batch)
                        .await
                        .map_err(|e| e.to_string())
                }
            })
        };
        Self {
            hub,
            store,
            router,
            config,
            batches: Arc::new(Batches {
                intake,
                finish,
                fail_over,
            }),
        }
    }

    /// Takes one gift (see the module documentation for the path).
    pub async fn take(&self, req: DonationRequest) -> Result<Taken, DonationError> {
        let draft = validate(&req)?;
        let hash = request_hash(&req);
        let public_id = new_public_id();
        let mut candidates = self.router.candidates();
        if let Some(only) = &req.processor {
            candidates.retain(|&i| self.router.processor(i).name() == only);
        }
        let first = candidates.first().copied();
        let (pledge_token, pledge_hash) = if first.is_none() {
            let (t, h) = new_token();
            (Some(t), Some(h))
        } else {
            (None, None)
        };
        if first.is_none() && req.payment_method.is_none() {
            return Err(invalid(
                "payment_method",
                "required",
                "a payment method is required",
            ));
        }
        let new = NewDonation {
            public_id: public_id.clone(),
            idempotency_key: req.idempotency_key.trim().to_string(),
            request_hash: hash,
            // The donor's, once the intake stage has resolved them.
            person_id: PersonId(0),
            amount_cents: req.amount_cents,
            currency: self.config.currency.clone(),
            channel: req.channel.clone(),
            refcode: req.refcode.clone(),
            source: req.source.clone(),
            donor_json: serde_json::to_string(&req.donor)
                .map_err(|e| DonationError::People(e.to_string()))?,
            employer: req.donor.employer.clone(),
            occupation: req.donor.occupation.clone(),
            payment_method: req.payment_method.clone(),
            save_method: req.save_method,
            client_ip: req.client_ip.clone(),
            plan_id: req.plan_id,
            first_attempt: first.map(|i| {
                (
                    self.router.processor(i).name().to_string(),
                    format!("{public_id}-1"),
                )
            }),
            pledge_token_hash: pledge_hash,
            year: year_of_ms(now_ms()),
        };
        // A replay is recognized by the commit that would store the gift (its key is
        // taken), not by a read before: a new gift, by far the common case, saves that
        // round trip. Resolving a replay's donor again changes nothing (same fields).
        let intake = Intake {
            draft: draft.normalize(),
            gift: new,
        };
        let (person_id, begun) = self
            .batches
            .intake
            .submit_within(intake, self.config.admit_wait)
            .await
            .map_err(unavailable)?;
        let id = match begun {
            Begun::Created { id, .. } => id,
            Begun::Existing(row) => return self.replay(*row),
            Begun::KeyReused => return Err(DonationError::KeyReused),
            Begun::OverLimit(r) => return Err(DonationError::OverLimit(r)),
        };
        if first.is_none() {
            let donation = self.load(id).await?;
            return Ok(Taken {
                outcome: Outcome::Pledged,
                donation,
                pledge_token,
                replayed: false,
                saved_method_id: None,
                plan_cancel_token: None,
            });
        }
        let ctx = ChargeCtx {
            person_id: person_id.0,
            payment_method: req.payment_method.clone().unwrap_or_default(),
            customer: req.customer.clone(),
            amount: req.amount_cents,
            save_method: req.save_method || req.recurring.is_some(),
        };
        let mut taken = self.route(id, &public_id, &ctx, candidates, 1).await?;
        if let (Some(r), Some(method), Outcome::Succeeded) =
            (&req.recurring, taken.saved_method_id, &taken.outcome)
        {
            let (_, cancel) = self.start_plan(&req, r, person_id, method).await?;
            taken.plan_cancel_token = Some(cancel);
        }
        Ok(taken)
    }

    fn replay(&self, row: DonationRow) -> Result<Taken, DonationError> {
        let outcome = outcome_of(&row.state);
        if outcome == Outcome::Processing {
            return Err(DonationError::InFlight);
        }
        Ok(Taken {
            outcome,
            donation: row,
            pledge_token: None,
            replayed: true,
            saved_method_id: None,
            plan_cancel_token: None,
        })
    }

    async fn load(&self, id: i64) -> Result<DonationRow, DonationError> {
        self.store
            .donation_by_id(id)
            .await?
            .ok_or(DonationError::Store(StoreError::NotFound("donation")))
    }

    /// Tries processors in `candidates` order from attempt number `seq` (whose row is
    /// already committed for the first candidate).
    async fn route(
        &self,
        id: i64,
        public_id: &str,
        ctx: &ChargeCtx,
        candidates: Vec<usize>,
        seq: i32,
    ) -> Result<Taken, DonationError> {
        let mut seq = seq;
        // The attempt that did not charge, not yet closed: it is closed in the same
        // commit that opens the next one (see `Store::fail_over_attempts`).
        let mut closing: Option<(String, &'static str, String)> = None;
        for &i in &candidates {
            let processor = self.router.processor(i).clone();
            let key = format!("{public_id}-{seq}");
            // Past the first candidate there is always the attempt to close: each
            // `continue` below leaves one.
            if let Some((closing_key, closing_state, detail)) = closing.take() {
                seq = self
                    .batches
                    .fail_over
                    .submit(FailOver {
                        donation_id: id,
                        closing_key,
                        closing_state: closing_state.to_string(),
                        detail,
                        processor: processor.name().to_string(),
                        attempt_key: key.clone(),
                    })
                    .await
                    .map_err(unavailable)?
                    .map_err(|e| DonationError::Store(StoreError::Conflict(e)))?;
            }
            let key = format!("{public_id}-{seq}");
            let request = ChargeRequest {
                idempotency_key: key.clone(),
                amount: ctx.amount,
                currency: self.config.currency.clone(),
                payment_method: ctx.payment_method.clone(),
                customer: ctx.customer.clone(),
                save_method: ctx.save_method && ctx.customer.is_none(),
                metadata: vec![("narwhal_donation".into(), public_id.to_string())],
                description: None,
            };
            let outcome = processor.charge(&request).await;
            // An answer lost in time says the processor is sick even when the charge
            // went through: the breaker counts it, so new donations go to the next
            // processor while this one is settled where it was sent.
            let lost_answer = matches!(outcome, ChargeOutcome::Ambiguous { .. });
            let outcome = match outcome {
                ChargeOutcome::Ambiguous { reason } => {
                    self.router.down(i);
                    self.store
                        .mark_attempt(&key, attempt::AMBIGUOUS, &reason)
                        .await?;
                    match self.settle(i, &key).await {
                        LookupOutcome::Charged(c) => ChargeOutcome::Succeeded(c),
                        LookupOutcome::NotCharged => {
                            closing = Some((
                                key,
                                attempt::NOT_CHARGED,
                                "a status query showed no charge".into(),
                            ));
                            seq += 1;
                            continue;
                        }
                        LookupOutcome::Unknown { .. } => {
                            // Nothing else happens to this donation until it is settled.
                            return Ok(Taken {
                                outcome: Outcome::Processing,
                                donation: self.load(id).await?,
                                pledge_token: None,
                                replayed: false,
                                saved_method_id: None,
                                plan_cancel_token: None,
                            });
                        }
                    }
                }
                other => other,
            };
            let mut saved = None;
            let finish = match outcome {
                ChargeOutcome::Succeeded(c) => {
                    if !lost_answer {
                        self.router.up(i);
                    }
                    if ctx.save_method {
                        let id = self
                            .store
                            .save_payment_method(
                                PersonId(ctx.person_id),
                                processor.name(),
                                c.customer.as_deref().or(ctx.customer.as_deref()),
                                &ctx.payment_method,
                                Some(&c.card.brand),
                                Some(&c.card.last4),
                                Some(&format!("{:02}/{}", c.card.exp_month, c.card.exp_year)),
                            )
                            .await?;
                        saved = Some(id);
                    }
                    charged_finish(processor.name(), c)
                }
                ChargeOutcome::Declined { code, message } => {
                    self.router.up(i);
                    Finish::Declined { code, message }
                }
                ChargeOutcome::Invalid { code, message, .. } => {
                    self.router.up(i);
                    Finish::Failed { code, message }
                }
                ChargeOutcome::Unavailable { reason, .. } => {
                    self.router.down(i);
                    closing = Some((key, attempt::UNAVAILABLE, reason));
                    seq += 1;
                    continue;
                }
                ChargeOutcome::Ambiguous { .. } => unreachable_ambiguous(),
            };
            let mut taken = self.finish(id, Some(key), finish, None).await?;
            taken.saved_method_id = saved;
            return Ok(taken);
        }
        // Every processor was unavailable (each attempt known not to have charged).
        if let Some((key, state, detail)) = closing {
            self.store.mark_attempt(&key, state, &detail).await?;
        }
        let (token, hash) = new_token();
        self.finish(id, None, Finish::Pledged { token_hash: hash }, Some(token))
            .await
    }

    async fn finish(
        &self,
        id: i64,
        attempt_key: Option<String>,
        finish: Finish,
        pledge_token: Option<String>,
    ) -> Result<Taken, DonationError> {
        let completion = Completion {
            donation_id: id,
            attempt_key,
            finish,
        };
        // The processor has answered (money may have moved): recording it is not
        // something to shed. A connection cut by a database restart or reset is retried
        // a few times (the commit is idempotent: states only move forward and postings
        // are keyed) rather than leaving the donor's gift to the settler for a minute.
        let mut pause = FINISH_RETRY_PAUSE;
        let mut tries = 1;
        let donation = loop {
            match self.batches.finish.submit(completion.clone()).await {
                Ok(row) => break row,
                Err(e) if tries < FINISH_TRIES => {
                    tracing::warn!(error = %e, "recording a donation's outcome failed; trying again");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    tries += 1;
                }
                Err(e) => return Err(unavailable(e)),
            }
        };
        let outcome = outcome_of(&donation.state);
        Ok(Taken {
            pledge_token: if outcome == Outcome::Pledged {
                pledge_token
            } else {
                None
            },
            outcome,
            donation,
            replayed: false,
            saved_method_id: None,
            plan_cancel_token: None,
        })
    }

    /// Asks processor `i` about an attempt until it answers or `settle_timeout` passes.
    /// "Not charged" is believed only once `lookup_grace` has passed since the first
    /// question; before that it counts as unknown.
    pub(crate) async fn settle(&self, i: usize, key: &str) -> LookupOutcome {
        let processor = self.router.processor(i).clone();
        let began = tokio::time::Instant::now();
        let deadline = began + self.config.settle_timeout;
        loop {
            let answer = match processor.lookup(key).await {
                LookupOutcome::NotCharged if began.elapsed() < self.config.lookup_grace => {
                    LookupOutcome::Unknown {
                        reason: "no charge found yet; a search can lag behind a charge".into(),
                    }
                }
                other => other,
            };
            match answer {
                LookupOutcome::Unknown { reason } => {
                    if tokio::time::Instant::now() + self.config.settle_interval > deadline {
                        return LookupOutcome::Unknown { reason };
                    }
                    tokio::time::sleep(self.config.settle_interval).await;
                }
                known => return known,
            }
        }
    }

    /// Settles attempts left `started` or `ambiguous` (a node died mid-call, or the
    /// processor never answered): asks their processor, then finishes the donation or
    /// resumes its route. Returns how many donations moved.
    pub async fn settle_unsettled(&self) -> Result<usize, DonationError> {
        let older =
            now_ms() - i64::try_from(self.config.abandoned_after.as_millis()).unwrap_or(60_000);
        let open = self.store.unsettled_attempts(older, 200).await?;
        let mut moved = 0;
        for a in open {
            let Some((i, processor)) = self.router.by_name(&a.processor) else {
                continue;
            };
            let grace_ms = i64::try_from(self.config.lookup_grace.as_millis()).unwrap_or(60_000);
            let answer = match processor.lookup(&a.attempt_key).await {
                // Too soon to believe "not found" (see `lookup_grace`).
                LookupOutcome::NotCharged if now_ms() - a.started_at < grace_ms => {
                    continue;
                }
                other => other,
            };
            match answer {
                LookupOutcome::Charged(c) => {
                    self.finish(
                        a.donation_id,
                        Some(a.attempt_key.clone()),
                        charged_finish(&a.processor, c),
                        None,
                    )
                    .await?;
                    moved += 1;
                }
                LookupOutcome::NotCharged => {
                    self.store
                        .mark_attempt(
                            &a.attempt_key,
                            attempt::NOT_CHARGED,
                            "a status query showed no charge",
                        )
                        .await?;
                    let d = self.load(a.donation_id).await?;
                    if d.state == "processing" {
                        let candidates = self.router.candidates();
                        let ctx = ChargeCtx {
                            person_id: d.person_id,
                            payment_method: d.payment_method.clone().unwrap_or_default(),
                            customer: None,
                            amount: d.amount_cents,
                            save_method: d.save_method,
                        };
                        if let Some(&first) = candidates.first() {
                            let key = format!("{}-{}", d.public_id, a.seq + 1);
                            let seq = self
                                .store
                                .start_attempt(d.id, self.router.processor(first).name(), &key)
                                .await?;
                            self.route(d.id, &d.public_id, &ctx, candidates, seq)
                                .await?;
                        } else {
                            let (_, hash) = new_token();
                            self.finish(d.id, None, Finish::Pledged { token_hash: hash }, None)
                                .await?;
                        }
                    }
                    moved += 1;
                }
                LookupOutcome::Unknown { .. } => {
                    self.router.down(i);
                }
            }
        }
        Ok(moved)
    }
}

/// A group commit failed: logged (store errors carry no donor data) and answered as
/// "try again with the same key".
fn unavailable(e: String) -> DonationError {
    if e.starts_with("busy") {
        // Shed on purpose (counted by the HTTP layer's 503s): not worth a warning each.
        tracing::debug!(error = %e, "donation turned away");
    } else {
        tracing::warn!(error = %e, "donation batch failed");
    }
    DonationError::Unavailable(e)
}

fn unreachable_ambiguous() -> Finish {
    // Ambiguous outcomes are settled above; this arm cannot be reached.
    Finish::Failed {
        code: "internal".into(),
        message: "unsettled attempt".into(),
    }
}

pub(crate) fn charged_finish(processor: &str, c: Charged) -> Finish {
    Finish::Succeeded {
        processor: processor.to_string(),
        processor_ref: c.processor_ref,
        amount_cents: c.amount,
        fee_cents: c.fee,
        card: CardOnFile {
            brand: c.card.brand,
            last4: c.card.last4,
            exp: format!("{:02}/{}", c.card.exp_month, c.card.exp_year),
            fingerprint: c.card.fingerprint,
        },
    }
}

/// What a stored state means for the donor.
pub fn outcome_of(state: &str) -> Outcome {
    match state {
        "succeeded" | "partially_refunded" | "refunded" | "disputed" => Outcome::Succeeded,
        "declined" => Outcome::Declined,
        "pledged" | "canceled" => Outcome::Pledged,
        "processing" => Outcome::Processing,
        _ => Outcome::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_ids_sort_by_creation_and_stay_unguessable() {
        let early = public_id_at(1_800_000_000, [0xff; 12]);
        let later = public_id_at(1_800_000_001, [0x00; 12]);
        assert_eq!(early, format!("don_6b49d200{}", "ff".repeat(12)));
        assert!(early < later, "a later second sorts after any earlier id");
        let (a, b) = (new_public_id(), new_public_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), "don_".len() + 8 + 24);
        assert!(a[4..].bytes().all(|c| c.is_ascii_hexdigit()));
        // Ids made now carry the current second.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let secs = u64::from_str_radix(&a[4..12], 16).unwrap();
        assert!(now.abs_diff(secs) <= 1);
    }

    fn req() -> DonationRequest {
        DonationRequest {
            idempotency_key: "k".into(),
            amount_cents: 2_500,
            donor: Donor {
                first_name: "Ada".into(),
                last_name: "Lovelace".into(),
                email: "ada@example.org".into(),
                phone: None,
                address1: "1 Main St".into(),
                address2: None,
                city: "Columbus".into(),
                state: "OH".into(),
                zip: "43215".into(),
                employer: Some("Acme".into()),
                occupation: Some("Engineer".into()),
            },
            attestations: Attestations {
                own_funds: true,
                citizen_or_resident: true,
                not_contractor: true,
                personal_card: true,
            },
            payment_method: Some("pm_card_visa".into()),
            save_method: false,
            refcode: None,
            source: None,
            channel: "api".into(),
            client_ip: None,
            plan_id: None,
            recurring: None,
            customer: None,
            processor: None,
        }
    }

    fn code_of(r: Result<PersonDraft, DonationError>) -> (&'static str, &'static str) {
        match r {
            Err(DonationError::Invalid { field, code, .. }) => (field, code),
            other => panic!("expected Invalid, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn a_good_request_builds_the_donor_record() {
        let d = validate(&req()).unwrap();
        assert_eq!(d.emails[0].as_str(), "ada@example.org");
    }

    #[test]
    fn bad_input_is_named_by_field_and_code() {
        let mut r = req();
        r.amount_cents = 0;
        assert_eq!(code_of(validate(&r)), ("amount", "invalid_amount"));
        let mut r = req();
        r.amount_cents = -5;
        assert_eq!(code_of(validate(&r)), ("amount", "invalid_amount"));
        let mut r = req();
        r.donor.last_name = " ".into();
        assert_eq!(code_of(validate(&r)), ("last_name", "required"));
        let mut r = req();
        r.donor.occupation = Some("4242 4242 4242 4242".into());
        assert_eq!(code_of(validate(&r)), ("occupation", "card_number_in_text"));
        let mut r = req();
        r.refcode = Some("x4000056655665556".into());
        assert_eq!(code_of(validate(&r)), ("refcode", "card_number_in_text"));
        let mut r = req();
        r.attestations.not_contractor = false;
        assert_eq!(
            code_of(validate(&r)),
            ("attestations.not_contractor", "attestation_required")
        );
        let mut r = req();
        r.donor.email = "nope".into();
        assert_eq!(code_of(validate(&r)), ("email", "invalid_email"));
        let mut r = req();
        r.payment_method = Some("4242424242424242".into());
        assert_eq!(
            code_of(validate(&r)),
            ("payment_method", "card_number_in_text")
        );
        let mut r = req();
        r.idempotency_key = String::new();
        assert_eq!(
            code_of(validate(&r)),
            ("idempotency_key", "invalid_idempotency_key")
        );
    }

    #[test]
    fn the_hash_ignores_the_key_and_sees_the_amount() {
        let a = req();
        let mut b = req();
        b.idempotency_key = "other".into();
        assert_eq!(request_hash(&a), request_hash(&b));
        b.amount_cents += 1;
        assert_ne!(request_hash(&a), request_hash(&b));
    }

    #[test]
    fn debug_hides_the_donor() {
        let s = format!("{:?}", req());
        assert!(!s.contains("Lovelace") && !s.contains("ada@"), "{s}");
    }
}
