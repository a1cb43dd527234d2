//! Bounces and complaints coming in: the SES-through-SNS webhook, DSN ingest, and a
//! blast's feedback counts.
//!
//! - `POST /webhooks/ses/sns` takes Amazon SNS HTTP(S) deliveries carrying SES
//!   notifications. Its shape is SNS's, so it is not in the API table. The envelope's
//!   signature is verified against the certificate at `SigningCertURL`, which is fetched
//!   only from the trusted URLs of [`SesFeedbackConfig::verifier`] (production:
//!   `https://sns.<region>.amazonaws.com/`) and cached. A malformed body is 400
//!   `malformed_notification`; an unsigned, forged or untrusted one is 403 (`unsigned_notification`,
//!   `bad_signature`, `untrusted_certificate_url`, `unknown_topic`,
//!   `bad_certificate`) and changes nothing; a certificate we cannot fetch is 503
//!   `sns_unreachable`, so SNS retries. A verified payload is stored before it is
//!   processed and deduplicated by its `MessageId`: a replay answers 200 with
//!   `duplicate: true` and changes nothing. A `SubscriptionConfirmation` is recorded and
//!   confirmed by fetching its `SubscribeURL` when that URL is trusted.
//! - `POST /api/v1/mail/dsn` (scope `mail:send`) takes one delivery status notification
//!   (the raw message) from whatever receives the bounce mailbox.
//! - `GET /api/v1/blasts/{id}/feedback` (scope `mail:read`) counts a blast's bounced,
//!   complained and delivered recipients.

use crate::error::{ApiError, ApiResult, Json, Path};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use narwhal_mail::feedback::sns::{CertHosts, SnsError, SnsVerifier};
use narwhal_mail::feedback::{Feedback, FeedbackError, TransientPolicy};
use narwhal_store::blasts::BlastId;
use serde_json::{json, Value};
use std::sync::Arc;

/// How SES feedback is verified and applied.
#[derive(Debug, Clone)]
pub struct SesFeedbackConfig {
    /// Verifies SNS envelopes: trusted certificate URLs, accepted topics, the cache.
    pub verifier: Arc<SnsVerifier>,
    /// When transient bounces suppress an address.
    pub transient: TransientPolicy,
}

impl Default for SesFeedbackConfig {
    /// Certificates from `https://sns.<region>.amazonaws.com/` only; topics from
    /// `NARWHAL_SES_SNS_TOPICS` (comma-separated ARNs; unset accepts any topic);
    /// 3 transient bounces in 7 days suppress.
    fn default() -> Self {
        let topics = std::env::var("NARWHAL_SES_SNS_TOPICS")
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        Self {
            verifier: Arc::new(SnsVerifier::new(CertHosts::Aws, topics)),
            transient: TransientPolicy::default(),
        }
    }
}

/// The webhook's route.
pub fn router() -> Router<AppState> {
    Router::new().route("/webhooks/ses/sns", post(sns))
}

/// The feedback service over this state's store and settings.
pub fn service(s: &AppState) -> Feedback {
    let signer = s.mail.as_ref().map(|m| m.sender.compose().signer.clone());
    let c = &s.config.ses_feedback;
    Feedback::new(s.store.clone(), c.verifier.clone(), signer, c.transient)
}

fn refused(e: FeedbackError) -> ApiError {
    let status = match &e {
        FeedbackError::Sns(SnsError::Malformed(_)) => StatusCode::BAD_REQUEST,
        FeedbackError::Sns(SnsError::Unreachable(_)) => StatusCode::SERVICE_UNAVAILABLE,
        FeedbackError::Sns(_) => StatusCode::FORBIDDEN,
        FeedbackError::Dsn(_) | FeedbackError::NotAReply | FeedbackError::UnknownSource(_) => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        FeedbackError::Store(_) => {
            return match e {
                FeedbackError::Store(s) => s.into(),
                _ => ApiError::internal(),
            }
        }
    };
    ApiError::new(status, e.code(), e.to_string())
}

async fn sns(State(s): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    match service(&s).ingest_sns(&body).await {
        Ok(done) => Ok(Json(done).into_response()),
        Err(e) => {
            tracing::warn!(code = e.code(), "SNS delivery refused");
            Err(refused(e))
        }
    }
}

/// `POST /api/v1/mail/dsn`: Ingest one delivery status notification (the raw message).
pub async fn dsn(State(s): State<AppState>, body: Bytes) -> ApiResult<Json<Value>> {
    let done = service(&s).ingest_dsn(&body).await.map_err(refused)?;
    Ok(Json(
        serde_json::to_value(done).map_err(|_| ApiError::internal())?,
    ))
}

/// `GET /api/v1/blasts/{id}/feedback`: A blast's bounced, complained and delivered counts.
pub async fn blast_feedback(
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> ApiResult<Json<Value>> {
    let b = s.store.blast(BlastId(id)).await?;
    let f = s.store.blast_feedback(b.id).await?;
    Ok(Json(json!({
        "blast_id": b.id, "bounced": f.bounced, "transient_bounced": f.transient_bounced,
        "complained": f.complained, "delivered": f.delivered, "rejected": f.rejected,
    })))
}
