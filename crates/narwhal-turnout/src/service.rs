//! [`Turnout`]: setup (polling places, universe, watcher logins) and the one ingest
//! every channel reports through.

use crate::code::{Channel, ReportId, Secret, VoterCode};
use crate::places::{self, CsvErrors};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use narwhal_domain::{PersonId, Role, SegmentId, UserId};
use narwhal_store::turnout::{
    Outcome, PollingPlace, PrecinctTurnout, Rejection, ReportIn, Target, UniverseBuilt, Watcher,
};
use narwhal_store::{now_ms, Store, StoreError};
use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;

/// The most items one batch may hold. The app sends 100 at a time.
pub const MAX_BATCH: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum TurnoutError {
    /// The request makes no sense (the caller's fault); the message is safe to show.
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A file had problems; each names its file, line and reason.
    #[error("{0}")]
    Csv(#[from] CsvErrors),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a watcher login failed; each says what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LoginFailure {
    #[error(
        "this login is not valid: check the PIN or link, or ask your coordinator for a new one"
    )]
    Wrong,
    #[error("this login has expired: ask your coordinator for a new link or PIN")]
    Expired,
}

/// How a watcher logs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoginKind {
    /// Username and a 6-digit PIN.
    Pin,
    /// A login link carrying a long random token.
    Link,
}

/// A login issued to a watcher: the secret is shown here once and stored hashed.
#[derive(Debug, Clone)]
pub struct IssuedLogin {
    pub user: UserId,
    pub username: String,
    pub polling_place: String,
    pub kind: LoginKind,
    /// The PIN or the link token.
    pub secret: Secret,
    pub expires_at: Option<i64>,
}

/// Who is reporting: a watcher (only their own polling place) or staff (any).
#[derive(Debug, Clone)]
pub enum Reporter {
    Watcher(Watcher),
    Staff,
}

/// One report as a client sends it: who (a voter code or a person id), when, and
/// whether it undoes the report with this id.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReportItem {
    /// Client-generated, unique per report: retrying with it never counts twice.
    pub report_id: String,
    /// The 8-digit voter code (spaces and dashes allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voter_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub person_id: Option<i64>,
    /// When the voter was seen voting (ms since the epoch); defaults to now, and a
    /// time in the future is taken as now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voted_at: Option<i64>,
    /// Undo the report with this `report_id`.
    #[serde(default)]
    pub undo: bool,
}

/// What happened to one item.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ItemResult {
    pub report_id: String,
    /// `accepted`, `duplicate` or `rejected`.
    pub outcome: &'static str,
    /// Why it was rejected, as a stable code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// For the reporter; safe to show.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub person_id: Option<PersonId>,
}

/// The outcome of a batch, item by item in the order sent.
#[derive(Debug, Clone, Serialize)]
pub struct BatchResult {
    pub accepted: usize,
    pub duplicates: usize,
    pub rejected: usize,
    pub results: Vec<ItemResult>,
}

/// What a watcher sees days before: their place and the size of their list.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    pub polling_place: PollingPlace,
    pub login: LoginKind,
    pub expires_at: Option<i64>,
    pub message: String,
}

/// A supporter still to turn out, with their printable code.
#[derive(Debug, Clone, Serialize)]
pub struct ListedVoter {
    pub person_id: PersonId,
    pub voter_code: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub address: Option<String>,
    pub precinct: String,
}

/// The election-day service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Turnout {
    store: Store,
    /// When set, batches go through this node's group commit.
    group: Option<crate::group::GroupCommit>,
}

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn rejected(id: &str, reason: &'static str, message: impl Into<String>) -> ItemResult {
    ItemResult {
        report_id: id.to_string(),
        outcome: "rejected",
        reason: Some(reason),
        message: Some(message.into()),
        person_id: None,
    }
}

impl Turnout {
    pub fn new(store: Store) -> Self {
        Self { store, group: None }
    }

    /// The service with batches stored through a group commit (see [`crate::group`]):
    /// for a node serving many watchers at once.
    pub fn with_group_commit(store: Store) -> Self {
        Self {
            group: Some(crate::group::GroupCommit::new(store.clone())),
            store,
        }
    }

    /// The store this service reads and writes.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Imports polling places and their precincts from a CSV file (see [`places`]).
    /// Nothing is written unless the whole file is good. Returns how many places.
    pub async fn import_places_file(&self, path: &Path) -> Result<usize, TurnoutError> {
        let name = path.display().to_string();
        let f = std::fs::File::open(path)
            .map_err(|e| TurnoutError::Invalid(format!("{name}: cannot open: {}", e.kind())))?;
        self.import_places(&name, f).await
    }

    /// Like [`Turnout::import_places_file`], from any reader; `file` names it in errors.
    pub async fn import_places(
        &self,
        file: &str,
        input: impl std::io::Read,
    ) -> Result<usize, TurnoutError> {
        let places = places::parse(file, input)?;
        self.store.upsert_polling_places(&places).await?;
        tracing::info!(places = places.len(), "polling places imported");
        Ok(places.len())
    }

    /// Adds a saved segment's people to the GOTV universe at their precinct's polling
    /// place, each with a voter code.
    pub async fn build_universe(&self, segment: SegmentId) -> Result<UniverseBuilt, TurnoutError> {
        let seg = self.store.segment(segment).await?;
        let built = self.store.build_universe(&seg.filter).await?;
        tracing::info!(segment = %segment, added = built.added, unassigned = built.unassigned, "GOTV universe built");
        Ok(built)
    }

    /// Creates (or re-issues) a watcher login for a polling place: a volunteer user
    /// plus a watcher row holding the hash of a new PIN or link token, which is
    /// returned once. `ttl_ms` limits how long it works.
    pub async fn issue_watcher(
        &self,
        username: &str,
        polling_place: &str,
        kind: LoginKind,
        ttl_ms: Option<i64>,
    ) -> Result<IssuedLogin, TurnoutError> {
        let username = username.trim();
        if username.is_empty() || username.len() > 100 {
            return Err(TurnoutError::Invalid(
                "a username has 1 to 100 characters".into(),
            ));
        }
        let place = polling_place.trim().to_ascii_uppercase();
        let user = match self.store.user_by_name(username).await? {
            Some(u) if u.role != Role::Volunteer => {
                return Err(TurnoutError::Invalid(
                    "a poll watcher must be a volunteer login, not staff".into(),
                ))
            }
            Some(u) => u.id,
            // "!" is no password hash: this user logs in only as a watcher.
            None => {
                self.store
                    .create_user(username, "!", Role::Volunteer)
                    .await?
            }
        };
        let (secret, hash) = match kind {
            LoginKind::Pin => {
                let pin = format!("{:06}", rand::rngs::OsRng.gen_range(0..1_000_000u32));
                let salt = SaltString::generate(&mut rand::rngs::OsRng);
                let phc = Argon2::default()
                    .hash_password(pin.as_bytes(), &salt)
                    .map_err(|_| TurnoutError::Invalid("could not hash the PIN".into()))?
                    .to_string();
                (pin, phc)
            }
            LoginKind::Link => {
                let mut b = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut b);
                let token = format!(
                    "nwt_{}",
                    b.iter().map(|x| format!("{x:02x}")).collect::<String>()
                );
                let h = sha256_hex(&token);
                (token, h)
            }
        };
        let kind_s = match kind {
            LoginKind::Pin => "pin",
            LoginKind::Link => "link",
        };
        let expires_at = ttl_ms.map(|t| now_ms() + t);
        self.store
            .upsert_watcher(user, &place, kind_s, &hash, expires_at)
            .await
            .map_err(|e| match e {
                StoreError::NotFound(_) => TurnoutError::NotFound("polling place"),
                e => e.into(),
            })?;
        tracing::info!(user.id = %user, polling_place = %place, "watcher login issued");
        Ok(IssuedLogin {
            user,
            username: username.to_string(),
            polling_place: place,
            kind,
            secret: Secret::new(secret),
            expires_at,
        })
    }

    fn live(w: Watcher) -> Result<Watcher, LoginFailure> {
        match w.expires_at {
            Some(t) if t <= now_ms() => Err(LoginFailure::Expired),
            _ => Ok(w),
        }
    }

    /// The watcher a login-link token belongs to.
    pub async fn login_link(
        &self,
        token: &str,
    ) -> Result<Result<Watcher, LoginFailure>, TurnoutError> {
        let Some(w) = self
            .store
            .watcher_by_secret(&sha256_hex(token.trim()))
            .await?
        else {
            return Ok(Err(LoginFailure::Wrong));
        };
        Ok(self.active_user(w).await?.and_then(Self::live))
    }

    /// The watcher with this username and PIN.
    pub async fn login_pin(
        &self,
        username: &str,
        pin: &str,
    ) -> Result<Result<Watcher, LoginFailure>, TurnoutError> {
        let Some(u) = self.store.user_by_name(username.trim()).await? else {
            return Ok(Err(LoginFailure::Wrong));
        };
        let Some(w) = self.store.watcher_by_user(u.id).await? else {
            return Ok(Err(LoginFailure::Wrong));
        };
        let ok = w.kind == "pin"
            && PasswordHash::new(&w.secret_hash)
                .map(|h| {
                    Argon2::default()
                        .verify_password(pin.trim().as_bytes(), &h)
                        .is_ok()
                })
                .unwrap_or(false);
        if !ok || u.disabled {
            return Ok(Err(LoginFailure::Wrong));
        }
        Ok(Self::live(w))
    }

    async fn active_user(&self, w: Watcher) -> Result<Result<Watcher, LoginFailure>, TurnoutError> {
        Ok(match self.store.user_by_id(w.user_id).await? {
            Some(u) if !u.disabled => Ok(w),
            _ => Err(LoginFailure::Wrong),
        })
    }

    /// Sets or clears the mobile phone SMS reports from this watcher come from.
    pub async fn set_watcher_phone(
        &self,
        user: UserId,
        phone: Option<&narwhal_domain::PhoneE164>,
    ) -> Result<(), TurnoutError> {
        self.store
            .set_watcher_phone(user, phone.map(|p| p.as_str()))
            .await
            .map_err(|e| match e {
                StoreError::NotFound(_) => TurnoutError::NotFound("watcher"),
                StoreError::Conflict(_) => {
                    TurnoutError::Invalid("another watcher already has this phone".into())
                }
                e => e.into(),
            })
    }

    /// The live watcher whose phone this is; `None` for an unknown phone, a disabled
    /// user or an expired login.
    pub async fn watcher_by_phone(
        &self,
        phone: &narwhal_domain::PhoneE164,
    ) -> Result<Option<Watcher>, TurnoutError> {
        let Some(w) = self.store.watcher_by_phone(phone.as_str()).await? else {
            return Ok(None);
        };
        Ok(self.active_user(w).await?.and_then(Self::live).ok())
    }

    /// Staff bulk entry: the lines go through the one ingest (channel `bulk`) in
    /// batches, and each line gets its result.
    pub async fn ingest_bulk(
        &self,
        lines: &[crate::fallback::BulkLine],
    ) -> Result<Vec<crate::fallback::LineResult>, TurnoutError> {
        let mut out = Vec::with_capacity(lines.len());
        for chunk in lines.chunks(MAX_BATCH) {
            let items: Vec<ReportItem> = chunk.iter().map(crate::fallback::bulk_item).collect();
            let res = self.ingest(&Reporter::Staff, Channel::Bulk, &items).await?;
            out.extend(crate::fallback::line_results(chunk, res.results));
        }
        Ok(out)
    }

    /// The watcher row of a logged-in user, if they are a watcher.
    pub async fn watcher_for(&self, user: UserId) -> Result<Option<Watcher>, TurnoutError> {
        Ok(self.store.watcher_by_user(user).await?)
    }

    /// "You are set up for polling place X; your list has N voters."
    pub async fn readiness(&self, w: &Watcher) -> Result<Readiness, TurnoutError> {
        let place = self.store.polling_place(&w.polling_place).await?;
        let message = format!(
            "You are set up for polling place {} ({}); your list has {} voters.",
            place.code, place.name, place.universe
        );
        Ok(Readiness {
            polling_place: place,
            login: if w.kind == "pin" {
                LoginKind::Pin
            } else {
                LoginKind::Link
            },
            expires_at: w.expires_at,
            message,
        })
    }

    /// Takes a batch of reports: checks each item, stores the good ones in one
    /// transaction, and says what happened to each. An item that is malformed, for an
    /// unknown voter or (for a watcher) for another polling place is rejected alone.
    pub async fn ingest(
        &self,
        reporter: &Reporter,
        channel: Channel,
        batch: &[ReportItem],
    ) -> Result<BatchResult, TurnoutError> {
        if batch.len() > MAX_BATCH {
            return Err(TurnoutError::Invalid(format!(
                "a batch holds at most {MAX_BATCH} reports; split it"
            )));
        }
        let now = now_ms();
        let mut results: Vec<Option<ItemResult>> = vec![None; batch.len()];
        let mut good: Vec<(usize, ReportIn)> = Vec::with_capacity(batch.len());
        for (i, item) in batch.iter().enumerate() {
            let rid = match ReportId::parse(&item.report_id) {
                Ok(r) => r,
                Err(e) => {
                    results[i] = Some(rejected(&item.report_id, "invalid_report_id", e.reason));
                    continue;
                }
            };
            let target = match (&item.voter_code, item.person_id) {
                (Some(c), None) => match VoterCode::parse(c) {
                    Ok(c) => Target::Code(c.stored()),
                    Err(e) => {
                        results[i] = Some(rejected(rid.as_str(), "invalid_voter_code", e.reason));
                        continue;
                    }
                },
                (None, Some(p)) if p > 0 => Target::Person(PersonId(p)),
                _ => {
                    results[i] = Some(rejected(
                        rid.as_str(),
                        "invalid_target",
                        "give exactly one of voter_code and person_id",
                    ));
                    continue;
                }
            };
            let voted_at = item.voted_at.filter(|t| *t > 0).unwrap_or(now).min(now);
            good.push((
                i,
                ReportIn {
                    report_id: rid.as_str().to_string(),
                    target,
                    voted_at,
                    undo: item.undo,
                },
            ));
        }
        let (place, watcher_id) = match reporter {
            Reporter::Watcher(w) => (Some(w.polling_place.as_str()), Some(w.id)),
            Reporter::Staff => (None, None),
        };
        let ins: Vec<ReportIn> = good.iter().map(|(_, r)| r.clone()).collect();
        let outcomes = match &self.group {
            Some(g) => g.ingest(place, watcher_id, channel.as_str(), ins).await?,
            None => {
                self.store
                    .ingest_reports(place, watcher_id, channel.as_str(), &ins)
                    .await?
            }
        };
        for ((i, r), o) in good.iter().zip(outcomes) {
            results[*i] = Some(match o {
                Outcome::Accepted(p) | Outcome::Duplicate(p) => ItemResult {
                    report_id: r.report_id.clone(),
                    outcome: if matches!(o, Outcome::Accepted(_)) {
                        "accepted"
                    } else {
                        "duplicate"
                    },
                    reason: None,
                    message: None,
                    person_id: Some(p),
                },
                Outcome::Rejected(Rejection::UnknownVoter) => rejected(
                    &r.report_id,
                    "unknown_voter",
                    "no supporter on the lists has this code; check it and send again",
                ),
                Outcome::Rejected(Rejection::OtherPollingPlace) => rejected(
                    &r.report_id,
                    "other_polling_place",
                    "this voter votes at another polling place; you can report only for yours",
                ),
                Outcome::Rejected(Rejection::ReportIdReused) => rejected(
                    &r.report_id,
                    "report_id_reused",
                    "this report id was already used for another voter; send with a new id",
                ),
            });
        }
        let results: Vec<ItemResult> = results.into_iter().flatten().collect();
        let count = |o: &str| results.iter().filter(|r| r.outcome == o).count();
        let res = BatchResult {
            accepted: count("accepted"),
            duplicates: count("duplicate"),
            rejected: count("rejected"),
            results,
        };
        tracing::info!(
            channel = channel.as_str(),
            accepted = res.accepted,
            duplicates = res.duplicates,
            rejected = res.rejected,
            "turnout batch"
        );
        Ok(res)
    }

    /// A page of a polling place's supporters not yet reported as voted.
    pub async fn remaining(
        &self,
        polling_place: &str,
        after: Option<PersonId>,
        limit: i64,
    ) -> Result<Vec<ListedVoter>, TurnoutError> {
        let rows = self
            .store
            .remaining_voters(polling_place, after, limit)
            .await?;
        rows.into_iter()
            .map(|r| {
                let code = VoterCode::from_stored(r.code)
                    .ok_or_else(|| StoreError::Corrupt("a voter code out of range".into()))?;
                Ok(ListedVoter {
                    person_id: r.person_id,
                    voter_code: code.to_string(),
                    first_name: r.first_name,
                    last_name: r.last_name,
                    address: r.addr_line1,
                    precinct: r.precinct,
                })
            })
            .collect()
    }

    /// Turnout per precinct: supporters in the universe and how many voted.
    pub async fn by_precinct(&self) -> Result<Vec<PrecinctTurnout>, TurnoutError> {
        Ok(self.store.turnout_by_precinct().await?)
    }

    /// Every polling place with its universe and remaining counts.
    pub async fn places(&self) -> Result<Vec<PollingPlace>, TurnoutError> {
        Ok(self.store.polling_places().await?)
    }

    /// The printable voter code of a person in the universe.
    pub async fn voter_code(&self, person: PersonId) -> Result<Option<VoterCode>, TurnoutError> {
        Ok(self
            .store
            .voter_code(person)
            .await?
            .and_then(VoterCode::from_stored))
    }
}
