//! [`IngestMemo`]: what one node's ingest has learned from the database that can never
//! change, so that a phone's retry of a batch already stored is answered without a
//! transaction.
//!
//! Two kinds of facts, each remembered only once the database established it:
//! - a universe row (voter code and person -> polling place, county, precinct): rows
//!   are added to the GOTV universe but never updated or deleted;
//! - a stored report id and the person it is about: a report row is never deleted and
//!   its person never changes (an undo only marks it undone), and the id is
//!   remembered only after the transaction that stored it (or read it) committed.
//!
//! So the memo only ever says what the database would say: a report id it knows is a
//! duplicate (or reused for another voter), and the `UNIQUE` constraint already
//! decided it. Anything it does not know (a new id, an undo, a voter not seen yet) goes
//! to the database. Unknown voters are never remembered (the universe may grow). Each
//! map holds at most two generations of [`GENERATION`] entries: when the young one
//! fills it becomes the old one and the old one is dropped. Nothing here is state: a
//! node that restarts, or another node, asks the database and gets the same answers.

use crate::turnout::{Outcome, ReportGroup, Target};
use narwhal_domain::PersonId;
use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

/// Entries per generation of each map (two generations at most).
pub const GENERATION: usize = 200_000;

/// A voter's tally cell: (county, precinct, polling place).
pub(crate) type CellKey = Arc<(String, String, String)>;

struct Recent<K, V> {
    young: HashMap<K, V>,
    old: HashMap<K, V>,
}

impl<K: Hash + Eq, V> Default for Recent<K, V> {
    fn default() -> Self {
        Self {
            young: HashMap::new(),
            old: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq, V> Recent<K, V> {
    fn get<Q>(&self, k: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.young.get(k).or_else(|| self.old.get(k))
    }

    fn insert(&mut self, k: K, v: V) {
        if self.young.len() >= GENERATION {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(k, v);
    }
}

/// One node's memory of universe rows and stored report ids (see the module doc).
/// Shared by the node's group commit; cheap to clone.
#[derive(Clone, Default)]
pub struct IngestMemo {
    universe: Arc<Mutex<Recent<Target, (PersonId, CellKey)>>>,
    reports: Arc<Mutex<Recent<String, i64>>>,
}

impl std::fmt::Debug for IngestMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IngestMemo")
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl IngestMemo {
    /// The outcomes of a batch, when memory alone decides every item: no undo, every
    /// voter known, and every item either for another polling place or a report id
    /// known to be stored. `None` when the database must decide (nothing is answered
    /// from memory for such a batch).
    pub fn outcomes(&self, g: &ReportGroup<'_>) -> Option<Vec<Outcome>> {
        use crate::turnout::Rejection;
        if g.items.iter().any(|i| i.undo) {
            return None;
        }
        let universe = lock(&self.universe);
        let reports = lock(&self.reports);
        let mut out: Vec<Option<Outcome>> = vec![None; g.items.len()];
        let mut seen: HashSet<&str> = HashSet::with_capacity(g.items.len());
        // The same checks in the same order as the ingest's steps 1 to 3.
        for (i, item) in g.items.iter().enumerate() {
            let (pid, cell) = universe.get(&item.target)?;
            if g.place.is_some_and(|w| w != cell.2) {
                out[i] = Some(Outcome::Rejected(Rejection::OtherPollingPlace));
                continue;
            }
            if !seen.insert(item.report_id.as_str()) {
                continue;
            }
            let owner = reports.get(item.report_id.as_str())?;
            out[i] = Some(if *owner == pid.0 {
                Outcome::Duplicate(*pid)
            } else {
                Outcome::Rejected(Rejection::ReportIdReused)
            });
        }
        crate::turnout::resolve_repeats(g.items, out).ok()
    }

    /// A remembered universe row.
    pub(crate) fn voter(&self, t: &Target) -> Option<(PersonId, CellKey)> {
        lock(&self.universe).get(t).cloned()
    }

    /// Remembers universe rows read from the database: `(person, code, cell)`.
    pub(crate) fn learn_voters(&self, rows: impl IntoIterator<Item = (i64, i64, CellKey)>) {
        let mut u = lock(&self.universe);
        for (pid, code, cell) in rows {
            u.insert(Target::Code(code), (PersonId(pid), cell.clone()));
            u.insert(Target::Person(PersonId(pid)), (PersonId(pid), cell));
        }
    }

    /// Remembers report ids stored in the database, with their person; call only
    /// after the transaction that stored or read them committed.
    pub(crate) fn learn_reports(&self, rows: impl IntoIterator<Item = (String, i64)>) {
        let mut r = lock(&self.reports);
        for (id, pid) in rows {
            r.insert(id, pid);
        }
    }
}
