//! A stand-in for Amazon SNS in tests: a certificate from rcgen over a fixed RSA key,
//! SNS-style signatures (v1 SHA-1, v2 SHA-256) made with that key, and a loopback HTTP
//! server that serves the certificate and answers subscription confirmations.
//!
//! Shared by the mail crate's tests and the HTTP API tests (`#[path]`).

#![allow(dead_code)]

/// A 2048-bit RSA key made for these tests only (PKCS#8 PEM).
pub const KEY_PEM: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDB6tTg+cEzp3eg\n\
JM7XLnbVyGbhZZ029gWQlbnE3ZxWO3WkvtddP4jHgHkYqx0dLXrtHCygsZ2Qwx3P\n\
hXd9tZ7Kzny+bDjvPeOIyeIePwfozxWI7Q2S34aHUoFc6NL5eHQUNy1MU9c7XmOU\n\
DsmfwQTZUEv5n7N83M2s3h5vyQduTkM0kiKZwqNbtxxyuJKz8VNmrsc+wjIcTOLJ\n\
OyEaeKmnwaToBnIScxK1p68ZJvKXJbQFue7sMAdM5xufElCZ5GnfBd53WEPiV19p\n\
bXSc0Ae/3nLNtFUeL9SDLHTebE47J2OjfahyAEdr2sNk4cQekhqXSaOJtmP1WcLw\n\
hd9lNiMzAgMBAAECggEABbt2Rh1yUrkS5hoaC5SOvbx6HuD8/nI6V68dYGgepkWF\n\
F9tUv9rQPvl/9IGgApjk4KjfDUCcd3pVFMMNjueoa7bvGBMlG0/GIwKFjr67pWwN\n\
tANlGqAR6+K9lGxrfb7/GD186mjMdkkdgqbUDfoyNWXt9DfLO5f5Wn1WAzIhm2b9\n\
FSbpQXabnCE/H+VYa++aeO6llNQM9tmWB1F3PgWyM1cmU78D5TXQs+YVBrAjqEhT\n\
M5Hqx724a+Bdna3I7FB2txDD2sW4IQF6an41SgGTLishx/4BcRE5D2ZL7dTZbtNu\n\
uJCguH2BrWrI4Kl6mtSD7/QdjPYkuL/NEuwykwZ2NQKBgQDfsiogxsbeNdKgj0Nm\n\
4/UCYrcRPvH5WFtR7OZeAlIkBHEjHxCvx5Ymr8XmCBstKAizsX2EA6lYEQu3K84w\n\
ClrfJi0bxFz4geJWCbDXl0xxsaPlJ+zx9HDOV+wWWW5LMLg1MB3AluDMalSBWa4f\n\
k9+fju6mq1NCRF7VGssZ7KTqrQKBgQDd68cVL7ncYw3MOcOYcwveWcCKIZW1vvEl\n\
VeqT1BeItkiVK76H8rWOEVPZAcZdKEmCUYZOHrRbpAo866Xi1kMDcZkXb/L4IwXq\n\
O1QJu8G4rzdtnO1SL7KBrgMoLcEm1Akl3JtK4ZuKUXMILBxqm/cvlVF5Epj7YlbO\n\
BmbIKeXhXwKBgBMwf3isVKb/SwBHCesrpvr7aOTr12oicEMI5YIvBMjeMK5onc/W\n\
eUT8Uye2jk5DXuu7UB8hCUfqvmyKL3fji4QVDE2TfL48tiPXVPpJml8uc/bWg/cF\n\
lx+8Xx5Tsah1l3fIluTMjKA8ht9JyCwhTU+svUBC9jN7Ff+F+uJQcJ1JAoGBANCc\n\
/tW8uqQg/Wx49JSPuZ14k5WGAr0J1Jh7TntOyhy69jo8F+ymTONTCJYbpAQYhhma\n\
V32CQZtP9kvUXWmCbxaCqB4vH6EBE2NgCBzqQi5BkAJbnYA/1DcxhEg10reUZVER\n\
M25N7LA25sLM7J2PJeu2GxOMVwEhLWaY/++z6yRTAoGALfDBwPU0oUChV1plWNEO\n\
+vwv0lChbyPG0obyUT7PDUXPRiJzKzYFRZG4HO8uFJX1OgAl+aP/+P8R8q/rYUW9\n\
vhyCZ4iJqIM1VjjgU2nApvmtovohzoFYVkz+rcS4WMniJZo3BrKI0o9ZRVCt5BTc\n\
vwv1OfBd+5i66H5XeaXN15Q=\n\
-----END PRIVATE KEY-----\n\
";

use base64::Engine;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The fake: a certificate server on 127.0.0.1 and a signer.
pub struct FakeSns {
    /// `http://127.0.0.1:PORT/`: the prefix tests trust.
    pub base: String,
    pub cert_pem: String,
    key: ring::signature::RsaKeyPair,
    /// How often the certificate was fetched (caching keeps it at 1).
    pub cert_fetches: Arc<AtomicUsize>,
    /// Paths of subscription confirmations received.
    pub confirmations: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeSns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn pkcs8_der() -> Vec<u8> {
    let b64: String = KEY_PEM
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

/// A self-signed certificate for the fixed key, from rcgen.
pub fn certificate_pem() -> String {
    let kp = rcgen::KeyPair::from_pem_and_sign_algo(KEY_PEM, &rcgen::PKCS_RSA_SHA256).unwrap();
    let params = rcgen::CertificateParams::new(vec!["sns.test.invalid".to_string()]).unwrap();
    params.self_signed(&kp).unwrap().pem()
}

impl FakeSns {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/", listener.local_addr().unwrap());
        let cert_pem = certificate_pem();
        let cert_fetches = Arc::new(AtomicUsize::new(0));
        let confirmations = Arc::new(Mutex::new(Vec::new()));
        let (pem, fetches, confirms) = (
            cert_pem.clone(),
            cert_fetches.clone(),
            confirmations.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let (pem, fetches, confirms) = (pem.clone(), fetches.clone(), confirms.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut got = 0;
                    while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") && got < buf.len() {
                        match sock.read(&mut buf[got..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got += n,
                        }
                    }
                    let head = String::from_utf8_lossy(&buf[..got]).to_string();
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let (status, body) = if path == "/cert.pem" {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        ("200 OK", pem)
                    } else if path.starts_with("/confirm") {
                        confirms.lock().unwrap().push(path);
                        ("200 OK", "<ConfirmSubscriptionResponse/>".to_string())
                    } else {
                        ("404 Not Found", String::new())
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        Self {
            base,
            cert_pem,
            key: ring::signature::RsaKeyPair::from_pkcs8(&pkcs8_der()).unwrap(),
            cert_fetches,
            confirmations,
            task,
        }
    }

    pub fn cert_url(&self) -> String {
        format!("{}cert.pem", self.base)
    }

    /// Base64 of the RSA PKCS#1 v1.5 signature of `text`: version 2 (SHA-256) signed
    /// here; version 1 (SHA-1, which ring does not sign with) from [`V1_SIGNATURES`].
    pub fn sign(&self, text: &str, version: u8) -> String {
        if version == 1 {
            return v1_signature(text);
        }
        let mut sig = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                text.as_bytes(),
                &mut sig,
            )
            .unwrap();
        base64::engine::general_purpose::STANDARD.encode(sig)
    }

    /// A signed `Notification` envelope carrying `message`, as SNS posts it.
    pub fn notification(
        &self,
        message_id: &str,
        topic: &str,
        message: &str,
        version: u8,
    ) -> String {
        let ts = "2026-11-26T12:00:00.000Z";
        let canonical = format!(
            "Message\n{message}\nMessageId\n{message_id}\nTimestamp\n{ts}\nTopicArn\n{topic}\nType\nNotification\n"
        );
        serde_json::json!({
            "Type": "Notification", "MessageId": message_id, "TopicArn": topic,
            "Message": message, "Timestamp": ts, "SignatureVersion": version.to_string(),
            "Signature": self.sign(&canonical, version), "SigningCertURL": self.cert_url(),
            "UnsubscribeURL": format!("{}unsubscribe", self.base),
        })
        .to_string()
    }

    /// A signed `SubscriptionConfirmation` whose `SubscribeURL` is `subscribe_url`.
    pub fn subscription(&self, message_id: &str, topic: &str, subscribe_url: &str) -> String {
        let ts = "2026-11-26T12:00:00.000Z";
        let message = format!("You have chosen to subscribe to the topic {topic}.");
        let token = "2336412f37fb687f5d51e6e2425dacbbab1f3b0c3b0b4b2b";
        let canonical = format!(
            "Message\n{message}\nMessageId\n{message_id}\nSubscribeURL\n{subscribe_url}\nTimestamp\n{ts}\nToken\n{token}\nTopicArn\n{topic}\nType\nSubscriptionConfirmation\n"
        );
        serde_json::json!({
            "Type": "SubscriptionConfirmation", "MessageId": message_id, "Token": token,
            "TopicArn": topic, "Message": message, "SubscribeURL": subscribe_url, "Timestamp": ts,
            "SignatureVersion": "2", "Signature": self.sign(&canonical, 2),
            "SigningCertURL": self.cert_url(),
        })
        .to_string()
    }
}

/// An SES bounce notification (the `Message` of the envelope).
pub fn ses_bounce(kind: &str, ses_message_id: &str, to: &str, at: &str) -> String {
    serde_json::json!({
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": kind, "bounceSubType": "General",
            "bouncedRecipients": [{"emailAddress": to, "action": "failed", "status": "5.1.1",
                "diagnosticCode": "smtp; 550 5.1.1 user unknown"}],
            "timestamp": at, "feedbackId": format!("fb-{ses_message_id}"),
            "reportingMTA": "dsn; a8-70.smtp-out.amazonses.com"
        },
        "mail": {
            "timestamp": at, "source": "team@campaign.example",
            "sourceArn": "arn:aws:ses:us-east-1:123456789012:identity/campaign.example",
            "sendingAccountId": "123456789012", "messageId": ses_message_id,
            "destination": [to], "headersTruncated": false, "headers": [],
            "commonHeaders": {"from": ["team@campaign.example"], "to": [to], "subject": "Hi"}
        }
    })
    .to_string()
}

/// An SES complaint notification.
pub fn ses_complaint(ses_message_id: &str, to: &str, at: &str) -> String {
    serde_json::json!({
        "notificationType": "Complaint",
        "complaint": {
            "userAgent": "ExampleCorp Feedback Loop (V0.01)",
            "complainedRecipients": [{"emailAddress": to}],
            "complaintFeedbackType": "abuse", "arrivalDate": at, "timestamp": at,
            "feedbackId": format!("cf-{ses_message_id}")
        },
        "mail": {"timestamp": at, "source": "team@campaign.example", "messageId": ses_message_id, "destination": [to]}
    })
    .to_string()
}

/// SHA-1 signatures by [`KEY_PEM`] of fixed canonical strings, made offline with
/// `openssl dgst -sha1 -sign key.pem | base64 -w0`, keyed by the SHA-256 (hex) of the
/// string. A test signing another string with version 1 fails and leaves the string in
/// a file to sign the same way.
pub const V1_SIGNATURES: &[(&str, &str)] = &[
    // A complaint for ada@example.com (MessageId m-3), see feedback.rs.
    (
        "9ba2af3d4c36cc074dbde8b1a53f1260e72009fa97829b999d21c4d95ff3fe21",
        "UCZ0UBImCbpaOzAW+T+2M5sFIZ3yU9ozx13tnkKMtaNUOXjWlVN4hU6KXseDCJmzIn/JjPwZW+ENlaQCRgI4/CDCNAwzN/lxgoQuLmz0o0OBrPNX6O/AOu2jkB0doCXm9J4OTwIP8uQfHsunQjcXmA3vbwCbkKwdwpy3kNmKYGaHO6o7ySpKkYEBAAf1W2yY53Qu//AFv+y5iByGi0zyxq/CV4taFHAVvmVntlCOQmMX8U35OVVJmpRY4yaPVhAkenRJxqoIgBItgDVmjD2a6GIQZXK4/X01BbWWTuxmDGPGpBefthj4n9MTtF1mHOuKpN+fbeFHuqOP48V2O06tcQ==",
    ),
];

fn v1_signature(text: &str) -> String {
    use sha2::Digest;
    let key: String = sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    match V1_SIGNATURES.iter().find(|(k, _)| *k == key) {
        Some((_, sig)) => sig.to_string(),
        None => {
            let path = std::env::temp_dir().join(format!("sns-v1-{key}.txt"));
            std::fs::write(&path, text).unwrap();
            panic!(
                "no version 1 signature for this string: sign {} with openssl dgst -sha1",
                path.display()
            );
        }
    }
}
