//! Federal contribution limits, as a table and a pure decision.
//!
//! A donor's gifts are summed per election (for the limit), per two-year cycle (for
//! itemization) and per calendar year. [`allocate`] takes the donor's current totals
//! and a gift, and says which election(s) the gift is designated to, or why it cannot
//! be taken. The store calls it inside the transaction that holds the donor's lock, so
//! two simultaneous gifts see each other's totals.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The limits in force for one cycle. Limits are re-indexed every odd year, so they
/// live in configuration, not code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitTable {
    /// The cycle, named by its election year (`2026`).
    pub cycle: i32,
    /// The most one individual may give per election, in cents.
    pub per_election_cents: i64,
    /// The elections of the cycle, in order (`P2026`, `G2026`).
    pub elections: Vec<String>,
    /// The election a gift is designated to unless said otherwise.
    pub current_election: String,
    /// The cycle aggregate above which a contribution is itemized (FEC: $200).
    pub itemize_above_cents: i64,
    /// What to do with the part of a gift over the current election's limit.
    pub excess: ExcessPolicy,
}

impl Default for LimitTable {
    /// 2025-26: $3,500 per election for an individual to a candidate committee.
    fn default() -> Self {
        Self {
            cycle: 2026,
            per_election_cents: 350_000,
            elections: vec!["P2026".into(), "G2026".into()],
            current_election: "P2026".into(),
            itemize_above_cents: 20_000,
            excess: ExcessPolicy::Refuse,
        }
    }
}

/// What to do with a gift that would take the donor over the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExcessPolicy {
    /// Refuse the whole gift with a message saying how much room is left.
    Refuse,
    /// Designate the excess to the next election of the cycle, if it has room there;
    /// refuse only what fits nowhere.
    DesignateToNextElection,
}

/// The period keys a donor's totals are kept under.
pub fn election_period(election: &str) -> String {
    format!("E:{election}")
}
/// The cycle period key.
pub fn cycle_period(cycle: i32) -> String {
    format!("C:{cycle}")
}
/// The calendar-year period key.
pub fn year_period(year: i32) -> String {
    format!("Y:{year}")
}

/// A gift's designation: which elections get how many cents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// `(election, cents)` in order; the cents add up to the gift.
    pub parts: Vec<(String, i64)>,
    /// The donor's cycle aggregate exceeds the itemization threshold with this gift.
    pub itemized: bool,
}

/// Why a gift was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct LimitRefusal {
    /// For the donor: how much room is left and what the limit is.
    pub message: String,
    /// The most the donor can still give now, in cents.
    pub room_cents: i64,
}

/// Designates `amount` given the donor's current totals by period key (missing = 0).
pub fn allocate(
    table: &LimitTable,
    totals: &BTreeMap<String, i64>,
    amount: i64,
) -> Result<Allocation, LimitRefusal> {
    let total = |k: &str| totals.get(k).copied().unwrap_or(0);
    let start = table
        .elections
        .iter()
        .position(|e| *e == table.current_election)
        .unwrap_or(0);
    let candidates: Vec<&String> = match table.excess {
        ExcessPolicy::Refuse => table.elections.iter().skip(start).take(1).collect(),
        ExcessPolicy::DesignateToNextElection => table.elections.iter().skip(start).collect(),
    };
    let room_of = |e: &str| (table.per_election_cents - total(&election_period(e))).max(0);
    let room: i64 = candidates.iter().map(|e| room_of(e)).sum();
    if amount > room {
        let limit = crate::money::format_dollars(table.per_election_cents);
        let message = if room == 0 {
            format!("You have reached the legal limit of {limit} per election. Thank you for your support!")
        } else {
            format!(
                "This gift would go over the legal limit of {limit} per election. You can give up to {} more.",
                crate::money::format_dollars(room)
            )
        };
        return Err(LimitRefusal {
            message,
            room_cents: room,
        });
    }
    let mut left = amount;
    let mut parts = Vec::new();
    for e in candidates {
        if left == 0 {
            break;
        }
        let take = left.min(room_of(e));
        if take > 0 {
            parts.push(((*e).clone(), take));
            left -= take;
        }
    }
    let itemized = total(&cycle_period(table.cycle)) + amount > table.itemize_above_cents;
    Ok(Allocation { parts, itemized })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn a_gift_within_the_limit_goes_to_the_current_election() {
        let t = LimitTable::default();
        let a = allocate(&t, &totals(&[]), 5_500).unwrap();
        assert_eq!(a.parts, vec![("P2026".to_string(), 5_500)]);
        assert!(!a.itemized);
    }

    #[test]
    fn over_the_limit_is_refused_with_the_room_left() {
        let t = LimitTable::default();
        let e = allocate(&t, &totals(&[("E:P2026", 300_000)]), 60_000).unwrap_err();
        assert_eq!(e.room_cents, 50_000);
        assert!(e.message.contains("$500.00"), "{}", e.message);
        assert!(e.message.contains("$3,500.00"), "{}", e.message);
        // Exactly the room left is fine.
        assert!(allocate(&t, &totals(&[("E:P2026", 300_000)]), 50_000).is_ok());
    }

    #[test]
    fn excess_can_be_designated_to_the_next_election() {
        let t = LimitTable {
            excess: ExcessPolicy::DesignateToNextElection,
            ..LimitTable::default()
        };
        let a = allocate(&t, &totals(&[("E:P2026", 300_000)]), 100_000).unwrap();
        assert_eq!(
            a.parts,
            vec![("P2026".to_string(), 50_000), ("G2026".to_string(), 50_000)]
        );
        let e = allocate(
            &t,
            &totals(&[("E:P2026", 350_000), ("E:G2026", 340_000)]),
            20_000,
        )
        .unwrap_err();
        assert_eq!(e.room_cents, 10_000);
    }

    #[test]
    fn itemized_once_the_cycle_aggregate_passes_200_dollars() {
        let t = LimitTable::default();
        assert!(
            !allocate(&t, &totals(&[("C:2026", 15_000)]), 5_000)
                .unwrap()
                .itemized
        );
        assert!(
            allocate(&t, &totals(&[("C:2026", 15_000)]), 5_001)
                .unwrap()
                .itemized
        );
    }
}
