//! The outbox: a [`Provider`] that writes each message as an `.eml` file under a
//! directory instead of sending it, for dry runs ("what would this blast send?").
//!
//! Each message becomes `DIR/<blast-free key>-<n>.eml`, written to a temporary name and
//! renamed when complete, so a reader never sees half a message. The outbox reports no
//! quota (the configured throttle applies) and is healthy unless the disk refuses a
//! write, which is reported as a transient error for that message.

use crate::provider::{
    BoxFuture, Health, HealthTracker, OutgoingMessage, ProviderError, ReportedQuota, SendOutcome,
};
use crate::Provider;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Writes messages to files.
#[derive(Debug)]
pub struct OutboxProvider {
    /// For logs and ledger rows (`outbox:dry-run`).
    name: String,
    /// Where the `.eml` files go (created on first write).
    dir: PathBuf,
    /// Makes file names unique within this process.
    seq: AtomicU64,
    health: Mutex<HealthTracker>,
}

impl OutboxProvider {
    /// An outbox writing under `dir`.
    pub fn new(name: impl Into<String>, dir: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            dir: dir.into(),
            seq: AtomicU64::new(0),
            health: Mutex::new(HealthTracker::default()),
        }
    }

    /// The directory the files go to.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    async fn write_one(&self, msg: &OutgoingMessage) -> SendOutcome {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{}-{n}", msg.key.0, std::process::id());
        let bytes = crate::smtp::SmtpProvider::raw(msg);
        let tmp = self.dir.join(format!(".{id}.tmp"));
        let dst = self.dir.join(format!("{id}.eml"));
        let r = async {
            tokio::fs::create_dir_all(&self.dir).await?;
            tokio::fs::write(&tmp, &bytes).await?;
            tokio::fs::rename(&tmp, &dst).await
        }
        .await;
        match r {
            Ok(()) => SendOutcome::Accepted {
                provider_message_id: format!("outbox-{id}"),
            },
            Err(e) => SendOutcome::TransientError {
                reason: format!("outbox write failed: {}", e.kind()),
            },
        }
    }

    async fn write_all(&self, messages: &[OutgoingMessage]) -> Vec<SendOutcome> {
        let mut out = Vec::with_capacity(messages.len());
        for m in messages {
            let o = self.write_one(m).await;
            if let Ok(mut h) = self.health.lock() {
                h.observe(&o);
            }
            out.push(o);
        }
        out
    }
}

impl Provider for OutboxProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn max_batch(&self) -> usize {
        50
    }

    fn send_batch<'a>(
        &'a self,
        messages: &'a [OutgoingMessage],
    ) -> BoxFuture<'a, Vec<SendOutcome>> {
        Box::pin(self.write_all(messages))
    }

    fn quota(&self) -> BoxFuture<'_, Result<Option<ReportedQuota>, ProviderError>> {
        Box::pin(async { Ok(None) })
    }

    fn health(&self) -> Health {
        self.health
            .lock()
            .map(|h| h.health())
            .unwrap_or(Health::Healthy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::{Content, Header, MessageKey};
    use narwhal_domain::Email;

    #[tokio::test]
    async fn writes_one_complete_eml_per_message() {
        let dir = std::env::temp_dir().join(format!("narwhal-outbox-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let p = OutboxProvider::new("outbox:test", &dir);
        let msg = |k: u64| OutgoingMessage {
            key: MessageKey(k),
            from: Email::parse("team@campaign.example").unwrap(),
            to: Email::parse(&format!("p{k}@example.com")).unwrap(),
            content: Content::Simple {
                subject: "Hello".into(),
                text: Some("Vote.".into()),
                html: None,
                headers: vec![Header {
                    name: "List-Unsubscribe-Post".into(),
                    value: "List-Unsubscribe=One-Click".into(),
                }],
            },
        };
        let out = p.send_batch(&[msg(1), msg(2)]).await;
        assert_eq!(out.len(), 2);
        assert!(out
            .iter()
            .all(|o| matches!(o, SendOutcome::Accepted { .. })));
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert_eq!(files.len(), 2, "{files:?}");
        assert!(files.iter().all(|f| f.extension().unwrap() == "eml"));
        let text = std::fs::read_to_string(&files[0]).unwrap();
        assert!(text.contains("To: <p1@example.com>"), "{text}");
        assert!(text.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"));
        assert!(text.contains("Subject: Hello"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
