//! The report: Markdown for the repository or the incident doc, a self-contained HTML
//! page with inline SVG charts (fault windows shaded), and one JSON line.

use super::load::{Outcome, Sample, Workload};
use super::timeline::Window;
use super::verify::{quantile, Verdict};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Per-second figures.
pub struct Series {
    pub seconds: usize,
    /// Successes per second per workload.
    pub ok: BTreeMap<Workload, Vec<f64>>,
    pub errors: Vec<f64>,
    pub shed: Vec<f64>,
    pub not_sent: Vec<f64>,
    /// p50, p95, p99 of all answered requests per second, in ms.
    pub p50: Vec<f64>,
    pub p95: Vec<f64>,
    pub p99: Vec<f64>,
    /// p99 of donations and report batches only (what the invariant judges).
    pub p99_writes: Vec<f64>,
}

pub fn series(samples: &[Sample], duration_s: f64) -> Series {
    let n = duration_s.ceil().max(1.0) as usize;
    let mut ok: BTreeMap<Workload, Vec<f64>> =
        Workload::ALL.iter().map(|w| (*w, vec![0.0; n])).collect();
    let (mut errors, mut shed, mut not_sent) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    let mut lat: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut writes: Vec<Vec<f64>> = vec![Vec::new(); n];
    for s in samples {
        let i = ((s.at_ms / 1000) as usize).min(n - 1);
        match s.outcome {
            Outcome::Ok => {
                if let Some(v) = ok.get_mut(&s.workload) {
                    v[i] += 1.0;
                }
            }
            Outcome::Error => errors[i] += 1.0,
            Outcome::Shed => shed[i] += 1.0,
            Outcome::NotSent | Outcome::Exhausted => not_sent[i] += 1.0,
        }
        if !matches!(s.outcome, Outcome::NotSent | Outcome::Exhausted) {
            lat[i].push(s.latency_ms);
            if matches!(s.workload, Workload::Donation | Workload::ReportBatch) {
                writes[i].push(s.latency_ms);
            }
        }
    }
    let mut p50 = Vec::with_capacity(n);
    let mut p95 = Vec::with_capacity(n);
    let mut p99 = Vec::with_capacity(n);
    for l in &mut lat {
        p50.push(quantile(l, 0.50));
        p95.push(quantile(l, 0.95));
        p99.push(quantile(l, 0.99));
    }
    let p99_writes = writes.iter_mut().map(|w| quantile(w, 0.99)).collect();
    Series {
        p99_writes,
        seconds: n,
        ok,
        errors,
        shed,
        not_sent,
        p50,
        p95,
        p99,
    }
}

/// Per-workload totals: (sent, ok, errors, shed, p50, p99, max).
fn workload_rows(samples: &[Sample]) -> Vec<(Workload, [f64; 7])> {
    Workload::ALL
        .iter()
        .map(|w| {
            let mine: Vec<&Sample> = samples.iter().filter(|s| s.workload == *w).collect();
            let mut lat: Vec<f64> = mine
                .iter()
                .filter(|s| !matches!(s.outcome, Outcome::NotSent | Outcome::Exhausted))
                .map(|s| s.latency_ms)
                .collect();
            let count = |o: Outcome| mine.iter().filter(|s| s.outcome == o).count() as f64;
            let max = lat.iter().cloned().fold(0.0, f64::max);
            (
                *w,
                [
                    mine.len() as f64,
                    count(Outcome::Ok),
                    count(Outcome::Error),
                    count(Outcome::Shed),
                    quantile(&mut lat, 0.50),
                    quantile(&mut lat, 0.99),
                    max,
                ],
            )
        })
        .filter(|(_, r)| r[0] > 0.0)
        .collect()
}

/// The headline figures.
pub struct Headline {
    pub peak_rps: f64,
    pub p99_ms: f64,
}

/// The most successes in one second among the seconds whose p99 (all answered
/// requests) stayed within `limit_ms`: the sustained capacity a run demonstrated.
pub fn capacity_rps(s: &Series, limit_ms: f64) -> f64 {
    (0..s.seconds)
        .filter(|i| s.p99[*i] <= limit_ms)
        .map(|i| s.ok.values().map(|v| v[i]).sum::<f64>())
        .fold(0.0, f64::max)
}

pub fn headline(samples: &[Sample], s: &Series) -> Headline {
    let peak_rps = (0..s.seconds)
        .map(|i| s.ok.values().map(|v| v[i]).sum::<f64>())
        .fold(0.0, f64::max);
    let mut lat: Vec<f64> = samples
        .iter()
        .filter(|x| matches!(x.workload, Workload::Donation | Workload::ReportBatch))
        .filter(|x| !matches!(x.outcome, Outcome::NotSent | Outcome::Exhausted))
        .map(|x| x.latency_ms)
        .collect();
    Headline {
        peak_rps,
        p99_ms: quantile(&mut lat, 0.99),
    }
}

pub fn json_line(name: &str, h: &Headline, v: &Verdict) -> serde_json::Value {
    serde_json::json!({
        "bench": "gameday",
        "scenario": name,
        "peak_rps": h.peak_rps.round(),
        "p99_ms": (h.p99_ms * 10.0).round() / 10.0,
        "lost": v.lost,
        "double_charges": v.double_charges,
        "duplicate_reports": v.duplicate_reports,
        "blast_duplicates": v.blast_duplicates,
        "invariants_failed": v.failed(),
    })
}

/// What the report says about the run.
pub struct Context<'a> {
    pub name: &'a str,
    /// `verify.p99_limit_ms`.
    pub limit_ms: f64,
    pub description: &'a str,
    pub nodes: usize,
    pub duration_s: f64,
    pub samples: &'a [Sample],
    pub windows: &'a [Window],
    pub notes: &'a [String],
    pub verdict: &'a Verdict,
}

fn verdict_word(pass: bool) -> &'static str {
    if pass {
        "PASS"
    } else {
        "FAIL"
    }
}

pub fn markdown(c: &Context, s: &Series) -> String {
    let h = headline(c.samples, s);
    let v = c.verdict;
    let mut m = String::new();
    let _ = writeln!(m, "# Game day: {}\n", c.name);
    if !c.description.is_empty() {
        let _ = writeln!(m, "{}\n", c.description.trim());
    }
    let _ = writeln!(
        m,
        "**Verdict: {}** ({} of {} invariants failed). {} nodes, {:.0} s of load, peak {:.0} successful requests/s, p99 of donations and reports {:.0} ms.\n",
        verdict_word(v.failed() == 0),
        v.failed(),
        v.invariants.len(),
        c.nodes,
        c.duration_s,
        h.peak_rps,
        h.p99_ms
    );
    let _ = writeln!(
        m,
        "## Invariants\n\n| | Invariant | Evidence |\n|---|---|---|"
    );
    for i in &v.invariants {
        let _ = writeln!(
            m,
            "| {} | {} | {} |",
            verdict_word(i.pass),
            i.name,
            i.detail
        );
    }
    let _ = writeln!(
        m,
        "\n## Faults\n\n| Fault | From (s) | To (s) | p99 in window (ms) | First success after (s) | First clean second after (s) |\n|---|---|---|---|---|---|"
    );
    for r in &v.recoveries {
        let _ = writeln!(
            m,
            "| {} | {:.1} | {:.1} | {:.0} | {} | {} |",
            r.fault,
            r.start_s,
            r.end_s,
            r.p99_in_window_ms,
            r.first_success_s
                .map_or("none".to_string(), |x| format!("{x:.2}")),
            r.recovered_after_s
                .map_or("not within the run".to_string(), |x| format!("{x:.1}"))
        );
    }
    let _ = writeln!(
        m,
        "\n## Workloads\n\nLatency is measured from each request's scheduled arrival time (open model), so queueing is included.\n\n| Workload | Arrivals | OK | Errors | Shed (503) | p50 (ms) | p99 (ms) | max (ms) |\n|---|---|---|---|---|---|---|---|"
    );
    for (w, r) in workload_rows(c.samples) {
        let _ = writeln!(
            m,
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            w.as_str(),
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            r[5],
            r[6]
        );
    }
    let not_sent: f64 = s.not_sent.iter().sum();
    if not_sent > 0.0 {
        let _ = writeln!(
            m,
            "\n{not_sent:.0} arrivals were not sent (the generator's in-flight cap, or no voter left to report)."
        );
    }
    let _ = writeln!(
        m,
        "\nAcknowledged: {} donations, {} turnout reports. Blast duplicates: {} (bound {}).",
        v.acked_donations, v.acked_reports, v.blast_duplicates, v.blast_in_flight_bound
    );
    let _ = writeln!(
        m,
        "\nCapacity shown: {:.0} successful requests/s in the best second whose p99 stayed within {:.0} ms ({:.0} per node).",
        capacity_rps(s, c.limit_ms),
        c.limit_ms,
        capacity_rps(s, c.limit_ms) / c.nodes.max(1) as f64
    );
    if !c.notes.is_empty() {
        let _ = writeln!(m, "\n## Timeline\n");
        for n in c.notes {
            let _ = writeln!(m, "- {n}");
        }
    }
    m
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A line chart with the fault windows shaded.
fn chart(
    title: &str,
    unit: &str,
    lines: &[(&str, &str, &[f64])],
    seconds: usize,
    windows: &[Window],
) -> String {
    let (w, h, l, r, t, b) = (900.0, 240.0, 60.0, 190.0, 28.0, 30.0);
    let pw = w - l - r;
    let ph = h - t - b;
    let ymax = lines
        .iter()
        .flat_map(|(_, _, v)| v.iter().cloned())
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.1;
    let xs = |i: f64| l + pw * i / (seconds.max(1) as f64);
    let ys = |y: f64| t + ph - ph * y / ymax;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11"><text x="{l}" y="16" font-size="13" font-weight="bold">{}</text>"#,
        esc(title)
    );
    for win in windows {
        let x0 = xs(win.start);
        let x1 = xs(win.end.min(seconds as f64)).max(x0 + 1.0);
        let _ = write!(
            svg,
            r##"<rect x="{x0:.1}" y="{t}" width="{:.1}" height="{ph}" fill="#f4a261" fill-opacity="0.25"><title>{}</title></rect>"##,
            x1 - x0,
            esc(&win.label)
        );
        let _ = write!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" font-size="9" fill="#9c4a12">{}</text>"##,
            x0 + 2.0,
            t + 9.0,
            esc(win.label.split(' ').next().unwrap_or_default())
        );
    }
    let digits = if ymax < 10.0 { 1 } else { 0 };
    for k in 0..=4 {
        let y = ymax * k as f64 / 4.0;
        let _ = write!(
            svg,
            r##"<line x1="{l}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{y:.digits$}</text>"##,
            l + pw,
            ys(y),
            ys(y),
            l - 4.0,
            ys(y) + 4.0
        );
    }
    let step = (seconds / 10).max(1);
    for i in (0..=seconds).step_by(step) {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{i}s</text>"#,
            xs(i as f64),
            h - 10.0
        );
    }
    let _ = write!(
        svg,
        r#"<text x="12" y="{:.1}" transform="rotate(-90 12 {:.1})" text-anchor="middle">{}</text>"#,
        t + ph / 2.0,
        t + ph / 2.0,
        esc(unit)
    );
    for (k, (name, color, v)) in lines.iter().enumerate() {
        let pts: Vec<String> = v
            .iter()
            .enumerate()
            .map(|(i, y)| format!("{:.1},{:.1}", xs(i as f64 + 0.5), ys(*y)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{}"/><rect x="{:.1}" y="{:.1}" width="10" height="10" fill="{color}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            pts.join(" "),
            l + pw + 12.0,
            t + 14.0 * k as f64,
            l + pw + 26.0,
            t + 9.0 + 14.0 * k as f64,
            esc(name)
        );
    }
    svg.push_str("</svg>");
    svg
}

pub fn html(c: &Context, s: &Series, markdown_body: &str) -> String {
    let colors = ["#264653", "#2a9d8f", "#e76f51", "#8d5fd3"];
    let ok: Vec<(&str, &str, &[f64])> =
        s.ok.iter()
            .zip(colors)
            .map(|((w, v), c)| (w.as_str(), c, v.as_slice()))
            .collect();
    let charts = [
        chart(
            "Latency from scheduled arrival (all workloads)",
            "ms",
            &[
                ("p50", "#2a9d8f", &s.p50),
                ("p95", "#e9c46a", &s.p95),
                ("p99", "#e76f51", &s.p99),
                ("p99 donations+reports", "#6a040f", &s.p99_writes),
            ],
            s.seconds,
            c.windows,
        ),
        chart(
            "Throughput (successes per second)",
            "req/s",
            &ok,
            s.seconds,
            c.windows,
        ),
        chart(
            "Errors per second",
            "req/s",
            &[
                ("errors", "#d62828", &s.errors),
                ("shed (503)", "#f77f00", &s.shed),
                ("not sent", "#999999", &s.not_sent),
            ],
            s.seconds,
            c.windows,
        ),
    ];
    let v = c.verdict;
    let mut rows = String::new();
    for i in &v.invariants {
        let _ = write!(
            rows,
            r#"<tr><td class="{}">{}</td><td>{}</td><td>{}</td></tr>"#,
            if i.pass { "pass" } else { "fail" },
            verdict_word(i.pass),
            esc(i.name),
            esc(&i.detail)
        );
    }
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Game day: {name}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}.pass{{background:#d8f3dc;font-weight:bold}}.fail{{background:#ffccd5;font-weight:bold}}.verdict{{font-size:1.4em;padding:.4em .8em;display:inline-block}}pre{{background:#f6f6f6;padding:1em;white-space:pre-wrap}}</style></head><body>
<h1>Game day: {name}</h1><p class="verdict {cls}">{word}: {failed} of {total} invariants failed</p>
<h2>Invariants</h2><table><tr><th></th><th>Invariant</th><th>Evidence</th></tr>{rows}</table>
<h2>Charts</h2><p>Shaded: fault windows (hover for the fault).</p>{charts}
<h2>Full report</h2><pre>{md}</pre></body></html>"#,
        name = esc(c.name),
        cls = if v.failed() == 0 { "pass" } else { "fail" },
        word = verdict_word(v.failed() == 0),
        failed = v.failed(),
        total = v.invariants.len(),
        charts = charts.join("\n"),
        md = esc(markdown_body),
    )
}
