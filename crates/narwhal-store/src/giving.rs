//! Repeat giving: saved payment methods (processor tokens only), one-click links and
//! recurring plans.
//!
//! Invariants:
//! - A saved method is a processor's customer and payment-method token plus brand,
//!   last 4 and expiry: never card data.
//! - A one-click link is stored as the hash of its token, expires, and is used at most
//!   once: the UPDATE that marks it used is guarded by `used_at IS NULL` and the expiry.
//! - A recurring plan is claimed for a run by moving its `next_charge_at` forward by a
//!   lease in the same statement that reads it (`FOR UPDATE SKIP LOCKED` on
//!   PostgreSQL), so two nodes never charge the same installment; each installment has
//!   its own idempotency key, so a retried run cannot charge twice.

use crate::error::{Result, StoreError};
use crate::{now_ms, Backend, Store};
use narwhal_domain::PersonId;
use serde::Serialize;
use sqlx::Row;

/// A saved payment method.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SavedMethod {
    pub id: i64,
    pub person_id: i64,
    pub processor: String,
    #[serde(skip)]
    pub customer_ref: Option<String>,
    #[serde(skip)]
    pub payment_method: String,
    pub card_brand: Option<String>,
    pub card_last4: Option<String>,
    pub card_exp: Option<String>,
}

/// A one-click link, once checked and used.
#[derive(Debug, Clone)]
pub struct UsedLink {
    pub person_id: i64,
    pub amount_cents: i64,
    pub method: SavedMethod,
}

/// Why a one-click link cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkProblem {
    Unknown,
    Expired,
    AlreadyUsed,
}

/// A recurring plan.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub id: i64,
    pub public_id: String,
    pub person_id: i64,
    pub saved_method_id: i64,
    pub amount_cents: i64,
    /// `month` or `week`.
    pub every: String,
    /// `active`, `completed`, `canceled`, `failed`.
    pub state: String,
    pub next_charge_at: i64,
    pub ends_at: Option<i64>,
    pub installments: i64,
    pub failures: i64,
    #[serde(skip)]
    pub donor_json: String,
    pub refcode: Option<String>,
    pub created_at: i64,
}

/// A plan whose first cancel link or a later one has the hash `$1`.
const CANCEL_LINK: &str = "(cancel_token_hash = $1 OR id IN (SELECT plan_id FROM plan_cancel_links WHERE token_hash = $1))";

const PLAN_COLUMNS: &str = "id, public_id, person_id, saved_method_id, amount_cents, every, state, next_charge_at, ends_at, installments, failures, donor, refcode, created_at";

macro_rules! plan_from_row {
    ($r:expr) => {{
        let r = $r;
        Plan {
            id: r.try_get("id")?,
            public_id: r.try_get("public_id")?,
            person_id: r.try_get("person_id")?,
            saved_method_id: r.try_get("saved_method_id")?,
            amount_cents: r.try_get("amount_cents")?,
            every: r.try_get("every")?,
            state: r.try_get("state")?,
            next_charge_at: r.try_get("next_charge_at")?,
            ends_at: r.try_get("ends_at")?,
            installments: r.try_get("installments")?,
            failures: r.try_get("failures")?,
            donor_json: r.try_get("donor")?,
            refcode: r.try_get("refcode")?,
            created_at: r.try_get("created_at")?,
        }
    }};
}

macro_rules! method_from_row {
    ($r:expr) => {{
        let r = $r;
        SavedMethod {
            id: r.try_get("id")?,
            person_id: r.try_get("person_id")?,
            processor: r.try_get("processor")?,
            customer_ref: r.try_get("customer_ref")?,
            payment_method: r.try_get("payment_method")?,
            card_brand: r.try_get("card_brand")?,
            card_last4: r.try_get("card_last4")?,
            card_exp: r.try_get("card_exp")?,
        }
    }};
}

/// A new recurring plan.
#[derive(Debug, Clone)]
pub struct NewPlan {
    pub public_id: String,
    pub person_id: PersonId,
    pub saved_method_id: i64,
    pub amount_cents: i64,
    pub every: String,
    pub first_charge_at: i64,
    pub ends_at: Option<i64>,
    pub donor_json: String,
    pub refcode: Option<String>,
    pub cancel_token_hash: String,
}

impl Store {
    /// Saves a processor token for a person's later gifts; returns its id. Saving the
    /// same token again returns the existing row.
    #[allow(clippy::too_many_arguments)]
    pub async fn save_payment_method(
        &self,
        person_id: PersonId,
        processor: &str,
        customer_ref: Option<&str>,
        payment_method: &str,
        brand: Option<&str>,
        last4: Option<&str>,
        exp: Option<&str>,
    ) -> Result<i64> {
        let now = now_ms();
        on_write!(self, p => {
            let mut tx = p.begin().await?;
            let existing: Option<i64> = sqlx::query_scalar(
                "SELECT id FROM saved_payment_methods WHERE person_id = $1 AND processor = $2 AND payment_method = $3 AND revoked_at IS NULL",
            )
            .bind(person_id.0)
            .bind(processor)
            .bind(payment_method)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(id) = existing {
                return Ok(id);
            }
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO saved_payment_methods (person_id, processor, customer_ref, payment_method, card_brand, card_last4, card_exp, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            )
            .bind(person_id.0)
            .bind(processor)
            .bind(customer_ref)
            .bind(payment_method)
            .bind(brand)
            .bind(last4)
            .bind(exp)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(id)
        })
    }

    /// A person's saved methods, newest first.
    pub async fn saved_methods(&self, person_id: PersonId) -> Result<Vec<SavedMethod>> {
        on_read!(self, p => {
            let rows = sqlx::query(
                "SELECT id, person_id, processor, customer_ref, payment_method, card_brand, card_last4, card_exp FROM saved_payment_methods WHERE person_id = $1 AND revoked_at IS NULL ORDER BY id DESC",
            )
            .bind(person_id.0)
            .fetch_all(p)
            .await?;
            rows.into_iter().map(|r| Ok(method_from_row!(r))).collect()
        })
    }

    /// A saved method by id (revoked ones are not found).
    pub async fn saved_method(&self, id: i64) -> Result<Option<SavedMethod>> {
        on_read!(self, p => {
            let row = sqlx::query(
                "SELECT id, person_id, processor, customer_ref, payment_method, card_brand, card_last4, card_exp FROM saved_payment_methods WHERE id = $1 AND revoked_at IS NULL",
            )
            .bind(id)
            .fetch_optional(p)
            .await?;
            match row {
                Some(r) => Ok(Some(method_from_row!(r))),
                None => Ok(None),
            }
        })
    }

    /// Stores a one-click link (by the hash of its token).
    pub async fn create_one_click_link(
        &self,
        token_hash: &str,
        person_id: PersonId,
        saved_method_id: i64,
        amount_cents: i64,
        expires_at: i64,
    ) -> Result<()> {
        let now = now_ms();
        on_write!(self, p => {
            sqlx::query(
                "INSERT INTO one_click_links (token_hash, person_id, saved_method_id, amount_cents, expires_at, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(token_hash)
            .bind(person_id.0)
            .bind(saved_method_id)
            .bind(amount_cents)
            .bind(expires_at)
            .bind(now)
            .execute(p)
            .await
            .map_err(|e| StoreError::from_unique(e, "one-click link"))?;
            Ok(())
        })
    }

    /// What a one-click link offers, without using it (for the confirm page).
    pub async fn peek_one_click_link(
        &self,
        token_hash: &str,
    ) -> Result<Result<UsedLink, LinkProblem>> {
        self.one_click(token_hash, false).await
    }

    /// Marks a one-click link used, once: a second use, an expired or an unknown link
    /// is refused.
    pub async fn use_one_click_link(
        &self,
        token_hash: &str,
    ) -> Result<Result<UsedLink, LinkProblem>> {
        self.one_click(token_hash, true).await
    }

    async fn one_click(
        &self,
        token_hash: &str,
        consume: bool,
    ) -> Result<Result<UsedLink, LinkProblem>> {
        let now = now_ms();
        on_write!(self, p => {
            let mut tx = p.begin().await?;
            let row = sqlx::query(
                "SELECT person_id, saved_method_id, amount_cents, expires_at, used_at FROM one_click_links WHERE token_hash = $1",
            )
            .bind(token_hash)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else {
                return Ok(Err(LinkProblem::Unknown));
            };
            let used_at: Option<i64> = row.try_get("used_at")?;
            let expires_at: i64 = row.try_get("expires_at")?;
            if used_at.is_some() {
                return Ok(Err(LinkProblem::AlreadyUsed));
            }
            if expires_at <= now {
                return Ok(Err(LinkProblem::Expired));
            }
            let method_id: i64 = row.try_get("saved_method_id")?;
            let person_id: i64 = row.try_get("person_id")?;
            let amount_cents: i64 = row.try_get("amount_cents")?;
            let method = sqlx::query(
                "SELECT id, person_id, processor, customer_ref, payment_method, card_brand, card_last4, card_exp FROM saved_payment_methods WHERE id = $1 AND revoked_at IS NULL",
            )
            .bind(method_id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(method) = method else {
                return Ok(Err(LinkProblem::Unknown));
            };
            let method = method_from_row!(method);
            if consume {
                let done = sqlx::query(
                    "UPDATE one_click_links SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $1",
                )
                .bind(now)
                .bind(token_hash)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() != 1 {
                    return Ok(Err(LinkProblem::AlreadyUsed));
                }
                tx.commit().await?;
            }
            Ok(Ok(UsedLink { person_id, amount_cents, method }))
        })
    }

    /// Records which donation a used link became.
    pub async fn link_donation(&self, token_hash: &str, donation_id: i64) -> Result<()> {
        on_write!(self, p => {
            sqlx::query("UPDATE one_click_links SET donation_id = $1 WHERE token_hash = $2")
                .bind(donation_id)
                .bind(token_hash)
                .execute(p)
                .await?;
            Ok(())
        })
    }

    /// Creates a recurring plan.
    pub async fn create_plan(&self, plan: &NewPlan) -> Result<i64> {
        let now = now_ms();
        on_write!(self, p => {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO recurring_plans (public_id, person_id, saved_method_id, amount_cents, every, state, next_charge_at, ends_at, donor, refcode, cancel_token_hash, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, 'active', $6, $7, $8, $9, $10, $11, $11) RETURNING id",
            )
            .bind(&plan.public_id)
            .bind(plan.person_id.0)
            .bind(plan.saved_method_id)
            .bind(plan.amount_cents)
            .bind(&plan.every)
            .bind(plan.first_charge_at)
            .bind(plan.ends_at)
            .bind(&plan.donor_json)
            .bind(&plan.refcode)
            .bind(&plan.cancel_token_hash)
            .bind(now)
            .fetch_one(p)
            .await?;
            Ok(id)
        })
    }

    /// A plan by id.
    pub async fn plan(&self, id: i64) -> Result<Option<Plan>> {
        on_read!(self, p => {
            let row = sqlx::query(&format!("SELECT {PLAN_COLUMNS} FROM recurring_plans WHERE id = $1"))
                .bind(id)
                .fetch_optional(p)
                .await?;
            match row {
                Some(r) => Ok(Some(plan_from_row!(r))),
                None => Ok(None),
            }
        })
    }

    /// Plans, newest first (staff pages).
    pub async fn plans(&self, limit: i64) -> Result<Vec<Plan>> {
        on_read!(self, p => {
            let rows = sqlx::query(&format!("SELECT {PLAN_COLUMNS} FROM recurring_plans ORDER BY id DESC LIMIT $1"))
                .bind(limit)
                .fetch_all(p)
                .await?;
            rows.into_iter().map(|r| Ok(plan_from_row!(r))).collect()
        })
    }

    /// Claims up to `limit` active plans due at `now`: each is pushed `lease_ms` into
    /// the future in the same transaction, so no other node or run takes it meanwhile.
    pub async fn claim_due_plans(&self, now: i64, lease_ms: i64, limit: i64) -> Result<Vec<Plan>> {
        let backend = self.backend();
        on_write!(self, p => {
            let mut tx = p.begin().await?;
            let lock = if backend == Backend::Postgres { " FOR UPDATE SKIP LOCKED" } else { "" };
            let rows = sqlx::query(&format!(
                "SELECT {PLAN_COLUMNS} FROM recurring_plans WHERE state = 'active' AND next_charge_at <= $1 ORDER BY next_charge_at LIMIT $2{lock}"
            ))
            .bind(now)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
            let mut plans = Vec::with_capacity(rows.len());
            for r in rows {
                plans.push(plan_from_row!(r));
            }
            for plan in &plans {
                sqlx::query("UPDATE recurring_plans SET next_charge_at = $1, updated_at = $2 WHERE id = $3")
                    .bind(now + lease_ms)
                    .bind(now)
                    .bind(plan.id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(plans)
        })
    }

    /// Records a run of a plan: the installment number it charged (or tried), the next
    /// charge time, the failure count and the state.
    pub async fn record_plan_run(
        &self,
        plan_id: i64,
        installments: i64,
        failures: i64,
        next_charge_at: i64,
        state: &str,
    ) -> Result<()> {
        let now = now_ms();
        on_write!(self, p => {
            sqlx::query(
                "UPDATE recurring_plans SET installments = $1, failures = $2, next_charge_at = $3, state = $4, updated_at = $5 WHERE id = $6 AND state = 'active'",
            )
            .bind(installments)
            .bind(failures)
            .bind(next_charge_at)
            .bind(state)
            .bind(now)
            .bind(plan_id)
            .execute(p)
            .await?;
            Ok(())
        })
    }

    /// Remembers a donor's device for one-tap gifts with a saved card until
    /// `expires_at` (ms).
    pub async fn create_donor_device(
        &self,
        token_hash: &str,
        person_id: i64,
        saved_method_id: i64,
        expires_at: i64,
    ) -> Result<()> {
        on_write!(self, p => sqlx::query("INSERT INTO donor_devices (token_hash, person_id, saved_method_id, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(token_hash).bind(person_id).bind(saved_method_id).bind(now_ms()).bind(expires_at)
            .execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// The saved card a remembered device may give with (not expired, not revoked).
    pub async fn donor_device(&self, token_hash: &str) -> Result<Option<SavedMethod>> {
        on_read!(self, p => {
            let row = sqlx::query(
                "SELECT m.id, m.person_id, m.processor, m.customer_ref, m.payment_method, m.card_brand, m.card_last4, m.card_exp \
                 FROM donor_devices d JOIN saved_payment_methods m ON m.id = d.saved_method_id \
                 WHERE d.token_hash = $1 AND d.expires_at > $2 AND m.revoked_at IS NULL AND m.person_id = d.person_id",
            )
            .bind(token_hash)
            .bind(now_ms())
            .fetch_optional(p)
            .await?;
            match row {
                Some(r) => Ok(Some(method_from_row!(r))),
                None => Ok(None),
            }
        })
    }

    /// Forgets a remembered device.
    pub async fn forget_donor_device(&self, token_hash: &str) -> Result<()> {
        on_write!(self, p => sqlx::query("DELETE FROM donor_devices WHERE token_hash = $1")
            .bind(token_hash).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Adds a cancel link to a plan (one sent in a later email); the plan's first link
    /// keeps working.
    pub async fn add_plan_cancel_link(&self, plan_id: i64, token_hash: &str) -> Result<()> {
        on_write!(self, p => sqlx::query("INSERT INTO plan_cancel_links (token_hash, plan_id, created_at) VALUES ($1, $2, $3)")
            .bind(token_hash).bind(plan_id).bind(now_ms()).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// The plan a cancel token's hash belongs to (its first link or a later one),
    /// whatever its state.
    pub async fn plan_by_cancel_token(&self, cancel_token_hash: &str) -> Result<Option<Plan>> {
        on_read!(self, p => {
            let row = sqlx::query(&format!("SELECT {PLAN_COLUMNS} FROM recurring_plans WHERE {CANCEL_LINK}"))
                .bind(cancel_token_hash)
                .fetch_optional(p)
                .await?;
            match row {
                Some(r) => Ok(Some(plan_from_row!(r))),
                None => Ok(None),
            }
        })
    }

    /// Cancels a plan by its cancel token's hash; `None` if no active plan has it.
    pub async fn cancel_plan(&self, cancel_token_hash: &str) -> Result<Option<i64>> {
        let now = now_ms();
        on_write!(self, p => {
            let id: Option<i64> = sqlx::query_scalar(
                &format!("UPDATE recurring_plans SET state = 'canceled', updated_at = $2 WHERE {CANCEL_LINK} AND state = 'active' RETURNING id"),
            )
            .bind(cancel_token_hash)
            .bind(now)
            .fetch_optional(p)
            .await?;
            Ok(id)
        })
    }
}
