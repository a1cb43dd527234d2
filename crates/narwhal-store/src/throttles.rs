//! Send throttles shared by every node on PostgreSQL.
//!
//! A provider account's rate and rolling 24-hour quota hold for the account, not for a
//! node: two nodes that each kept their own bucket would together send twice the rate.
//! On PostgreSQL every node therefore draws its tokens from one bucket per account, a
//! row of `mail_throttles`, with the 24-hour count in `mail_throttle_minutes` (one row
//! per account per minute). [`Store::take_send_tokens`] is one call of the function
//! `narwhal_take_send_tokens` (migration 12): it locks the account's row, refills the
//! bucket for the time elapsed, forgets minutes whose end is 24 hours old, grants what
//! both limits allow, and says when more will be available; one round trip per slice of
//! messages, whatever the number of nodes. The arithmetic is the mail crate's
//! in-process `Throttle`'s, in integers: tokens in units of 1/`period_ms` of a message,
//! refilled by `limit` units per millisecond.
//!
//! SQLite serves one node, which keeps its bucket in memory: there
//! [`Store::shares_send_tokens`] is false and the calls grant what is asked.

use crate::error::{Result, StoreError};
use crate::{Backend, Store};
use sqlx::Row;

/// An account's limits, as the shared bucket needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedLimits {
    /// Messages per period.
    pub limit: u32,
    /// The period in milliseconds (1,000 for a rate per second).
    pub period_ms: u64,
    /// The bucket's capacity in messages.
    pub burst: u32,
    /// The rolling 24-hour quota, if any.
    pub daily: Option<u64>,
}

/// What [`Store::take_send_tokens`] granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenGrant {
    /// Messages that may be sent now (at most what was asked).
    pub granted: u32,
    /// When fewer were granted than asked: the earliest time (ms) one more could be.
    pub retry_at: i64,
}

fn to_i64<T: TryInto<i64>>(v: T, what: &str) -> Result<i64> {
    v.try_into()
        .map_err(|_| StoreError::Invalid(format!("{what} is out of range")))
}

impl Store {
    /// Whether nodes must share send tokens through the database (PostgreSQL).
    pub fn shares_send_tokens(&self) -> bool {
        self.backend() == Backend::Postgres
    }

    /// Takes up to `want` tokens from `account`'s shared bucket at `now` (ms). On SQLite
    /// it grants `want` (the node's own bucket does the limiting).
    pub async fn take_send_tokens(
        &self,
        account: &str,
        limits: &SharedLimits,
        want: u32,
        now: i64,
    ) -> Result<TokenGrant> {
        let crate::db::Pools::Postgres(p) = &self.pools else {
            return Ok(TokenGrant {
                granted: want,
                retry_at: now,
            });
        };
        let daily = match limits.daily {
            Some(d) => Some(to_i64(d, "daily quota")?),
            None => None,
        };
        let r = sqlx::query(
            "SELECT granted, retry_at FROM narwhal_take_send_tokens($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(account)
        .bind(now)
        .bind(i64::from(limits.limit))
        .bind(to_i64(limits.period_ms.max(1), "period")?)
        .bind(i64::from(limits.burst.max(1)))
        .bind(daily)
        .bind(i64::from(want))
        .fetch_one(p)
        .await?;
        let granted: i64 = r.try_get("granted")?;
        Ok(TokenGrant {
            granted: u32::try_from(granted.clamp(0, i64::from(want))).unwrap_or(0),
            retry_at: r.try_get("retry_at")?,
        })
    }

    /// Returns `n` tokens taken but not used (fewer recipients were left than granted):
    /// back into the bucket (never above `burst`) and out of the current minute's count.
    pub async fn give_back_send_tokens(
        &self,
        account: &str,
        limits: &SharedLimits,
        n: u32,
        now: i64,
    ) -> Result<()> {
        let crate::db::Pools::Postgres(p) = &self.pools else {
            return Ok(());
        };
        if n == 0 {
            return Ok(());
        }
        // Locks in the order `narwhal_take_send_tokens` does, bucket row first, or the
        // two deadlock. The minute's update reads the bucket's (`EXISTS (... b)`), which
        // makes PostgreSQL run the bucket's first; an unread `WITH` runs last.
        sqlx::query(
            "WITH b AS (UPDATE mail_throttles SET units = LEAST(units + $2 * period_ms, $3 * period_ms) WHERE account = $1 RETURNING 1) \
             UPDATE mail_throttle_minutes SET sends = GREATEST(sends - $2, 0) WHERE account = $1 AND minute = $4 AND EXISTS (SELECT 1 FROM b)",
        )
        .bind(account)
        .bind(i64::from(n))
        .bind(i64::from(limits.burst.max(1)))
        .bind(now / 60_000)
        .execute(p)
        .await?;
        Ok(())
    }

    /// Sends counted against `account`'s shared 24-hour quota (0 on SQLite).
    pub async fn shared_sends_last_24h(&self, account: &str, now: i64) -> Result<i64> {
        let crate::db::Pools::Postgres(p) = &self.pools else {
            return Ok(0);
        };
        Ok(sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(sends), 0) AS BIGINT) FROM mail_throttle_minutes \
             WHERE account = $1 AND (minute + 1) * 60000 + 86400000 > $2",
        )
        .bind(account)
        .bind(now)
        .fetch_one(p)
        .await?)
    }
}
