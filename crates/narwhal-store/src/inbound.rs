//! The inbound endpoint's durable inbox: save the payload, queue it, translate later.

use crate::error::{Result, StoreError};
use crate::{now_ms, Store};
use narwhal_domain::{InboundId, PersonId};
use serde::Serialize;
use sqlx::Row;

#[derive(Debug, Clone, Serialize)]
pub struct InboundPayload {
    pub id: InboundId,
    pub source: String,
    pub idem_key: String,
    pub payload: serde_json::Value,
    pub state: String,
    pub error: Option<String>,
    pub person_id: Option<PersonId>,
    pub received_at: i64,
}

impl Store {
    /// Stores a payload durably and queues its processing, in one transaction.
    /// The same (source, key) again is a no-op that returns the first id and `false`.
    pub async fn receive_inbound(
        &self,
        source: &str,
        key: &str,
        payload: &serde_json::Value,
    ) -> Result<(InboundId, bool)> {
        let now = now_ms();
        on_write!(self, p => {
            let mut tx = p.begin().await?;
            let inserted: Option<i64> = sqlx::query_scalar("INSERT INTO inbound_payloads (source, idem_key, payload, received_at) VALUES ($1, $2, $3, $4) ON CONFLICT (source, idem_key) DO NOTHING RETURNING id")
                .bind(source).bind(key).bind(payload.to_string()).bind(now).fetch_optional(&mut *tx).await?;
            let out = match inserted {
                Some(id) => {
                    job_insert!(&mut *tx, "inbound.person", serde_json::json!({"inbound_id": id}), now);
                    (InboundId(id), true)
                }
                None => {
                    let id: i64 = sqlx::query_scalar("SELECT id FROM inbound_payloads WHERE source = $1 AND idem_key = $2").bind(source).bind(key).fetch_one(&mut *tx).await?;
                    (InboundId(id), false)
                }
            };
            tx.commit().await?;
            Ok(out)
        })
    }

    pub async fn inbound(&self, id: InboundId) -> Result<InboundPayload> {
        on_read!(self, p => {
            let r = sqlx::query("SELECT id, source, idem_key, payload, state, error, person_id, received_at FROM inbound_payloads WHERE id = $1")
                .bind(id.0).fetch_optional(p).await?.ok_or(StoreError::NotFound("inbound payload"))?;
            let payload: String = r.try_get("payload")?;
            let person: Option<i64> = r.try_get("person_id")?;
            Ok(InboundPayload {
                id: InboundId(r.try_get("id")?),
                source: r.try_get("source")?,
                idem_key: r.try_get("idem_key")?,
                payload: serde_json::from_str(&payload)?,
                state: r.try_get("state")?,
                error: r.try_get("error")?,
                person_id: person.map(PersonId),
                received_at: r.try_get("received_at")?,
            })
        })
    }

    /// Marks a payload processed (with the person it became) or rejected (with why).
    pub async fn finish_inbound(
        &self,
        id: InboundId,
        person: Option<PersonId>,
        error: Option<&str>,
    ) -> Result<()> {
        let state = if error.is_some() {
            "rejected"
        } else {
            "processed"
        };
        on_write!(self, p => sqlx::query("UPDATE inbound_payloads SET state = $1, person_id = $2, error = $3, processed_at = $4, attempts = attempts + 1 WHERE id = $5")
            .bind(state).bind(person.map(|p| p.0)).bind(error).bind(now_ms()).bind(id.0).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }
}
