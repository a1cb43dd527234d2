//! Message templates: subject, text and HTML parts with per-recipient personalization.
//!
//! Templates use minijinja (Jinja syntax). Missing values render empty, and
//! `{{ first_name | default("Friend") }}` gives a fallback. HTML is auto-escaped.
//! Every problem a template can have before sending (a syntax error, a variable we
//! will never supply) is found by [`Compiled::compile`], with the part, line and
//! column, so a blast never starts with a broken template. A footer with the sender's
//! postal address and the unsubscribe link is appended to every part by us: a template
//! cannot forget it.

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::Serialize;
use std::collections::BTreeMap;

/// The variables a template may use. `custom` is a map of the person's custom fields.
pub const VARIABLES: &[&str] = &[
    "first_name",
    "middle_name",
    "last_name",
    "suffix",
    "full_name",
    "email",
    "city",
    "state",
    "zip",
    "county",
    "precinct",
    "custom",
    "unsubscribe_url",
    "sender_name",
    "sender_address",
];

/// What staff write.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct TemplateSource {
    pub subject: String,
    pub text: String,
    #[serde(default)]
    pub html: Option<String>,
}

/// Who sends: required by law and by the providers' rules in every bulk message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    pub name: String,
    pub postal_address: String,
}

/// A template problem, located.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{part}: line {line}, column {column}: {message}")]
pub struct TemplateError {
    /// `subject`, `text` or `html`.
    pub part: &'static str,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// One recipient's values. `Debug` is redacted: these are personal data. Absent values
/// are left out (undefined in the template), so `default(...)` applies to them.
#[derive(Clone, Default, Serialize)]
pub struct RecipientVars {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub middle_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    pub email: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub county: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precinct: Option<String>,
    pub custom: BTreeMap<String, String>,
    pub unsubscribe_url: String,
}

impl std::fmt::Debug for RecipientVars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecipientVars([redacted])")
    }
}

/// A rendered message, ready for MIME.
#[derive(Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
}

impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rendered([redacted])")
    }
}

/// A checked template, cheap to render many times.
pub struct Compiled {
    env: Environment<'static>,
    has_html: bool,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("has_html", &self.has_html)
            .finish()
    }
}

const TEXT_FOOTER: &str =
    "\n\n--\n{{ sender_name }}\n{{ sender_address }}\nUnsubscribe: {{ unsubscribe_url }}\n";
const HTML_FOOTER: &str = "\n<hr><p style=\"font-size:12px;color:#555\">{{ sender_name }}<br>{{ sender_address }}<br><a href=\"{{ unsubscribe_url }}\">Unsubscribe</a></p>\n";

fn locate(part: &'static str, src: &str, e: &minijinja::Error) -> TemplateError {
    let (line, column) = match e.range() {
        Some(r) => position(src, r.start),
        None => (e.line().unwrap_or(1), 1),
    };
    let message = match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    };
    TemplateError {
        part,
        line,
        column,
        message,
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn position(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..src.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

/// Where an identifier is first used inside `{{ }}` or `{% %}`.
fn find_identifier(src: &str, name: &str) -> (usize, usize) {
    let bytes = src.as_bytes();
    let mut in_tag = false;
    let mut i = 0;
    while i < bytes.len() {
        if !in_tag && (src[i..].starts_with("{{") || src[i..].starts_with("{%")) {
            in_tag = true;
            i += 2;
            continue;
        }
        if in_tag && (src[i..].starts_with("}}") || src[i..].starts_with("%}")) {
            in_tag = false;
            i += 2;
            continue;
        }
        if in_tag && src[i..].starts_with(name) {
            let before_ok = i == 0
                || !(bytes[i - 1].is_ascii_alphanumeric()
                    || bytes[i - 1] == b'_'
                    || bytes[i - 1] == b'.');
            let end = i + name.len();
            let after_ok =
                end >= bytes.len() || !(bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_');
            if before_ok && after_ok {
                return position(src, i);
            }
        }
        i += 1;
    }
    (1, 1)
}

impl Compiled {
    /// Parses all parts and checks every variable they use.
    pub fn compile(src: &TemplateSource, sender: &Sender) -> Result<Self, TemplateError> {
        if src.subject.trim().is_empty() {
            return Err(TemplateError {
                part: "subject",
                line: 1,
                column: 1,
                message: "the subject is empty".into(),
            });
        }
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html") {
                AutoEscape::Html
            } else {
                AutoEscape::None
            }
        });
        env.add_global("sender_name", sender.name.clone());
        env.add_global("sender_address", sender.postal_address.clone());
        let parts: [(&'static str, &str, Option<&str>, String); 3] = [
            (
                "subject",
                "subject.txt",
                Some(src.subject.as_str()),
                src.subject.clone(),
            ),
            (
                "text",
                "text.txt",
                Some(src.text.as_str()),
                format!("{}{TEXT_FOOTER}", src.text),
            ),
            (
                "html",
                "body.html",
                src.html.as_deref(),
                format!("{}{HTML_FOOTER}", src.html.clone().unwrap_or_default()),
            ),
        ];
        for (part, name, user, full) in parts {
            let Some(user) = user else { continue };
            env.add_template_owned(name.to_string(), full)
                .map_err(|e| locate(part, user, &e))?;
            let t = env.get_template(name).map_err(|e| locate(part, user, &e))?;
            let mut unknown: Vec<String> = t
                .undeclared_variables(false)
                .into_iter()
                .filter(|v| !VARIABLES.contains(&v.as_str()))
                .collect();
            unknown.sort();
            if let Some(v) = unknown.first() {
                let (line, column) = find_identifier(user, v);
                return Err(TemplateError {
                    part,
                    line,
                    column,
                    message: format!("unknown variable {v:?}; known: {}", VARIABLES.join(", ")),
                });
            }
        }
        Ok(Self {
            env,
            has_html: src.html.is_some(),
        })
    }

    /// Renders one recipient's message. The subject is one line whatever the data says.
    pub fn render(&self, r: &RecipientVars) -> Result<Rendered, TemplateError> {
        let full_name = [&r.first_name, &r.middle_name, &r.last_name, &r.suffix]
            .iter()
            .filter_map(|p| p.as_deref())
            .collect::<Vec<_>>()
            .join(" ");
        let ctx =
            minijinja::context! { full_name => full_name, ..minijinja::Value::from_serialize(r) };
        let run = |part: &'static str, name: &str| -> Result<String, TemplateError> {
            let t = self
                .env
                .get_template(name)
                .map_err(|e| locate(part, "", &e))?;
            t.render(&ctx).map_err(|e| TemplateError {
                part,
                line: e.line().unwrap_or(1),
                column: 1,
                message: e.to_string(),
            })
        };
        let subject = run("subject", "subject.txt")?;
        let subject = subject
            .split(['\r', '\n'])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        Ok(Rendered {
            subject,
            text: run("text", "text.txt")?,
            html: if self.has_html {
                Some(run("html", "body.html")?)
            } else {
                None
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender() -> Sender {
        Sender {
            name: "Friends of Ada".into(),
            postal_address: "PO Box 1, Columbus OH 43215".into(),
        }
    }

    fn src(subject: &str, text: &str, html: Option<&str>) -> TemplateSource {
        TemplateSource {
            subject: subject.into(),
            text: text.into(),
            html: html.map(String::from),
        }
    }

    fn vars() -> RecipientVars {
        RecipientVars {
            first_name: Some("Ada".into()),
            last_name: Some("Lovelace".into()),
            email: "ada@example.org".into(),
            county: Some("FRANKLIN".into()),
            custom: [("party".to_string(), "D".to_string())].into(),
            unsubscribe_url: "https://act.example.org/u/TOKEN".into(),
            ..Default::default()
        }
    }

    #[test]
    fn renders_with_fallbacks_and_footer() {
        let c = Compiled::compile(
            &src(
                "Hi {{ first_name }}!",
                "Dear {{ first_name | default('Friend') }} of {{ county }} ({{ custom.party }})",
                None,
            ),
            &sender(),
        )
        .unwrap();
        let r = c.render(&vars()).unwrap();
        assert_eq!(r.subject, "Hi Ada!");
        assert!(r.text.starts_with("Dear Ada of FRANKLIN (D)"), "{}", r.text);
        assert!(
            r.text.contains("PO Box 1, Columbus OH 43215")
                && r.text
                    .contains("Unsubscribe: https://act.example.org/u/TOKEN")
        );
        let mut nobody = vars();
        nobody.first_name = None;
        assert!(c
            .render(&nobody)
            .unwrap()
            .text
            .starts_with("Dear Friend of"));
        assert!(r.html.is_none());
    }

    #[test]
    fn html_is_escaped_and_subject_is_one_line() {
        let c = Compiled::compile(
            &src(
                "{{ first_name }}",
                "x",
                Some("<p>Hello {{ full_name }}</p>"),
            ),
            &sender(),
        )
        .unwrap();
        let mut v = vars();
        v.first_name = Some("<script>alert(1)</script>\r\nBcc: victim@example.org".into());
        let r = c.render(&v).unwrap();
        assert!(!r.subject.contains('\n') && !r.subject.contains('\r'));
        let html = r.html.unwrap();
        assert!(
            html.contains("&lt;script&gt;") && !html.contains("<script>"),
            "{html}"
        );
        assert!(
            html.contains("href=\"https:&#x2f;&#x2f;act.example.org&#x2f;u&#x2f;TOKEN\"")
                || html.contains("href=\"https://act.example.org/u/TOKEN\""),
            "{html}"
        );
    }

    #[test]
    fn syntax_errors_are_located() {
        let e = Compiled::compile(
            &src("ok", "line one\nline two {{ first_name ", None),
            &sender(),
        )
        .unwrap_err();
        assert_eq!(e.part, "text");
        assert_eq!(e.line, 2, "{e}");
        let e = Compiled::compile(&src("ok", "fine", Some("<p>\n  {% if %}</p>")), &sender())
            .unwrap_err();
        assert_eq!((e.part, e.line), ("html", 2), "{e}");
        let e = Compiled::compile(&src("  ", "x", None), &sender()).unwrap_err();
        assert_eq!(e.part, "subject");
    }

    #[test]
    fn unknown_variables_are_rejected_with_position() {
        let e = Compiled::compile(&src("Hi", "Hello\n  {{ frist_name }}!", None), &sender())
            .unwrap_err();
        assert_eq!((e.part, e.line, e.column), ("text", 2, 6), "{e}");
        assert!(e.message.contains("frist_name"));
        // Loop variables and set variables are not "unknown".
        assert!(Compiled::compile(
            &src(
                "Hi",
                "{% for k in custom %}{{ k }}{% endfor %}{% set x = 1 %}{{ x }}",
                None
            ),
            &sender()
        )
        .is_ok());
    }
}
