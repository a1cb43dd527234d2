//! Console people: search with paging, the person page, and its forms (edit through
//! `Hub::edit`, merge through `Hub::merge`, add to a list). A form that does not parse
//! comes back as the person page with the reason shown inline.

use super::{check_post, next_link, render, staff, Fail, Page, PAGE};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use minijinja::{context, Value};
use narwhal_domain::{ConsentState, Email, ListId, PersonId, PhoneE164, Scope, Tag};
use narwhal_people::PersonPatch;
use serde::Deserialize;

#[derive(Deserialize)]
pub(super) struct SearchQ {
    #[serde(default)]
    q: String,
    after: Option<PersonId>,
}

/// `GET /people?q=&after=`: a page of matches, with "Load more" when there may be more.
pub(super) async fn search(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<SearchQ>,
) -> Page {
    let c = staff(&s, &headers, Scope::PeopleRead).await?;
    let found = if q.q.trim().is_empty() {
        Vec::new()
    } else {
        s.store.search_people(&q.q, q.after, PAGE).await?
    };
    let more = next_link(
        "/people",
        &[("q", q.q.as_str())],
        found.len(),
        found.last().map(|p| p.id.0),
    );
    render(
        &s,
        "people.html",
        Some(&c),
        context! { q => q.q, people => Value::from_serialize(&found), more },
    )
}

/// The person page; `error` is shown above the forms, with `status`.
pub(super) async fn person_page(
    s: &AppState,
    c: &Caller,
    id: PersonId,
    error: Option<String>,
    status: StatusCode,
) -> Page {
    let rec = s.store.get_person(id).await?;
    let merges = s.store.merges_of(id).await?;
    let history = s
        .store
        .audit_log(Some(("person", &id.to_string())), None, 100)
        .await?;
    let lists = if c.has(Scope::ListsWrite) {
        s.store.lists().await?
    } else {
        Vec::new()
    };
    let mut r = render(
        s,
        "person.html",
        Some(c),
        context! {
            person => Value::from_serialize(&rec),
            merges => Value::from_serialize(&merges),
            history => Value::from_serialize(&history),
            lists => Value::from_serialize(&lists),
            consents => ConsentState::ALL.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
            can_write => c.has(Scope::PeopleWrite),
            error,
        },
    )?;
    *r.status_mut() = status;
    Ok(r)
}

/// `GET /people/{id}`.
pub(super) async fn show(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<PersonId>,
) -> Page {
    let c = staff(&s, &headers, Scope::PeopleRead).await?;
    person_page(&s, &c, id, None, StatusCode::OK).await
}

/// Turns a caller's mistake into the person page with the message; anything else
/// stays an error page.
async fn or_inline(s: &AppState, c: &Caller, id: PersonId, r: Result<(), ApiError>) -> Page {
    match r {
        Ok(()) => Ok(super::redirect(&format!("/people/{id}"))),
        Err(e) if e.status.is_client_error() && e.status != StatusCode::FORBIDDEN => {
            person_page(s, c, id, Some(e.message), e.status).await
        }
        Err(e) => Err(Fail::Api(e)),
    }
}

fn invalid(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::invalid(format!("{what}: {e}"))
}

/// Splits "a, b c" into words, for tag fields.
fn words(s: &str) -> impl Iterator<Item = &str> {
    s.split([',', ' ', '\n', '\r', '\t'])
        .map(str::trim)
        .filter(|w| !w.is_empty())
}

/// Builds a [`PersonPatch`] from the edit form's pairs. Repeated `remove_tag` pairs
/// come from the checkboxes; consent is only sent when it changes.
fn patch_from_form(
    pairs: &[(String, String)],
    current: (&str, &str),
) -> Result<PersonPatch, ApiError> {
    let mut p = PersonPatch::default();
    for (k, v) in pairs {
        let v = v.trim();
        match k.as_str() {
            "first_name" => p.first_name = Some(v.to_string()),
            "middle_name" => p.middle_name = Some(v.to_string()),
            "last_name" => p.last_name = Some(v.to_string()),
            "suffix" => p.suffix = Some(v.to_string()),
            "add_email" if !v.is_empty() => {
                p.add_emails
                    .push(Email::parse(v).map_err(|e| invalid("email", e))?);
            }
            "add_phone" if !v.is_empty() => {
                p.add_phones
                    .push(PhoneE164::parse(v).map_err(|e| invalid("phone", e))?);
            }
            "add_tags" => {
                for w in words(v) {
                    p.add_tags
                        .push(Tag::parse(w).map_err(|e| invalid("tag", e))?);
                }
            }
            "remove_tag" if !v.is_empty() => {
                p.remove_tags
                    .push(Tag::parse(v).map_err(|e| invalid("tag", e))?);
            }
            "email_consent" | "sms_consent" if !v.is_empty() => {
                let state = ConsentState::parse(v).map_err(|e| invalid("consent", e))?;
                let (field, cur) = if k == "email_consent" {
                    (&mut p.email_consent, current.0)
                } else {
                    (&mut p.sms_consent, current.1)
                };
                if state.as_str() != cur {
                    *field = Some(state);
                }
            }
            _ => {}
        }
    }
    Ok(p)
}

/// `POST /people/{id}/edit`.
pub(super) async fn edit(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<PersonId>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Page {
    let c = staff(&s, &headers, Scope::PeopleWrite).await?;
    let csrf = pairs
        .iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    check_post(&headers, &c, csrf)?;
    let cur = s.store.get_person(id).await?;
    let r = async {
        let patch = patch_from_form(&pairs, (&cur.row.email_consent, &cur.row.sms_consent))?;
        s.hub.edit(id, patch, &c.actor).await?;
        Ok(())
    }
    .await;
    or_inline(&s, &c, id, r).await
}

#[derive(Deserialize)]
pub(super) struct MergeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    other: String,
    #[serde(default)]
    reason: String,
}

/// `POST /people/{id}/merge`: merges `other` into this person.
pub(super) async fn merge(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<PersonId>,
    Form(f): Form<MergeForm>,
) -> Page {
    let c = staff(&s, &headers, Scope::PeopleWrite).await?;
    check_post(&headers, &c, &f.csrf)?;
    let r = async {
        let other = f
            .other
            .trim()
            .trim_start_matches('#')
            .parse::<i64>()
            .map_err(|_| ApiError::invalid("the other person's id is a number"))?;
        let reason = f.reason.trim();
        if reason.chars().count() > 500 {
            return Err(ApiError::invalid("a reason is at most 500 characters"));
        }
        s.hub.merge(id, PersonId(other), reason, &c.actor).await?;
        Ok(())
    }
    .await;
    or_inline(&s, &c, id, r).await
}

#[derive(Deserialize)]
pub(super) struct AddToListForm {
    #[serde(default)]
    csrf: String,
    list: ListId,
}

/// `POST /people/{id}/lists`: adds this person to a list.
pub(super) async fn add_to_list(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<PersonId>,
    Form(f): Form<AddToListForm>,
) -> Page {
    let c = staff(&s, &headers, Scope::ListsWrite).await?;
    check_post(&headers, &c, &f.csrf)?;
    let r = s
        .store
        .add_to_list(f.list, &[id], &c.actor)
        .await
        .map(|_| ())
        .map_err(ApiError::from);
    or_inline(&s, &c, id, r).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn edit_form_becomes_a_patch() {
        let p = patch_from_form(
            &pairs(&[
                ("csrf", "x"),
                ("first_name", " Ada "),
                ("add_email", "ADA@Example.org"),
                ("add_phone", ""),
                ("add_tags", "Donor, volunteer"),
                ("remove_tag", "old"),
                ("email_consent", "subscribed"),
                ("sms_consent", "unknown"),
            ]),
            ("unknown", "unknown"),
        )
        .unwrap();
        assert_eq!(p.first_name.as_deref(), Some("Ada"));
        assert_eq!(p.add_emails.len(), 1);
        assert!(p.add_phones.is_empty());
        assert_eq!(p.add_tags.len(), 2);
        assert_eq!(p.remove_tags.len(), 1);
        assert_eq!(p.email_consent, Some(ConsentState::Subscribed));
        assert_eq!(p.sms_consent, None, "unchanged consent is not sent");
        let e = patch_from_form(&pairs(&[("add_email", "nope")]), ("unknown", "unknown"));
        assert!(e.is_err_and(|e| e.message.starts_with("email")));
    }
}
