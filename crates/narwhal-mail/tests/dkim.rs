//! DKIM signatures checked by an independent implementation: Python's dkimpy
//! (installed by `scripts/install-deps` into `.venv`), run by `tests/dkim_verify.py`
//! with the public key record given on its command line instead of DNS.
//!
//! RSA (PKCS#1 and PKCS#8 PEM) and Ed25519 signatures over messages built by
//! `narwhal_mail::mime` verify; a changed body, a changed `List-Unsubscribe` or a
//! second `From` fail; a `Received` header added in transit does not matter. Then an
//! SMTP account configured with `dkim_*` settings sends over STARTTLS to the sink, and
//! what the sink received verifies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use narwhal_domain::Email;
use narwhal_fakes::smtp::{SinkTls, SmtpSink};
use narwhal_fakes::TestCa;
use narwhal_mail::accounts::MailSettings;
use narwhal_mail::dkim::{Algorithm, DkimKey, DkimSigner};
use narwhal_mail::mime::{self, Envelope};
use narwhal_mail::provider::{Content, Header, MessageKey};
use narwhal_mail::template::Rendered;
use narwhal_mail::{OutgoingMessage, SendOutcome};
use std::path::{Path, PathBuf};
use std::process::Command;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn key_path(file: &str) -> PathBuf {
    manifest_dir().join("tests/dkim_keys").join(file)
}

fn key(file: &str) -> DkimKey {
    DkimKey::from_pem_file(&key_path(file)).unwrap()
}

/// The project's venv Python when there is one, else `python3`.
fn python() -> PathBuf {
    let venv = manifest_dir().join("../../.venv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// Runs dkimpy on `message` with `record` published at `name`: (passed, output).
fn dkimpy(message: &[u8], name: &str, record: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("message.eml");
    std::fs::write(&file, message).unwrap();
    let out = Command::new(python())
        .arg(manifest_dir().join("tests/dkim_verify.py"))
        .arg(&file)
        .arg(format!("{name}={record}"))
        .output()
        .expect("running python");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("ModuleNotFoundError"),
        "dkimpy is not installed: run scripts/install-deps\n{text}"
    );
    let passed = out.status.success() && text.starts_with("pass");
    (passed, text)
}

fn message() -> Vec<u8> {
    let env = Envelope {
        from_name: "Friends of Ada".into(),
        from_address: "news@act.example.org".into(),
        to_address: "ada@example.org".into(),
        message_id: "b7.p42@act.example.org".into(),
        date: 1_700_000_000,
        headers: narwhal_mail::unsubscribe::list_unsubscribe_headers(
            "https://act.example.org/u/T0KEN",
            Some("unsubscribe@act.example.org"),
        ),
    };
    let body = Rendered {
        subject: "¡Hola Ada! A long subject line that keeps going past the fold".into(),
        text: "Hi Ada,\n\ntrailing spaces   \n.a line with a dot\n\n\n".into(),
        html: Some("<p>Hi   Ada</p>".into()),
    };
    mime::build(&env, &body)
}

const NAME: &str = "nw1._domainkey.act.example.org";

fn replace(haystack: &[u8], from: &str, to: &str) -> Vec<u8> {
    let text = String::from_utf8(haystack.to_vec()).unwrap();
    assert!(text.contains(from), "{from:?} not in the message");
    text.replacen(from, to, 1).into_bytes()
}

#[test]
fn our_signatures_verify_in_dkimpy_and_tampering_fails() {
    for (file, alg) in [
        ("rsa2048.pkcs1.pem", Algorithm::RsaSha256),
        ("rsa2048.pkcs8.pem", Algorithm::RsaSha256),
        ("ed25519.pkcs8.pem", Algorithm::Ed25519Sha256),
    ] {
        let k = key(file);
        assert_eq!(k.algorithm(), alg, "{file}");
        let record = k.dns_record();
        let signer = DkimSigner::new(k, "nw1", None).unwrap();
        let signed = signer.sign(&message(), 1_700_000_100).unwrap();
        let head = String::from_utf8_lossy(&signed[..400]).to_string();
        assert!(head.starts_with("DKIM-Signature: v=1;"), "{head}");
        assert!(
            head.contains("d=act.example.org; s=nw1; t=1700000100;"),
            "{head}"
        );
        let unfolded = head.replace("\r\n\t", "");
        assert!(
            unfolded.contains(
                "list-unsubscribe:list-unsubscribe:list-unsubscribe-post:list-unsubscribe-post;"
            ),
            "the RFC 8058 headers are signed, and oversigned: {head}"
        );

        let (ok, out) = dkimpy(&signed, NAME, &record);
        assert!(ok, "{file}: {out}");

        let relayed = [
            b"Received: from relay by mx.example.org; Tue, 14 Nov 2023 22:15:00 +0000\r\n"
                .as_slice(),
            &signed,
        ]
        .concat();
        assert!(
            dkimpy(&relayed, NAME, &record).0,
            "{file}: a Received header"
        );

        let changed_body = replace(&signed, "trailing spaces", "trailing spices");
        let (ok, out) = dkimpy(&changed_body, NAME, &record);
        assert!(!ok, "{file}: a changed body must fail: {out}");
        assert!(out.contains("body hash mismatch"), "{out}");

        let changed_link = replace(&signed, "/u/T0KEN", "/u/EVIL");
        assert!(
            !dkimpy(&changed_link, NAME, &record).0,
            "{file}: List-Unsubscribe"
        );

        let second_from = replace(
            &signed,
            "\r\nFrom: ",
            "\r\nFrom: Mallory <m@evil.example>\r\nFrom: ",
        );
        assert!(
            !dkimpy(&second_from, NAME, &record).0,
            "{file}: a second From"
        );

        // The wrong public key.
        let other = if alg == Algorithm::RsaSha256 {
            key("ed25519.pkcs8.pem").dns_record()
        } else {
            key("rsa2048.pkcs8.pem").dns_record()
        };
        assert!(!dkimpy(&signed, NAME, &other).0, "{file}: another key");
    }
}

#[test]
fn pkcs1_and_pkcs8_of_one_rsa_key_sign_alike() {
    let a = key("rsa2048.pkcs1.pem");
    let b = key("rsa2048.pkcs8.pem");
    assert_eq!(a.dns_record(), b.dns_record());
    assert!(a
        .dns_record()
        .starts_with("v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"));
    let sa = DkimSigner::new(a, "s", None).unwrap();
    let sb = DkimSigner::new(b, "s", None).unwrap();
    // RSASSA-PKCS1-v1_5 is deterministic.
    assert_eq!(
        sa.signature_header(&message(), 5).unwrap(),
        sb.signature_header(&message(), 5).unwrap()
    );
    assert!(!format!("{sa:?}").contains("MII"));
}

fn outgoing(i: u64) -> OutgoingMessage {
    OutgoingMessage {
        key: MessageKey(i),
        from: Email::parse("news@act.example.org").unwrap(),
        to: Email::parse(&format!("r{i}@example.org")).unwrap(),
        content: Content::Simple {
            subject: format!("Rally {i}"),
            text: Some("See you there.\n".into()),
            html: Some("<p>See you there.</p>".into()),
            headers: narwhal_mail::unsubscribe::list_unsubscribe_headers(
                "https://act.example.org/u/T",
                None,
            )
            .into_iter()
            .map(|(name, value)| Header { name, value })
            .collect(),
        },
    }
}

async fn send_through_a_configured_account(key_file: &str) {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new().unwrap();
    let ca_file = ca.write_ca(dir.path(), "ca.pem").unwrap();
    let sink = SmtpSink::start_with(SinkTls::StartTls(ca.server_config().unwrap()))
        .await
        .unwrap();
    sink.require_auth("bulk", "pw");
    #[derive(serde::Deserialize)]
    struct File {
        mail: MailSettings,
    }
    let text = format!(
        r#"[mail]
        sender_name = "Friends"
        postal_address = "PO Box 1"
        [[mail.accounts]]
        kind = "smtp"
        name = "relay"
        host = "127.0.0.1"
        port = {port}
        tls = "starttls"
        ca_file = {ca:?}
        username = "bulk"
        password_env = "RELAY_PW"
        throttle = "100/s"
        dkim_selector = "nw1"
        dkim_key_file = {key:?}
        "#,
        port = sink.addr().port(),
        ca = ca_file.display().to_string(),
        key = key_path(key_file).display().to_string(),
    );
    let settings = toml::from_str::<File>(&text).unwrap().mail;
    let env = |name: &str| (name == "RELAY_PW").then(|| "pw".to_string());
    let setup = settings
        .build(Path::new("/tmp/unused"), "http://h/u/", &[7u8; 32], &env)
        .unwrap();
    let provider = &setup.accounts[0].provider;
    let out = provider.send_batch(&[outgoing(1), outgoing(2)]).await;
    assert!(
        out.iter()
            .all(|o| matches!(o, SendOutcome::Accepted { .. })),
        "{out:?}"
    );
    let record = key(key_file).dns_record();
    let got = sink.messages();
    assert_eq!(got.len(), 2);
    for m in got {
        assert!(m.tls && m.auth_user.as_deref() == Some("bulk"));
        let (ok, text) = dkimpy(&m.data, NAME, &record);
        assert!(ok, "{key_file}: what the server received verifies: {text}");
    }
}

#[tokio::test]
async fn an_smtp_account_with_an_rsa_key_signs_what_it_sends() {
    send_through_a_configured_account("rsa2048.pkcs8.pem").await;
}

#[tokio::test]
async fn an_smtp_account_with_an_ed25519_key_signs_what_it_sends() {
    send_through_a_configured_account("ed25519.pkcs8.pem").await;
}

#[test]
fn dkim_settings_are_checked() {
    #[derive(serde::Deserialize)]
    struct File {
        mail: MailSettings,
    }
    let build = |extra: &str| {
        let text = format!(
            "[mail]\nsender_name = \"F\"\npostal_address = \"P\"\n[[mail.accounts]]\n{extra}\nthrottle = \"1/s\"\n"
        );
        toml::from_str::<File>(&text)
            .unwrap()
            .mail
            .build(Path::new("/tmp/unused"), "http://h/u/", &[7u8; 32], &|_| {
                Some("x".into())
            })
            .err()
            .map(|e| e.key)
    };
    let smtp = "kind = \"smtp\"\nname = \"r\"\nhost = \"127.0.0.1\"";
    assert_eq!(
        build(&format!("{smtp}\ndkim_selector = \"s\"")).as_deref(),
        Some("mail.accounts[0].dkim_key_file")
    );
    assert_eq!(
        build(&format!(
            "{smtp}\ndkim_selector = \"s\"\ndkim_key_file = \"/nonexistent.pem\""
        ))
        .as_deref(),
        Some("mail.accounts[0].dkim_key_file")
    );
    let key = key_path("ed25519.pkcs8.pem").display().to_string();
    assert_eq!(
        build(&format!(
            "{smtp}\ndkim_selector = \"s\"\ndkim_key_file = {key:?}\ndkim_domain = \"a b\""
        ))
        .as_deref(),
        Some("mail.accounts[0].dkim_domain")
    );
    assert_eq!(
        build(&format!(
            "{smtp}\ndkim_selector = \"s\"\ndkim_key_file = {key:?}"
        )),
        None
    );
    assert_eq!(
        build(&format!("{smtp}\ntls = \"sometimes\"")).as_deref(),
        Some("mail.accounts[0].tls")
    );
    assert_eq!(
        build("kind = \"smtp\"\nname = \"r\"\nhost = \"smtp.example.org\"\ntls = \"none\"\nusername = \"u\"\npassword_env = \"P\"").as_deref(),
        Some("mail.accounts[0].tls"),
        "AUTH in the clear to a remote host"
    );
    assert_eq!(
        build("kind = \"ses\"\nname = \"s\"\nregion = \"us-east-1\"\naccess_key_id_env = \"K\"\nsecret_access_key_env = \"S\"\ndkim_selector = \"s\"").as_deref(),
        Some("mail.accounts[0].dkim_selector"),
        "SES signs with Easy DKIM"
    );
}
