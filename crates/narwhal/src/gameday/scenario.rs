//! Scenario files: what load to offer, which faults to inject when, and the limits
//! the verdict is judged by. Unknown keys and impossible values are refused with the
//! line they sit on.

use serde::Deserialize;
use std::time::Duration;

/// A parsed and checked scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Default: the file's stem.
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// How long load is offered.
    pub duration: Span,
    /// `narwhal serve` processes in the local deployment.
    #[serde(default = "default_nodes")]
    pub nodes: usize,
    /// An existing deployment instead of a local one.
    #[serde(default)]
    pub target: Option<Target>,
    pub load: Load,
    #[serde(default)]
    pub blast: Option<BlastPlan>,
    #[serde(default)]
    pub faults: Vec<FaultPlan>,
    #[serde(default)]
    pub verify: VerifyLimits,
}

fn default_nodes() -> usize {
    3
}

/// `[target]`: an existing deployment.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// The nodes' base URLs (`http://10.0.0.5:8080`).
    pub urls: Vec<String>,
    /// Its database, for setup (tokens, watchers) and verification.
    pub database: String,
}

/// `[load]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Load {
    /// Relative weights of the workloads.
    pub weights: Weights,
    /// The arrival rate over time: linear between stages, held after the last.
    pub stages: Vec<Stage>,
    /// Requests outstanding at most; arrivals beyond it are counted as shed by the
    /// client (so an overloaded generator shows up instead of hiding latency).
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// Supporters in the GOTV universe (reports draw from them).
    #[serde(default = "default_voters")]
    pub voters: i64,
    /// Polling places (one watcher each).
    #[serde(default = "default_places")]
    pub places: i64,
    /// Reports per watcher batch.
    #[serde(default = "default_batch")]
    pub report_batch: usize,
    /// The fake processors' answer time.
    #[serde(default = "default_processor_latency")]
    pub processor_latency: Span,
    /// Staff dashboards holding the live turnout stream (`/api/v1/turnout/live`)
    /// for the whole run, reconnecting to another node when dropped.
    #[serde(default)]
    pub dashboards: usize,
}

fn default_in_flight() -> usize {
    2000
}
fn default_voters() -> i64 {
    30_000
}
fn default_places() -> i64 {
    40
}
fn default_batch() -> usize {
    10
}
fn default_processor_latency() -> Span {
    Span(Duration::from_millis(50))
}

/// `[load.weights]`: all default to 0.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Weights {
    #[serde(default)]
    pub donate_page: u32,
    #[serde(default)]
    pub donation: u32,
    #[serde(default)]
    pub report_batch: u32,
    #[serde(default)]
    pub people_read: u32,
}

/// `[[load.stages]]`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    pub at: Span,
    /// Arrivals per second.
    pub rate: f64,
}

/// `[blast]`: an email blast sent in the background through the fake SES.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlastPlan {
    pub recipients: i64,
    /// The fake account's send rate (messages per second), also the nodes' throttle.
    #[serde(default = "default_blast_rate")]
    pub rate: u32,
    /// When it is scheduled.
    #[serde(default)]
    pub at: Span,
    /// Jobs (nodes that may send at once).
    #[serde(default = "default_blast_jobs")]
    pub jobs: u32,
}

fn default_blast_rate() -> u32 {
    500
}
fn default_blast_jobs() -> u32 {
    3
}

/// `[[faults]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultPlan {
    pub at: Span,
    pub kind: FaultKind,
    /// How long it lasts (for `node_kill`: until the restart).
    #[serde(rename = "for", default)]
    pub lasts: Span,
    /// Processor faults: `primary` (default), `backup` or `both`.
    #[serde(default)]
    pub processor: Option<String>,
    /// `node_kill`: the node's index (0-based, default 0).
    #[serde(default)]
    pub node: Option<usize>,
    /// Added latency for `processor_slow` and `db_latency`.
    #[serde(default)]
    pub ms: Option<u64>,
    /// `db_bandwidth`: bytes per second each way per connection.
    #[serde(default)]
    pub bytes_per_sec: Option<u64>,
    /// `verifier_selftest_*`: the fraction of requests affected.
    #[serde(default)]
    pub fraction: Option<f64>,
}

/// What breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    ProcessorDown,
    ProcessorSlow,
    ProcessorRateLimited,
    ProcessorAmbiguous,
    EmailProviderDown,
    EmailProviderThrottled,
    NodeKill,
    PostgresRestart,
    DbLatency,
    DbReset,
    DbRefuse,
    DbBandwidth,
    /// Not a fault of the world: a node front that acknowledges report batches
    /// without passing them on, to prove the verifier catches a lost write.
    VerifierSelftestAckWithoutCommit,
}

impl FaultKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ProcessorDown => "processor_down",
            Self::ProcessorSlow => "processor_slow",
            Self::ProcessorRateLimited => "processor_rate_limited",
            Self::ProcessorAmbiguous => "processor_ambiguous",
            Self::EmailProviderDown => "email_provider_down",
            Self::EmailProviderThrottled => "email_provider_throttled",
            Self::NodeKill => "node_kill",
            Self::PostgresRestart => "postgres_restart",
            Self::DbLatency => "db_latency",
            Self::DbReset => "db_reset",
            Self::DbRefuse => "db_refuse",
            Self::DbBandwidth => "db_bandwidth",
            Self::VerifierSelftestAckWithoutCommit => "verifier_selftest_ack_without_commit",
        }
    }

    /// Can leave blast recipients sent but not recorded (a node killed or cut from
    /// the database between the provider's answer and the commit).
    pub fn cuts_in_flight_work(self) -> bool {
        matches!(
            self,
            Self::NodeKill
                | Self::PostgresRestart
                | Self::DbReset
                | Self::DbRefuse
                | Self::DbLatency
                | Self::DbBandwidth
        )
    }

    /// Needs the local deployment (fakes, processes or the database proxy).
    fn needs_local(self) -> bool {
        !matches!(self, Self::VerifierSelftestAckWithoutCommit)
    }
}

/// `[verify]`: the limits the verdict applies.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyLimits {
    /// p99 of donations and report batches, per fault window and overall.
    #[serde(default = "default_p99")]
    pub p99_limit_ms: u64,
    /// From a fault's end to the first clean second.
    #[serde(default = "default_recover")]
    pub recover_within: Span,
    /// How long the blast may take after load stops.
    #[serde(default = "default_blast_timeout")]
    pub blast_timeout: Span,
    /// How long open donations may take to settle after load stops.
    #[serde(default = "default_settle")]
    pub settle_timeout: Span,
}

impl Default for VerifyLimits {
    fn default() -> Self {
        Self {
            p99_limit_ms: default_p99(),
            recover_within: default_recover(),
            blast_timeout: default_blast_timeout(),
            settle_timeout: default_settle(),
        }
    }
}

fn default_p99() -> u64 {
    2000
}
fn default_recover() -> Span {
    Span(Duration::from_secs(15))
}
fn default_blast_timeout() -> Span {
    Span(Duration::from_secs(60))
}
fn default_settle() -> Span {
    Span(Duration::from_secs(30))
}

/// A duration written `"500ms"`, `"20s"` or `"2m"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(pub Duration);

impl Span {
    pub fn secs(self) -> f64 {
        self.0.as_secs_f64()
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_span(&s).map(Span).map_err(serde::de::Error::custom)
    }
}

/// Parses `"250ms"`, `"20s"`, `"1.5s"`, `"2m"`.
pub fn parse_span(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => return Err(format!("{s:?}: expected a duration with a unit (ms, s, m)")),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: expected a number before the unit"))?;
    if !n.is_finite() || n < 0.0 {
        return Err(format!("{s:?}: a duration cannot be negative"));
    }
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// A scenario that could not be read, with the line it is about when known.
#[derive(Debug)]
pub struct ScenarioError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for ScenarioError {}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The line of the `n`-th (0-based) occurrence of a table header or key in `text`:
/// good enough to point at `[[faults]]` number `n` or a key.
fn line_of_nth(text: &str, needle: &str, n: usize) -> Option<usize> {
    let mut count = 0;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with(needle) {
            if count == n {
                return Some(i + 1);
            }
            count += 1;
        }
    }
    None
}

/// The line of `key = ...` inside the `n`-th `header` table, else the header's line.
fn line_in_table(text: &str, header: &str, n: usize, key: &str) -> Option<usize> {
    let start = line_of_nth(text, header, n)?;
    for (i, line) in text.lines().enumerate().skip(start) {
        let t = line.trim_start();
        if t.starts_with('[') {
            break;
        }
        if t.strip_prefix(key)
            .is_some_and(|r| r.trim_start().starts_with('='))
        {
            return Some(i + 1);
        }
    }
    Some(start)
}

/// Parses and checks `text` (named `file` in errors; `stem` is the default name).
pub fn parse(file: &str, stem: &str, text: &str) -> Result<Scenario, ScenarioError> {
    let err = |line: Option<usize>, message: String| ScenarioError {
        file: file.to_string(),
        line,
        message,
    };
    let mut s: Scenario = toml::from_str(text).map_err(|e| {
        err(
            e.span().map(|r| line_of(text, r.start)),
            e.message().to_string(),
        )
    })?;
    if s.name.is_empty() {
        s.name = stem.to_string();
    }
    let key_line = |key: &str| line_of_nth(text, key, 0);
    if s.duration.0.is_zero() || s.duration.0 > Duration::from_secs(3600) {
        return Err(err(
            key_line("duration"),
            "duration: between 1s and 60m".into(),
        ));
    }
    if s.nodes == 0 || s.nodes > 16 {
        return Err(err(key_line("nodes"), "nodes: between 1 and 16".into()));
    }
    let w = s.load.weights;
    if w.donate_page + w.donation + w.report_batch + w.people_read == 0 {
        return Err(err(
            key_line("[load.weights]"),
            "load.weights: at least one workload needs a weight above 0".into(),
        ));
    }
    if s.load.stages.is_empty() {
        return Err(err(
            key_line("[load]"),
            "load.stages: at least one [[load.stages]]".into(),
        ));
    }
    let mut last = None;
    for (i, st) in s.load.stages.iter().enumerate() {
        let line = line_of_nth(text, "[[load.stages]]", i);
        if !st.rate.is_finite() || st.rate < 0.0 || st.rate > 100_000.0 {
            return Err(err(
                line_in_table(text, "[[load.stages]]", i, "rate"),
                format!("load.stages[{i}].rate: between 0 and 100000 arrivals per second"),
            ));
        }
        if last.is_some_and(|l| st.at <= l) {
            return Err(err(
                line_in_table(text, "[[load.stages]]", i, "at"),
                format!("load.stages[{i}].at: stages must be in increasing time order"),
            ));
        }
        if st.at > s.duration {
            return Err(err(
                line,
                format!("load.stages[{i}].at: after the scenario's duration"),
            ));
        }
        last = Some(st.at);
    }
    if s.load.max_in_flight == 0 {
        return Err(err(
            key_line("max_in_flight"),
            "load.max_in_flight: at least 1".into(),
        ));
    }
    if s.load.voters < 1 || s.load.places < 1 || s.load.places > s.load.voters {
        return Err(err(
            key_line("voters").or(key_line("places")),
            "load.voters and load.places: at least 1 each, no more places than voters".into(),
        ));
    }
    if s.load.dashboards > 1000 {
        return Err(err(
            key_line("dashboards"),
            "load.dashboards: at most 1000".into(),
        ));
    }
    if s.load.report_batch == 0 || s.load.report_batch > 500 {
        return Err(err(
            key_line("report_batch"),
            "load.report_batch: between 1 and 500".into(),
        ));
    }
    if let Some(b) = &s.blast {
        let line = key_line("[blast]");
        if b.recipients < 1 || b.rate == 0 || b.jobs == 0 {
            return Err(err(
                line,
                "blast: recipients, rate and jobs must be at least 1".into(),
            ));
        }
        if b.at > s.duration {
            return Err(err(line, "blast.at: after the scenario's duration".into()));
        }
    }
    for (i, f) in s.faults.iter().enumerate() {
        let line = line_of_nth(text, "[[faults]]", i);
        let at = format!("faults[{i}]");
        if f.at > s.duration {
            return Err(err(
                line_in_table(text, "[[faults]]", i, "at"),
                format!("{at}.at: after the scenario's duration"),
            ));
        }
        if s.target.is_some() && f.kind.needs_local() {
            return Err(err(
                line,
                format!(
                    "{at}.kind: {} needs the local deployment (no [target])",
                    f.kind.as_str()
                ),
            ));
        }
        let timed = !matches!(f.kind, FaultKind::DbReset);
        if timed && f.lasts.0.is_zero() {
            return Err(err(
                line,
                format!("{at}.for: {} needs a duration", f.kind.as_str()),
            ));
        }
        if let Some(p) = &f.processor {
            if !matches!(p.as_str(), "primary" | "backup" | "both") {
                return Err(err(
                    line,
                    format!("{at}.processor: primary, backup or both"),
                ));
            }
        }
        if f.kind == FaultKind::NodeKill && f.node.unwrap_or(0) >= s.nodes {
            return Err(err(
                line_in_table(text, "[[faults]]", i, "node"),
                format!("{at}.node: there are only {} nodes (0-based)", s.nodes),
            ));
        }
        if matches!(f.kind, FaultKind::ProcessorSlow | FaultKind::DbLatency) && f.ms.is_none() {
            return Err(err(line, format!("{at}.ms: {} needs ms", f.kind.as_str())));
        }
        if f.kind == FaultKind::DbBandwidth && f.bytes_per_sec.unwrap_or(0) == 0 {
            return Err(err(line, format!("{at}.bytes_per_sec: at least 1")));
        }
        if f.fraction.is_some_and(|x| !(0.0..=1.0).contains(&x)) {
            return Err(err(line, format!("{at}.fraction: between 0 and 1")));
        }
    }
    Ok(s)
}

/// Refuses URLs whose host is not loopback unless `allowed` names the host.
pub fn check_targets(urls: &[String], allowed: &[String]) -> Result<(), String> {
    for u in urls {
        let host = host_of(u).ok_or_else(|| format!("{u}: not an http(s) URL"))?;
        if is_loopback(&host) || allowed.iter().any(|a| a.eq_ignore_ascii_case(&host)) {
            continue;
        }
        return Err(format!(
            "{u}: {host} is outside loopback; a game day breaks things on purpose, so name it with --allow-non-loopback {host} if you mean it"
        ));
    }
    Ok(())
}

/// The host of an `http(s)://` or `postgres(ql)://` URL.
pub fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = hostport.strip_prefix('[') {
        return v6.split_once(']').map(|(h, _)| h.to_string());
    }
    let host = hostport.split(':').next()?;
    (!host.is_empty()).then(|| host.to_string())
}

fn is_loopback(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(false)
}

/// The arrival rate at `t` seconds: linear between stages, held after the last and
/// before the first.
pub fn rate_at(stages: &[Stage], t: f64) -> f64 {
    let Some(first) = stages.first() else {
        return 0.0;
    };
    if t <= first.at.secs() {
        return first.rate;
    }
    for w in stages.windows(2) {
        let (a, b) = (w[0], w[1]);
        if t < b.at.secs() {
            let f = (t - a.at.secs()) / (b.at.secs() - a.at.secs());
            return a.rate + f * (b.rate - a.rate);
        }
    }
    stages.last().map_or(0.0, |s| s.rate)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const GOOD: &str = r#"
duration = "30s"
[load.weights]
donation = 1
[[load.stages]]
at = "0s"
rate = 10
[[load.stages]]
at = "10s"
rate = 30
[[faults]]
at = "5s"
kind = "processor_down"
for = "5s"
"#;

    #[test]
    fn a_good_scenario_parses_with_defaults() {
        let s = parse("x.toml", "x", GOOD).unwrap();
        assert_eq!(s.name, "x");
        assert_eq!(s.nodes, 3);
        assert_eq!(s.faults[0].kind, FaultKind::ProcessorDown);
        assert!((rate_at(&s.load.stages, 5.0) - 20.0).abs() < 1e-9);
        assert!((rate_at(&s.load.stages, 50.0) - 30.0).abs() < 1e-9);
    }

    #[test]
    fn errors_name_the_line() {
        let bad = GOOD.replace("for = \"5s\"", "for = \"5s\"\nsurprise = 1");
        let e = parse("x.toml", "x", &bad).unwrap_err();
        assert_eq!(e.line, Some(15), "{e}");
        assert!(e.to_string().starts_with("x.toml:15:"), "{e}");
        let bad = GOOD.replace("rate = 30", "rate = -5");
        let e = parse("x.toml", "x", &bad).unwrap_err();
        assert_eq!(e.line, Some(10), "{e}");
        let bad = GOOD.replace("at = \"5s\"", "at = \"5 parsecs\"");
        assert!(parse("x.toml", "x", &bad).is_err());
    }

    #[test]
    fn only_loopback_unless_named() {
        let local = vec![
            "http://127.0.0.1:8080".to_string(),
            "http://[::1]:9/".into(),
        ];
        assert!(check_targets(&local, &[]).is_ok());
        let far = vec!["http://campaign.example.org:8080".to_string()];
        assert!(check_targets(&far, &[])
            .unwrap_err()
            .contains("--allow-non-loopback"));
        assert!(check_targets(&far, &["campaign.example.org".into()]).is_ok());
        assert_eq!(
            host_of("postgres://u:p@10.0.0.5:5432/db").as_deref(),
            Some("10.0.0.5")
        );
    }
}

#[cfg(test)]
mod shipped {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    #[test]
    fn every_shipped_scenario_parses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../gameday/scenarios");
        let mut names = Vec::new();
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let text = std::fs::read_to_string(&p).unwrap();
            let stem = p.file_stem().unwrap().to_string_lossy().to_string();
            let s = super::parse(&p.display().to_string(), &stem, &text)
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(s.duration.secs() <= 300.0, "{stem}: at most 5 minutes");
            names.push(stem);
        }
        names.sort();
        for want in [
            "database-failover",
            "election-night",
            "email-provider-outage",
            "node-loss",
            "vendor-outage",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} is shipped");
        }
    }
}
