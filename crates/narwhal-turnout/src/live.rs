//! Live turnout: the expected curve, the dashboard figures per state, county, polling
//! place and precinct (voted against the universe, hour by hour, against the curve),
//! and [`LiveTurnout`], which keeps one node's copy of those figures current.
//!
//! A node learns of reports taken anywhere by polling the store's change clock every
//! [`POLL`] (a one-row read); a report taken on this node also wakes it at once
//! ([`LiveTurnout::nudge`]). When the clock moved, or on a nudge, the figures are
//! computed once and shared by every subscriber (dashboards, watchers' live streams),
//! so ten thousand streams cost one query. Nothing here is state that matters: a node that restarts
//! computes the same figures from the database.

use narwhal_store::turnout_live::{Cell, HourCell};
use narwhal_store::{now_ms, Store, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// How often a node reads the change clock.
pub const POLL: Duration = Duration::from_millis(250);
/// Figures are recomputed at least this often (the expected curve moves with time).
pub const REFRESH: Duration = Duration::from_secs(10);
/// And at most this often: under a stream of reports one computation covers many.
pub const MIN_GAP: Duration = Duration::from_millis(100);
/// The settings key of the curve.
const CURVE_KEY: &str = "expected_curve";
const HOUR_MS: i64 = 3_600_000;

/// The expected turnout curve: when the polls open, and for each hour after, the share
/// of the universe expected to have voted by the end of that hour (cumulative percent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedCurve {
    /// When the polls open, ms since the epoch.
    pub opens_at: i64,
    /// Cumulative percent of the universe voted by the end of each hour; 1 to 48
    /// values, each 0 to 100, never decreasing.
    pub hourly_pct: Vec<f64>,
}

impl ExpectedCurve {
    /// A typical 13-hour election day (6 to 19) starting at `opens_at`, with 70% of
    /// supporters voting by the close.
    pub fn typical(opens_at: i64) -> Self {
        Self {
            opens_at,
            hourly_pct: vec![
                7.0, 13.0, 18.0, 23.0, 28.0, 33.0, 38.0, 43.0, 48.0, 54.0, 60.0, 66.0, 70.0,
            ],
        }
    }

    /// Checks the curve; the message names what is wrong.
    pub fn check(&self) -> Result<(), String> {
        if self.hourly_pct.is_empty() || self.hourly_pct.len() > 48 {
            return Err("hourly_pct: 1 to 48 values, one per hour the polls are open".into());
        }
        if self.opens_at <= 0 {
            return Err("opens_at: a time in ms since the epoch".into());
        }
        let mut prev = 0.0;
        for (i, v) in self.hourly_pct.iter().enumerate() {
            if !v.is_finite() || !(0.0..=100.0).contains(v) {
                return Err(format!("hourly_pct[{i}]: a percent from 0 to 100"));
            }
            if *v < prev {
                return Err(format!(
                    "hourly_pct[{i}]: cumulative, so never below the hour before"
                ));
            }
            prev = *v;
        }
        Ok(())
    }

    /// The expected cumulative percent at `t`, linear within each hour.
    pub fn expected_pct(&self, t: i64) -> f64 {
        if t <= self.opens_at {
            return 0.0;
        }
        let h = (t - self.opens_at) as f64 / HOUR_MS as f64;
        let i = h.floor() as usize;
        if i >= self.hourly_pct.len() {
            return self.hourly_pct.last().copied().unwrap_or(0.0);
        }
        let start = if i == 0 { 0.0 } else { self.hourly_pct[i - 1] };
        start + (self.hourly_pct[i] - start) * (h - i as f64)
    }

    /// The index of the hour `t` falls in, from 0, capped at the curve's last hour.
    pub fn hour_of(&self, t: i64) -> usize {
        if t <= self.opens_at {
            return 0;
        }
        (((t - self.opens_at) / HOUR_MS) as usize).min(self.hourly_pct.len().saturating_sub(1))
    }
}

/// Voted against universe and curve, for one unit.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Figures {
    pub universe: i64,
    pub voted: i64,
    /// voted / universe, percent (one decimal).
    pub voted_pct: f64,
    /// Expected voted now by the curve (people).
    pub expected: i64,
    /// expected - voted: how far turnout lags (negative: ahead).
    pub lag: i64,
    /// Cumulative voted at the end of each hour since the polls opened, up to now.
    pub series: Vec<i64>,
}

/// A county's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CountyFigures {
    pub county: String,
    #[serde(flatten)]
    pub figures: Figures,
}

/// A polling place's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlaceFigures {
    pub polling_place: String,
    #[serde(flatten)]
    pub figures: Figures,
}

/// A precinct's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PrecinctFigures {
    pub county: String,
    pub precinct: String,
    pub polling_place: String,
    #[serde(flatten)]
    pub figures: Figures,
}

/// Everything the dashboard shows, computed at once.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dashboard {
    /// The change clock these figures reflect.
    pub seq: i64,
    /// When they were computed (ms).
    pub at: i64,
    pub curve: ExpectedCurve,
    /// Expected cumulative percent now.
    pub expected_pct: f64,
    /// The whole universe (the campaign's state).
    pub state: Figures,
    pub counties: Vec<CountyFigures>,
    pub polling_places: Vec<PlaceFigures>,
    /// Precincts by lag, the most behind first: where to send volunteers.
    pub precincts: Vec<PrecinctFigures>,
}

impl Dashboard {
    /// The figures of one polling place, if it has a universe.
    pub fn place(&self, code: &str) -> Option<&PlaceFigures> {
        self.polling_places.iter().find(|p| p.polling_place == code)
    }
}

#[derive(Default)]
struct Acc {
    universe: i64,
    voted: i64,
    by_hour: BTreeMap<usize, i64>,
}

impl Acc {
    fn figures(&self, curve: &ExpectedCurve, now: i64) -> Figures {
        let hours = curve.hour_of(now) + 1;
        let mut series = Vec::with_capacity(hours);
        let mut cum = 0;
        for h in 0..hours {
            cum += self.by_hour.get(&h).copied().unwrap_or(0);
            series.push(cum);
        }
        // Reports stamped after the curve's last hour count in its last hour.
        if let Some(last) = series.last_mut() {
            *last += self.by_hour.range(hours..).map(|(_, v)| *v).sum::<i64>();
        }
        let expected = (self.universe as f64 * curve.expected_pct(now) / 100.0).round() as i64;
        Figures {
            universe: self.universe,
            voted: self.voted,
            voted_pct: if self.universe == 0 {
                0.0
            } else {
                (self.voted as f64 * 1000.0 / self.universe as f64).round() / 10.0
            },
            expected,
            lag: expected - self.voted,
            series,
        }
    }
}

/// Folds the store's cells into the dashboard (pure).
pub fn dashboard(
    seq: i64,
    now: i64,
    curve: &ExpectedCurve,
    cells: &[Cell],
    hours: &[HourCell],
) -> Dashboard {
    let mut state = Acc::default();
    let mut counties: BTreeMap<&str, Acc> = BTreeMap::new();
    let mut places: BTreeMap<&str, Acc> = BTreeMap::new();
    let mut precincts: BTreeMap<(&str, &str, &str), Acc> = BTreeMap::new();
    for c in cells {
        for a in [
            &mut state,
            counties.entry(&c.county).or_default(),
            places.entry(&c.polling_place).or_default(),
            precincts
                .entry((&c.county, &c.precinct, &c.polling_place))
                .or_default(),
        ] {
            a.universe += c.universe;
            a.voted += c.voted;
        }
    }
    for h in hours {
        let hour = usize::try_from(h.hour.max(0)).unwrap_or(0).min(48);
        for a in [
            &mut state,
            counties.entry(&h.county).or_default(),
            places.entry(&h.polling_place).or_default(),
            precincts
                .entry((&h.county, &h.precinct, &h.polling_place))
                .or_default(),
        ] {
            *a.by_hour.entry(hour).or_default() += h.voted;
        }
    }
    let mut precincts: Vec<PrecinctFigures> = precincts
        .iter()
        .map(|((county, precinct, place), a)| PrecinctFigures {
            county: county.to_string(),
            precinct: precinct.to_string(),
            polling_place: place.to_string(),
            figures: a.figures(curve, now),
        })
        .collect();
    precincts.sort_by_key(|p| std::cmp::Reverse(p.figures.lag));
    Dashboard {
        seq,
        at: now,
        curve: curve.clone(),
        expected_pct: (curve.expected_pct(now) * 10.0).round() / 10.0,
        state: state.figures(curve, now),
        counties: counties
            .iter()
            .map(|(c, a)| CountyFigures {
                county: c.to_string(),
                figures: a.figures(curve, now),
            })
            .collect(),
        polling_places: places
            .iter()
            .map(|(p, a)| PlaceFigures {
                polling_place: p.to_string(),
                figures: a.figures(curve, now),
            })
            .collect(),
        precincts,
    }
}

/// The curve in force: the stored one, else a typical day opening at 06:00 UTC today.
pub async fn curve(store: &Store) -> Result<ExpectedCurve, StoreError> {
    if let Some(text) = store.turnout_setting(CURVE_KEY).await? {
        if let Ok(c) = serde_json::from_str::<ExpectedCurve>(&text) {
            return Ok(c);
        }
    }
    let now = now_ms();
    let day = now - now.rem_euclid(24 * HOUR_MS);
    Ok(ExpectedCurve::typical(day + 6 * HOUR_MS))
}

/// Stores the curve every node uses.
pub async fn set_curve(store: &Store, c: &ExpectedCurve) -> Result<(), String> {
    c.check()?;
    let text = serde_json::to_string(c).map_err(|e| e.to_string())?;
    store
        .set_turnout_setting(CURVE_KEY, &text)
        .await
        .map_err(|e| e.to_string())
}

/// Computes the dashboard now.
pub async fn compute(store: &Store) -> Result<Dashboard, StoreError> {
    let seq = store.turnout_clock().await?;
    let c = curve(store).await?;
    let (cells, hours) = store.turnout_cells(c.opens_at).await?;
    Ok(dashboard(seq, now_ms(), &c, &cells, &hours))
}

type Latest = Option<Arc<Dashboard>>;

/// One node's live figures, shared by every subscriber. Cheap to clone. The polling
/// task starts with the first subscriber and stops when the last one leaves.
#[derive(Clone)]
pub struct LiveTurnout {
    store: Store,
    /// The running task's channel, if one runs.
    slot: Arc<Mutex<Option<watch::Sender<Latest>>>>,
    /// Wakes the task at once after a report taken on this node.
    wake: Arc<Notify>,
}

impl std::fmt::Debug for LiveTurnout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveTurnout")
    }
}

impl LiveTurnout {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            slot: Arc::new(Mutex::new(None)),
            wake: Arc::new(Notify::new()),
        }
    }

    /// Says that this node just changed turnout: recompute without waiting for the poll.
    pub fn nudge(&self) {
        self.wake.notify_one();
    }

    /// A receiver of the latest figures (`None` until the first computation). Must be
    /// called inside the tokio runtime.
    pub fn subscribe(&self) -> watch::Receiver<Latest> {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = slot.as_ref().filter(|tx| !tx.is_closed()) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(None);
        *slot = Some(tx.clone());
        drop(slot);
        tokio::spawn(run(self.store.clone(), tx, self.wake.clone()));
        rx
    }
}

async fn run(store: Store, tx: watch::Sender<Latest>, wake: Arc<Notify>) {
    let mut last_seq = None;
    let mut last_at = tokio::time::Instant::now();
    // A nudge recomputes even when the clock has not moved yet: this node's group
    // commit moves it after the answers (see `crate::group`).
    let mut nudged = false;
    loop {
        if tx.receiver_count() == 0 {
            return;
        }
        match store.turnout_clock().await {
            Ok(seq) if nudged || Some(seq) != last_seq || last_at.elapsed() >= REFRESH => {
                match compute(&store).await {
                    Ok(d) => {
                        // The figures may be newer than `seq`; never older.
                        last_seq = Some(seq);
                        last_at = tokio::time::Instant::now();
                        tx.send_replace(Some(Arc::new(d)));
                        tokio::time::sleep(MIN_GAP).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "live turnout: computing the figures failed")
                    }
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "live turnout: reading the change clock failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => nudged = false,
            _ = wake.notified() => nudged = true,
            _ = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(c: &str, p: &str, pl: &str, u: i64, v: i64) -> Cell {
        Cell {
            county: c.into(),
            precinct: p.into(),
            polling_place: pl.into(),
            universe: u,
            voted: v,
        }
    }

    fn hour(c: &str, p: &str, pl: &str, h: i64, v: i64) -> HourCell {
        HourCell {
            county: c.into(),
            precinct: p.into(),
            polling_place: pl.into(),
            hour: h,
            voted: v,
        }
    }

    #[test]
    fn curve_checks_and_interpolates() {
        let c = ExpectedCurve {
            opens_at: 1_000,
            hourly_pct: vec![10.0, 30.0],
        };
        assert!(c.check().is_ok());
        assert_eq!(c.expected_pct(0), 0.0);
        assert!((c.expected_pct(1_000 + HOUR_MS / 2) - 5.0).abs() < 1e-9);
        assert!((c.expected_pct(1_000 + HOUR_MS * 3 / 2) - 20.0).abs() < 1e-9);
        assert_eq!(c.expected_pct(1_000 + HOUR_MS * 5), 30.0);
        assert_eq!(c.hour_of(1_000 + HOUR_MS * 5), 1);
        let bad = ExpectedCurve {
            opens_at: 1,
            hourly_pct: vec![20.0, 10.0],
        };
        assert!(bad.check().unwrap_err().contains("hourly_pct[1]"));
        assert!(ExpectedCurve {
            opens_at: 1,
            hourly_pct: vec![101.0]
        }
        .check()
        .is_err());
        assert!(ExpectedCurve::typical(5).check().is_ok());
    }

    #[test]
    fn folds_cells_into_every_level() {
        let c = ExpectedCurve {
            opens_at: 0,
            hourly_pct: vec![50.0, 100.0],
        };
        let now = HOUR_MS + HOUR_MS / 2; // hour 1, expected 75%
        let cells = [
            cell("A", "A1", "P1", 10, 2),
            cell("A", "A2", "P1", 10, 9),
            cell("B", "B1", "P2", 20, 4),
        ];
        let hours = [
            hour("A", "A1", "P1", 0, 2),
            hour("A", "A2", "P1", 0, 4),
            hour("A", "A2", "P1", 1, 5),
            hour("B", "B1", "P2", 7, 4),
        ];
        let d = dashboard(9, now, &c, &cells, &hours);
        assert_eq!(d.seq, 9);
        assert_eq!(d.state.universe, 40);
        assert_eq!(d.state.voted, 15);
        assert_eq!(d.state.expected, 30);
        assert_eq!(d.state.lag, 15);
        // Hour 7 is past the curve: it counts in the last hour.
        assert_eq!(d.state.series, vec![6, 15]);
        assert_eq!(d.counties.len(), 2);
        assert_eq!(d.counties[0].figures.voted, 11);
        assert_eq!(d.place("P1").unwrap().figures.series, vec![6, 11]);
        // The precinct furthest behind comes first.
        assert_eq!(d.precincts[0].precinct, "B1");
        assert_eq!(d.precincts[0].figures.lag, 15 - 4);
        assert_eq!(d.precincts.last().unwrap().precinct, "A2");
        assert_eq!(d.place("P1").unwrap().figures.voted_pct, 55.0);
    }
}
