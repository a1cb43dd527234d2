//! Staff pages for donations: a searchable list (`/donations`) and an overview
//! (`/donations/overview`): money raised per hour (an inline SVG chart) and per
//! refcode, processor health and the current route, pledges waiting, recurring plans,
//! donors over or near their limits, and the latest reconciliation run.

use super::{format_ms, staff, Page};
use crate::auth::{csrf_token, Caller};
use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;
use minijinja::{context, Environment, Value};
use narwhal_domain::money::format_dollars;
use narwhal_domain::Scope;
use narwhal_pay::router::BreakerState;
use narwhal_store::donations::{DonationRow, DonationSearch};
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

/// The states a donation can be in, for the filter.
const STATES: &[&str] = &[
    "processing",
    "succeeded",
    "declined",
    "failed",
    "pledged",
    "canceled",
    "partially_refunded",
    "refunded",
    "disputed",
];

/// Rows per page.
const PAGE: i64 = 50;

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut e = Environment::new();
        for (name, src) in [
            ("base.html", include_str!("templates/base.html")),
            ("donations.html", include_str!("templates/donations.html")),
            (
                "donations_overview.html",
                include_str!("templates/donations_overview.html"),
            ),
        ] {
            if let Err(err) = e.add_template(name, src) {
                tracing::error!(template = name, error = %err, "console template does not parse");
            }
        }
        e.add_filter("ts", format_ms);
        e
    })
}

fn render(name: &str, caller: &Caller, ctx: Value) -> Page {
    let csrf = caller
        .session
        .as_deref()
        .map(csrf_token)
        .unwrap_or_default();
    let user = caller.actor.trim_start_matches("user:").to_string();
    let ctx = context! { user => user, csrf => csrf, ..ctx };
    let html = env()
        .get_template(name)
        .and_then(|t| t.render(ctx))
        .map_err(|e| {
            tracing::error!(template = name, error = %e, "console render failed");
            ApiError::internal()
        })?;
    Ok(Html(html).into_response())
}

/// The routes.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/donations", get(index))
        .route("/donations/overview", get(overview))
}

#[derive(Deserialize, Serialize, Default)]
struct ListQ {
    #[serde(default)]
    state: String,
    #[serde(default)]
    refcode: String,
    #[serde(default)]
    email: String,
    /// `YYYY-MM-DD` (UTC), inclusive.
    #[serde(default)]
    from: String,
    /// `YYYY-MM-DD` (UTC), inclusive.
    #[serde(default)]
    to: String,
    #[serde(default)]
    after: Option<i64>,
}

/// Unix ms of a `YYYY-MM-DD` date at 00:00 UTC.
fn day_ms(s: &str) -> Option<i64> {
    let mut parts = s.trim().splitn(3, '-');
    let year: i32 = parts.next()?.parse().ok()?;
    let month: u8 = parts.next()?.parse().ok()?;
    let day: u8 = parts.next()?.parse().ok()?;
    let d = time::Date::from_calendar_date(year, time::Month::try_from(month).ok()?, day).ok()?;
    Some(d.midnight().assume_utc().unix_timestamp() * 1000)
}

#[derive(Serialize)]
struct Row<'a> {
    #[serde(flatten)]
    d: &'a DonationRow,
    amount: String,
    refunded: String,
}

fn rows(ds: &[DonationRow]) -> Vec<Row<'_>> {
    ds.iter()
        .map(|d| Row {
            d,
            amount: format_dollars(d.amount_cents),
            refunded: format_dollars(d.refunded_cents),
        })
        .collect()
}

async fn index(State(s): State<AppState>, headers: HeaderMap, Query(q): Query<ListQ>) -> Page {
    let c = staff(&s, &headers, Scope::DonationsRead).await?;
    let some = |v: &str| Some(v.trim().to_string()).filter(|v| !v.is_empty());
    let search = DonationSearch {
        state: some(&q.state).filter(|v| STATES.contains(&v.as_str())),
        refcode: some(&q.refcode),
        email: some(&q.email),
        since_ms: day_ms(&q.from),
        until_ms: day_ms(&q.to).map(|t| t + 86_400_000),
        before_id: q.after,
        limit: PAGE,
    };
    let found = s.store.search_donations(&search).await?;
    let next = (found.len() as i64 == PAGE)
        .then(|| found.last().map(|d| d.id))
        .flatten()
        .and_then(|last| {
            super::next_link(
                "/donations",
                &[
                    ("state", &q.state),
                    ("refcode", &q.refcode),
                    ("email", &q.email),
                    ("from", &q.from),
                    ("to", &q.to),
                ],
                PAGE as usize,
                Some(last),
            )
        });
    render(
        "donations.html",
        &c,
        context! {
            donations => Value::from_serialize(rows(&found)),
            states => STATES, q => Value::from_serialize(&q), next,
        },
    )
}

/// One bar of the per-hour chart.
#[derive(Serialize)]
struct Bar {
    x: i64,
    y: i64,
    w: i64,
    h: i64,
    label: String,
    amount: String,
    gifts: i64,
}

/// Chart geometry.
const CHART_W: i64 = 480;
const CHART_H: i64 = 120;

async fn overview(State(s): State<AppState>, headers: HeaderMap) -> Page {
    let c = staff(&s, &headers, Scope::DonationsRead).await?;
    let now = crate::now_ms();
    let hours = s.store.raised_per_hour(now - 48 * 3_600_000).await?;
    let max = hours.iter().map(|h| h.cents).max().unwrap_or(0).max(1);
    let n = i64::try_from(hours.len()).unwrap_or(1).max(1);
    let w = (CHART_W / n).max(2);
    let bars: Vec<Bar> = hours
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let h = (b.cents.max(0) * CHART_H / max).max(1);
            let start: i64 = b.key.parse().unwrap_or(0);
            Bar {
                x: i64::try_from(i).unwrap_or(0) * w,
                y: CHART_H - h,
                w: (w - 1).max(1),
                h,
                label: format_ms(start),
                amount: format_dollars(b.cents),
                gifts: b.gifts,
            }
        })
        .collect();
    let chart = context! {
        width => CHART_W, height => CHART_H,
        first => bars.first().map(|b| b.label.clone()).unwrap_or_default(),
        last => bars.last().map(|b| b.label.clone()).unwrap_or_default(),
        max => format_dollars(hours.iter().map(|h| h.cents).max().unwrap_or(0)),
        total => format_dollars(hours.iter().map(|h| h.cents).sum()),
    };
    let refcodes: Vec<Value> = s
        .store
        .raised_per_refcode(now - 30 * 86_400_000, 50)
        .await?
        .into_iter()
        .map(|r| context! { key => r.key, gifts => r.gifts, amount => format_dollars(r.cents) })
        .collect();
    let (processors, route, limits_table) = match &s.donations {
        Some(edge) => {
            let health = edge.service.router.health();
            let route = health
                .iter()
                .find(|h| h.state != BreakerState::Open)
                .map(|h| {
                    if h.priority == 0 {
                        format!("{} (primary)", h.name)
                    } else {
                        format!("{} (backup)", h.name)
                    }
                })
                .unwrap_or_else(|| "none: new gifts become pledges".to_string());
            (health, route, edge.service.config.limits.clone())
        }
        None => (
            Vec::new(),
            "donations are not configured on this node".to_string(),
            narwhal_domain::limits::LimitTable::default(),
        ),
    };
    let pledges = s
        .store
        .search_donations(&DonationSearch {
            state: Some("pledged".into()),
            limit: 200,
            ..DonationSearch::default()
        })
        .await?;
    let plans: Vec<Value> = s
        .store
        .recurring_plan_summaries(100)
        .await?
        .into_iter()
        .map(|p| {
            let amount = format_dollars(p.amount_cents);
            context! { amount, ..Value::from_serialize(&p) }
        })
        .collect();
    // "Near" is 80 % of the per-election limit.
    let near_cents = limits_table.per_election_cents * 4 / 5;
    let limits: Vec<Value> = s
        .store
        .donors_near_limit(near_cents, 100)
        .await?
        .into_iter()
        .map(|t| {
            context! {
                person_id => t.person_id,
                election => t.period.trim_start_matches("E:").to_string(),
                total => format_dollars(t.total_cents),
                room => format_dollars((limits_table.per_election_cents - t.total_cents).max(0)),
            }
        })
        .collect();
    let (recon, recon_items) = match s.store.latest_reconciliation().await? {
        Some((run, items)) => (Some(run), items),
        None => (None, Vec::new()),
    };
    render(
        "donations_overview.html",
        &c,
        context! {
            hours => Value::from_serialize(&bars), chart,
            refcodes, processors => Value::from_serialize(&processors), route,
            pledges => Value::from_serialize(rows(&pledges)), plans, limits,
            near => format_dollars(near_cents),
            recon => Value::from_serialize(&recon), recon_items => Value::from_serialize(&recon_items),
        },
    )
}
