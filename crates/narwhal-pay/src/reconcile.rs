//! Reconciliation: our donations against each processor's own records
//! (`narwhal donations reconcile`).
//!
//! Every processor payment created since a time is classified, and so is every
//! donation of ours that the processors should know:
//!
//! | class | meaning |
//! | --- | --- |
//! | `match` | the payment and our donation agree: charged or not, amount and refunds |
//! | `mismatch` | both exist but the amount, the refunded amount or the state differ |
//! | `missing` | at the processor and not with us, or charged with us and absent there |
//! | `duplicate` | more than one charged payment for one donation (each is listed) |
//!
//! A payment is tied to its donation by the processor's id (`processor_ref`), else by
//! our attempt key in its metadata (`don_...-N`, whose prefix is the donation). A
//! processor that cannot be listed is reported in `errors`, and its donations are not
//! called missing. The run and its items are stored for the console.

use crate::processor::{Processor, ProcessorPayment};
use crate::service::{outcome_of, Outcome};
use narwhal_store::donations::DonationRow;
use narwhal_store::reconciliations::{ReconItem, ReconRun};
use narwhal_store::{now_ms, Store, StoreError};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// The classes, as stored and printed.
pub const CLASSES: [&str; 4] = ["match", "mismatch", "missing", "duplicate"];

/// What a run found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Counts and errors.
    pub run: ReconRun,
    /// Every classified payment or donation.
    pub items: Vec<ReconItem>,
}

/// The most donations a run reads (the CLI's window should stay well under it).
const MAX_DONATIONS: i64 = 5_000_000;

/// The donation a payment belongs to, by its id or our attempt key.
fn public_id_of_attempt(key: &str) -> Option<&str> {
    let (prefix, seq) = key.rsplit_once('-')?;
    (prefix.starts_with("don_") && seq.bytes().all(|b| b.is_ascii_digit())).then_some(prefix)
}

/// Whether the donation records this very payment as its charge.
fn is_ours(proc: &str, p: &ProcessorPayment, d: &DonationRow) -> bool {
    d.processor.as_deref() == Some(proc)
        && d.processor_ref.as_deref() == Some(p.processor_ref.as_str())
}

fn net_ours(d: &DonationRow) -> i64 {
    d.amount_cents - d.refunded_cents
}

/// Compares one payment with its donation: `None` when they agree, else why not.
fn difference(proc: &str, p: &ProcessorPayment, d: &DonationRow) -> Option<String> {
    let they_charged = p.status == "succeeded";
    let we_charged = outcome_of(&d.state) == Outcome::Succeeded;
    if they_charged != we_charged {
        return Some(format!(
            "the processor says {} and we say {}",
            p.status, d.state
        ));
    }
    if !they_charged {
        return None;
    }
    if !is_ours(proc, p, d) {
        return Some("our donation names another processor payment".into());
    }
    if p.amount != d.amount_cents {
        return Some(format!(
            "amount {} at the processor, {} with us",
            p.amount, d.amount_cents
        ));
    }
    if p.refunded != d.refunded_cents {
        return Some(format!(
            "refunded {} at the processor, {} with us",
            p.refunded, d.refunded_cents
        ));
    }
    None
}

fn item(
    class: &str,
    processor: &str,
    p: Option<&ProcessorPayment>,
    d: Option<&DonationRow>,
    detail: impl Into<String>,
) -> ReconItem {
    ReconItem {
        class: class.to_string(),
        processor: processor.to_string(),
        processor_ref: p.map(|p| p.processor_ref.clone()),
        donation: d.map(|d| d.public_id.clone()),
        our_cents: d.map(net_ours),
        their_cents: p.map(|p| p.amount - p.refunded),
        our_state: d.map(|d| d.state.clone()),
        their_status: p.map(|p| p.status.clone()),
        detail: detail.into(),
    }
}

/// Compares payments created at or after `since_secs` at each processor with our
/// donations, stores the run and returns it.
pub async fn reconcile(
    store: &Store,
    processors: &[Arc<dyn Processor>],
    since_secs: i64,
) -> Result<Report, StoreError> {
    let started_at = now_ms();
    let since_ms = since_secs.saturating_mul(1000);
    let ours = store.donations_since(since_ms, MAX_DONATIONS).await?;
    // Payment ids are unique per processor only (two vendors may both say `pi_1`).
    let mut by_ref: HashMap<(&str, &str), &DonationRow> = HashMap::new();
    let mut by_public: HashMap<&str, &DonationRow> = HashMap::new();
    for d in &ours {
        if let (Some(p), Some(r)) = (&d.processor, &d.processor_ref) {
            by_ref.insert((p.as_str(), r.as_str()), d);
        }
        by_public.insert(d.public_id.as_str(), d);
    }
    let mut errors = Vec::new();
    let mut listed: Vec<String> = Vec::new();
    // (processor, payment, donation public id if known)
    let mut payments: Vec<(String, ProcessorPayment, Option<String>)> = Vec::new();
    // Donations found only through the database (created before `since`).
    let mut older: HashMap<String, DonationRow> = HashMap::new();
    for proc in processors {
        match proc.list_payments(since_secs).await {
            Ok(list) => {
                listed.push(proc.name().to_string());
                for p in list {
                    let mut public = by_ref
                        .get(&(proc.name(), p.processor_ref.as_str()))
                        .map(|d| d.public_id.clone());
                    if public.is_none() {
                        if let Some(pid) = p.attempt_key.as_deref().and_then(public_id_of_attempt) {
                            if by_public.contains_key(pid) {
                                public = Some(pid.to_string());
                            } else if let Some(d) = store.donation_by_public_id(pid).await? {
                                public = Some(d.public_id.clone());
                                older.insert(d.public_id.clone(), d);
                            }
                        }
                    }
                    if public.is_none() {
                        let found = store.donation_by_processor_ref(&p.processor_ref).await?;
                        if let Some(d) =
                            found.filter(|d| d.processor.as_deref() == Some(proc.name()))
                        {
                            public = Some(d.public_id.clone());
                            older.insert(d.public_id.clone(), d);
                        }
                    }
                    payments.push((proc.name().to_string(), p, public));
                }
            }
            Err(e) => errors.push(format!("{}: {e}", proc.name())),
        }
    }
    let donation = |public: &str| -> Option<&DonationRow> {
        by_public.get(public).copied().or_else(|| older.get(public))
    };
    // Charged payments per donation, across processors.
    let mut charged: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, p, public) in &payments {
        if let (Some(public), "succeeded") = (public.as_deref(), p.status.as_str()) {
            *charged.entry(public).or_default() += 1;
        }
    }
    let mut items = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    for (proc, p, public) in &payments {
        let d = public.as_deref().and_then(donation);
        let Some(d) = d else {
            let detail = if p.status == "succeeded" {
                "charged at the processor; no donation of ours"
            } else {
                "at the processor (not charged); no donation of ours"
            };
            items.push(item("missing", proc, Some(p), None, detail));
            continue;
        };
        seen.insert(d.public_id.as_str());
        if p.status == "succeeded" && charged.get(d.public_id.as_str()).copied().unwrap_or(0) > 1 {
            items.push(item(
                "duplicate",
                proc,
                Some(p),
                Some(d),
                "one of several charged payments for this donation",
            ));
            continue;
        }
        // A failed try of a donation that charged elsewhere (a failover) agrees.
        if p.status != "succeeded"
            && outcome_of(&d.state) == Outcome::Succeeded
            && !is_ours(proc, p, d)
        {
            items.push(item("match", proc, Some(p), Some(d), "an uncharged try"));
            continue;
        }
        match difference(proc, p, d) {
            None => items.push(item("match", proc, Some(p), Some(d), "")),
            Some(why) => items.push(item("mismatch", proc, Some(p), Some(d), why)),
        }
    }
    for d in &ours {
        let Some(proc) = d.processor.as_deref() else {
            continue;
        };
        if outcome_of(&d.state) != Outcome::Succeeded
            || seen.contains(d.public_id.as_str())
            || !listed.iter().any(|l| l == proc)
        {
            continue;
        }
        items.push(item(
            "missing",
            proc,
            None,
            Some(d),
            "charged with us; the processor has no such payment",
        ));
    }
    let count = |class: &str| {
        i64::try_from(items.iter().filter(|i| i.class == class).count()).unwrap_or(i64::MAX)
    };
    let mut run = ReconRun {
        id: 0,
        since_ms,
        processors: processors.iter().map(|p| p.name().to_string()).collect(),
        matched: count("match"),
        mismatched: count("mismatch"),
        missing: count("missing"),
        duplicate: count("duplicate"),
        errors,
        started_at,
        finished_at: now_ms(),
    };
    run.id = store.save_reconciliation(&run, &items).await?;
    Ok(Report { run, items })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_keys_name_their_donation() {
        assert_eq!(public_id_of_attempt("don_ab12-3"), Some("don_ab12"));
        assert_eq!(public_id_of_attempt("don_ab12-x"), None);
        assert_eq!(public_id_of_attempt("other-1"), None);
    }
}
