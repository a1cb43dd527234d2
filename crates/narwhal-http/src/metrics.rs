//! A small Prometheus registry: request counts by method, route and status, and a
//! request-duration histogram per route. Routes are matched paths (`/api/v1/people/{id}`),
//! never raw URLs, so labels stay bounded and free of personal data.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Upper bounds of the duration buckets, in seconds.
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default, Clone)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(String, String, u16), u64>,
    durations: BTreeMap<String, Histogram>,
    counters: BTreeMap<&'static str, u64>,
}

/// The process's HTTP metrics. Shared through `AppState`.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    /// Counts one answered request and its duration.
    pub fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let Ok(mut m) = self.inner.lock() else {
            return;
        };
        *m.requests
            .entry((method.to_string(), route.to_string(), status))
            .or_default() += 1;
        let h = m.durations.entry(route.to_string()).or_default();
        for (i, le) in BUCKETS.iter().enumerate() {
            if seconds <= *le {
                h.buckets[i] += 1;
            }
        }
        h.sum += seconds;
        h.count += 1;
    }

    /// Adds one to a plain counter (`donation_declines_total`, ...).
    pub fn count(&self, name: &'static str) {
        if let Ok(mut m) = self.inner.lock() {
            *m.counters.entry(name).or_default() += 1;
        }
    }

    /// The text exposition format, with job queue depths appended.
    pub fn render(&self, jobs: &[(String, String, i64)]) -> String {
        let mut out = String::new();
        let (requests, durations, counters) = match self.inner.lock() {
            Ok(m) => (m.requests.clone(), m.durations.clone(), m.counters.clone()),
            Err(_) => Default::default(),
        };
        for (name, n) in &counters {
            let _ = writeln!(out, "# TYPE {name} counter\n{name} {n}");
        }
        out.push_str("# HELP http_requests_total HTTP requests by method, route and status.\n# TYPE http_requests_total counter\n");
        for ((method, route, status), n) in &requests {
            let _ = writeln!(
                out,
                "http_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {n}",
                esc(method),
                esc(route)
            );
        }
        out.push_str("# HELP http_request_duration_seconds Time to answer, by route.\n# TYPE http_request_duration_seconds histogram\n");
        for (route, h) in &durations {
            let r = esc(route);
            for (i, le) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "http_request_duration_seconds_bucket{{route=\"{r}\",le=\"{le}\"}} {}",
                    h.buckets[i]
                );
            }
            let _ = writeln!(
                out,
                "http_request_duration_seconds_bucket{{route=\"{r}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "http_request_duration_seconds_sum{{route=\"{r}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "http_request_duration_seconds_count{{route=\"{r}\"}} {}",
                h.count
            );
        }
        out.push_str("# HELP narwhal_jobs Jobs queued or running, by kind and state.\n# TYPE narwhal_jobs gauge\n");
        for (kind, state, n) in jobs {
            let _ = writeln!(
                out,
                "narwhal_jobs{{kind=\"{}\",state=\"{}\"}} {n}",
                esc(kind),
                esc(state)
            );
        }
        out
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_buckets() {
        let m = Metrics::default();
        m.observe("GET", "/a", 200, 0.003);
        m.observe("GET", "/a", 200, 0.2);
        m.observe("POST", "/a", 422, 20.0);
        let t = m.render(&[("import.people".into(), "queued".into(), 2)]);
        assert!(t.contains("http_requests_total{method=\"GET\",route=\"/a\",status=\"200\"} 2"));
        assert!(t.contains("http_request_duration_seconds_bucket{route=\"/a\",le=\"0.005\"} 1"));
        assert!(t.contains("http_request_duration_seconds_bucket{route=\"/a\",le=\"0.25\"} 2"));
        assert!(t.contains("http_request_duration_seconds_bucket{route=\"/a\",le=\"+Inf\"} 3"));
        assert!(t.contains("narwhal_jobs{kind=\"import.people\",state=\"queued\"} 2"));
    }
}
