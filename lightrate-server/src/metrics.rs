//! The server's own counters, rendered in the Prometheus text format at `GET /metrics`.
//!
//! Each server keeps its own (no global recorder: several servers can run in one process), in
//! atomics; a consume touches one read-locked map lookup and a few relaxed increments. The text
//! is written here, at scrape time.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use lightrate_core::ErrorKind;

/// What became of a consume request: the `status` label of
/// `lightrate_server_consume_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// 200 with at least one token.
    Granted,
    /// 200 with no token (rate limited).
    Denied,
    /// 400 or 413: a malformed, invalid or oversized request.
    Invalid,
    /// 408: the request did not arrive whole within the request timeout.
    Timeout,
    /// 401: a missing or wrong API key.
    Unauthorized,
    /// 404: another application.
    UnknownApplication,
    /// 503: the store could not answer.
    Unavailable,
    /// 500: the store failed.
    Error,
}

/// The outcomes whose requests name no rule, in the order of [`ServerMetrics::unruled`].
const UNRULED: [Outcome; 6] = [
    Outcome::Invalid,
    Outcome::Timeout,
    Outcome::Unauthorized,
    Outcome::UnknownApplication,
    Outcome::Unavailable,
    Outcome::Error,
];

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Granted => "granted",
            Outcome::Denied => "denied",
            Outcome::Invalid => "invalid",
            Outcome::Timeout => "timeout",
            Outcome::Unauthorized => "unauthorized",
            Outcome::UnknownApplication => "unknown_application",
            Outcome::Unavailable => "unavailable",
            Outcome::Error => "error",
        }
    }
}

/// Upper bounds of the consume duration histogram, in seconds.
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

#[derive(Debug, Default)]
struct RuleCounters {
    granted: AtomicU64,
    denied: AtomicU64,
    tokens: AtomicU64,
}

#[derive(Debug, Default)]
struct Histogram {
    /// Observations at or below each bound (not cumulative; summed when rendered).
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// Every counter of one server.
#[derive(Debug, Default)]
pub(crate) struct ServerMetrics {
    by_rule: RwLock<HashMap<Box<str>, Arc<RuleCounters>>>,
    unruled: [AtomicU64; UNRULED.len()],
    duration: Histogram,
    store_errors: Mutex<BTreeMap<&'static str, u64>>,
    open_connections: AtomicI64,
    refused_connections: AtomicU64,
    accept_errors: AtomicU64,
    reloads: AtomicU64,
    reloads_refused: AtomicU64,
}

impl ServerMetrics {
    /// Counts one consume request, its outcome, the rule it fell to (granted and denied
    /// requests), the tokens granted, and how long it took.
    pub(crate) fn consume(
        &self,
        outcome: Outcome,
        rule: Option<&str>,
        tokens: u64,
        elapsed: Duration,
    ) {
        self.duration.observe(elapsed);
        let ruled = match (outcome, rule) {
            (Outcome::Granted | Outcome::Denied, Some(rule)) => Some(rule),
            _ => None,
        };
        let Some(rule) = ruled else {
            if let Some(i) = UNRULED.iter().position(|o| *o == outcome) {
                self.unruled[i].fetch_add(1, Ordering::Relaxed);
            }
            return;
        };
        let known = read(&self.by_rule).get(rule).cloned();
        let counters = match known {
            Some(counters) => counters,
            None => write(&self.by_rule).entry(rule.into()).or_default().clone(),
        };
        let requests = match outcome {
            Outcome::Granted => &counters.granted,
            _ => &counters.denied,
        };
        requests.fetch_add(1, Ordering::Relaxed);
        counters.tokens.fetch_add(tokens, Ordering::Relaxed);
    }

    /// Counts a failure of the store, by kind.
    pub(crate) fn store_error(&self, kind: ErrorKind) {
        let mut errors = self.store_errors.lock().unwrap_or_else(|p| p.into_inner());
        *errors.entry(kind_label(kind)).or_default() += 1;
    }

    pub(crate) fn connection_opened(&self) {
        self.open_connections.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_closed(&self) {
        self.open_connections.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn connection_refused(&self) {
        self.refused_connections.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn accept_error(&self) {
        self.accept_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn reload(&self, accepted: bool) {
        let counter = if accepted {
            &self.reloads
        } else {
            &self.reloads_refused
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The text exposition (format 0.0.4). `live_buckets` is the store's count, when it has one.
    pub(crate) fn render(&self, live_buckets: Option<u64>) -> String {
        let mut out = String::with_capacity(4096);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);

        family(
            &mut out,
            "lightrate_server_consume_requests_total",
            "counter",
            "Consume requests by outcome (status) and the rule they fell to.",
        );
        let rules: BTreeMap<Box<str>, Arc<RuleCounters>> = read(&self.by_rule)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (rule, counters) in &rules {
            for (outcome, counter) in [
                (Outcome::Granted, &counters.granted),
                (Outcome::Denied, &counters.denied),
            ] {
                let _ = writeln!(
                    out,
                    "lightrate_server_consume_requests_total{{status=\"{}\",rule=\"{}\"}} {}",
                    outcome.label(),
                    escape(rule),
                    load(counter)
                );
            }
        }
        for (outcome, counter) in UNRULED.iter().zip(&self.unruled) {
            let _ = writeln!(
                out,
                "lightrate_server_consume_requests_total{{status=\"{}\",rule=\"\"}} {}",
                outcome.label(),
                load(counter)
            );
        }

        family(
            &mut out,
            "lightrate_server_tokens_granted_total",
            "counter",
            "Tokens granted, by rule.",
        );
        for (rule, counters) in &rules {
            let _ = writeln!(
                out,
                "lightrate_server_tokens_granted_total{{rule=\"{}\"}} {}",
                escape(rule),
                load(&counters.tokens)
            );
        }

        family(
            &mut out,
            "lightrate_server_consume_duration_seconds",
            "histogram",
            "Time from a consume request's headers to its answer (body and store included).",
        );
        let mut cumulative = 0;
        for (bound, count) in BUCKETS.iter().zip(&self.duration.buckets) {
            cumulative += load(count);
            let _ = writeln!(
                out,
                "lightrate_server_consume_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = load(&self.duration.count);
        let _ = writeln!(
            out,
            "lightrate_server_consume_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "lightrate_server_consume_duration_seconds_sum {}",
            load(&self.duration.sum_nanos) as f64 / 1e9
        );
        let _ = writeln!(
            out,
            "lightrate_server_consume_duration_seconds_count {count}"
        );

        if let Some(buckets) = live_buckets {
            family(
                &mut out,
                "lightrate_server_live_buckets",
                "gauge",
                "(user, rule) buckets the store holds in memory (those not full).",
            );
            let _ = writeln!(out, "lightrate_server_live_buckets {buckets}");
        }

        family(
            &mut out,
            "lightrate_server_store_errors_total",
            "counter",
            "Consumes the store could not answer, by error kind.",
        );
        let errors = self
            .store_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (kind, n) in errors {
            let _ = writeln!(
                out,
                "lightrate_server_store_errors_total{{kind=\"{kind}\"}} {n}"
            );
        }

        family(
            &mut out,
            "lightrate_server_open_connections",
            "gauge",
            "Client connections open now.",
        );
        let _ = writeln!(
            out,
            "lightrate_server_open_connections {}",
            self.open_connections.load(Ordering::Relaxed).max(0)
        );
        for (name, help, counter) in [
            (
                "lightrate_server_connections_refused_total",
                "Connections answered 503 and closed because the server held its maximum.",
                &self.refused_connections,
            ),
            (
                "lightrate_server_accept_errors_total",
                "Failed accepts (out of file descriptors, say), each followed by a back-off.",
                &self.accept_errors,
            ),
        ] {
            family(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", load(counter));
        }
        family(
            &mut out,
            "lightrate_server_rule_reloads_total",
            "counter",
            "Rule replacements (SIGHUP), by result.",
        );
        let _ = writeln!(
            out,
            "lightrate_server_rule_reloads_total{{result=\"applied\"}} {}",
            load(&self.reloads)
        );
        let _ = writeln!(
            out,
            "lightrate_server_rule_reloads_total{{result=\"refused\"}} {}",
            load(&self.reloads_refused)
        );
        out
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value as the text format writes it.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// `Timeout` → `timeout`, `InvalidInput` → `invalid_input`.
fn kind_label(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Timeout => "timeout",
        ErrorKind::Network => "network",
        ErrorKind::Unavailable => "unavailable",
        ErrorKind::Internal => "internal",
        ErrorKind::Decode => "decode",
        ErrorKind::Configuration => "configuration",
        ErrorKind::Unauthorized => "unauthorized",
        ErrorKind::Forbidden => "forbidden",
        ErrorKind::NotFound => "not_found",
        ErrorKind::TooManyRequests => "too_many_requests",
        _ => "other",
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn the_histogram_is_cumulative_and_counts_past_its_last_bound() {
        let m = ServerMetrics::default();
        m.consume(Outcome::Invalid, None, 0, Duration::from_micros(50));
        m.consume(Outcome::Invalid, None, 0, Duration::from_millis(3));
        m.consume(Outcome::Invalid, None, 0, Duration::from_secs(60));
        let text = m.render(None);
        assert!(text.contains("_bucket{le=\"0.0001\"} 1\n"), "{text}");
        assert!(text.contains("_bucket{le=\"0.005\"} 2\n"), "{text}");
        assert!(text.contains("_bucket{le=\"10\"} 2\n"), "{text}");
        assert!(text.contains("_bucket{le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("_count 3\n"), "{text}");
        assert!(!text.contains("live_buckets"), "{text}");
    }
}
