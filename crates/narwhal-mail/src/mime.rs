//! Building the RFC 5322 message: headers, and a `multipart/alternative` body with a
//! text and an HTML part in quoted-printable. CRLF line ends throughout.
//!
//! Header values come from data (names, subjects): CR and LF are removed from every
//! one of them, so no recipient's name can add a header. Non-ASCII header text is
//! RFC 2047 encoded.

use crate::template::Rendered;
use base64::Engine;

/// Everything a message needs besides its rendered content.
#[derive(Clone)]
pub struct Envelope {
    pub from_name: String,
    pub from_address: String,
    pub to_address: String,
    pub message_id: String,
    /// Seconds since the Unix epoch.
    pub date: i64,
    /// Extra headers in order (List-Unsubscribe, feedback ids, ...).
    pub headers: Vec<(String, String)>,
}

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelope")
            .field("message_id", &self.message_id)
            .finish_non_exhaustive()
    }
}

fn clean(v: &str) -> String {
    v.chars().filter(|c| *c != '\r' && *c != '\n').collect()
}

/// RFC 2047 `=?UTF-8?B?...?=` when the text is not plain printable ASCII.
pub fn encode_word(v: &str) -> String {
    let v = clean(v);
    if v.chars().all(|c| (' '..='~').contains(&c)) {
        v
    } else {
        format!(
            "=?UTF-8?B?{}?=",
            base64::engine::general_purpose::STANDARD.encode(v.as_bytes())
        )
    }
}

/// Quoted-printable (RFC 2045) with CRLF line ends and soft breaks under 76 columns.
pub fn quoted_printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    let normalized = text.replace("\r\n", "\n");
    for (n, line) in normalized.split('\n').enumerate() {
        if n > 0 {
            out.push_str("\r\n");
        }
        let bytes = line.as_bytes();
        let mut col = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let last = i + 1 == bytes.len();
            let plain = (b == b' ' || b == b'\t') && !last || (33..=126).contains(&b) && b != b'=';
            let piece = if plain {
                (b as char).to_string()
            } else {
                format!("={b:02X}")
            };
            if col + piece.len() > 75 {
                out.push_str("=\r\n");
                col = 0;
            }
            col += piece.len();
            out.push_str(&piece);
        }
    }
    out
}

fn rfc2822_date(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc2822)
                .ok()
        })
        .unwrap_or_else(|| "Thu, 01 Jan 1970 00:00:00 +0000".to_string())
}

/// The whole message, ready for SES `Raw` content or SMTP `DATA`.
pub fn build(env: &Envelope, body: &Rendered) -> Vec<u8> {
    let mut m = String::with_capacity(
        body.text.len() * 2 + body.html.as_ref().map_or(0, |h| h.len() * 2) + 1024,
    );
    let mut header = |name: &str, value: &str| {
        m.push_str(&clean(name));
        m.push_str(": ");
        m.push_str(&clean(value));
        m.push_str("\r\n");
    };
    header(
        "From",
        &format!("{} <{}>", encode_word(&env.from_name), env.from_address),
    );
    header("To", &format!("<{}>", env.to_address));
    header("Subject", &encode_word(&body.subject));
    header("Date", &rfc2822_date(env.date));
    header("Message-ID", &format!("<{}>", env.message_id));
    header("MIME-Version", "1.0");
    for (k, v) in &env.headers {
        header(k, v);
    }
    match &body.html {
        None => {
            header("Content-Type", "text/plain; charset=utf-8");
            header("Content-Transfer-Encoding", "quoted-printable");
            m.push_str("\r\n");
            m.push_str(&quoted_printable(&body.text));
            m.push_str("\r\n");
        }
        Some(html) => {
            // The boundary cannot occur in quoted-printable output ("=_" is never produced by it).
            let boundary = format!(
                "=_narwhal_{}",
                clean(&env.message_id).replace(['<', '>', '@', ' '], "_")
            );
            header(
                "Content-Type",
                &format!("multipart/alternative; boundary=\"{boundary}\""),
            );
            m.push_str("\r\n");
            for (ctype, content) in [
                ("text/plain", body.text.as_str()),
                ("text/html", html.as_str()),
            ] {
                m.push_str(&format!("--{boundary}\r\nContent-Type: {ctype}; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"));
                m.push_str(&quoted_printable(content));
                m.push_str("\r\n");
            }
            m.push_str(&format!("--{boundary}--\r\n"));
        }
    }
    m.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qp_decode(s: &str) -> String {
        let s = s.replace("=\r\n", "");
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'=' {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap().replace("\r\n", "\n")
    }

    #[test]
    fn quoted_printable_round_trips_and_keeps_lines_short() {
        let text = format!(
            "Olá, José! = 100% ✓ trailing space \nsecond line\n{}",
            "x".repeat(200)
        );
        let qp = quoted_printable(&text);
        assert!(qp.lines().all(|l| l.len() <= 76), "{qp}");
        assert!(!qp.contains(" \r\n"), "trailing spaces are encoded");
        assert_eq!(qp_decode(&qp), text);
    }

    #[test]
    fn message_has_headers_and_both_parts() {
        let env = Envelope {
            from_name: "Friends of Ada".into(),
            from_address: "news@act.example.org".into(),
            to_address: "ada@example.org".into(),
            message_id: "b7.p42@act.example.org".into(),
            date: 1_700_000_000,
            headers: crate::unsubscribe::list_unsubscribe_headers(
                "https://act.example.org/u/T",
                None,
            ),
        };
        let body = Rendered {
            subject: "¡Hola Ada!\r\nBcc: evil@example.org".into(),
            text: "Hi".into(),
            html: Some("<p>Hi</p>".into()),
        };
        let raw = String::from_utf8(build(&env, &body)).unwrap();
        let (head, rest) = raw.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("From: Friends of Ada <news@act.example.org>\r\n"));
        assert!(head.contains("Subject: =?UTF-8?B?"), "{head}");
        assert!(!head.contains("Bcc:"), "no header injection: {head}");
        assert!(
            head.contains("Date: Tue, 14 Nov 2023 22:13:20 +0000"),
            "{head}"
        );
        assert!(head.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"));
        assert!(
            head.contains("multipart/alternative; boundary=\"=_narwhal_b7.p42_act.example.org\"")
        );
        assert!(
            rest.contains("Content-Type: text/plain; charset=utf-8")
                && rest.contains("Content-Type: text/html; charset=utf-8")
        );
        assert!(rest.ends_with("--=_narwhal_b7.p42_act.example.org--\r\n"));
        assert!(raw.split("\r\n").all(|l| !l.contains('\n')), "CRLF only");
    }
}
