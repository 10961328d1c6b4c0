//! What the adapters' tests expect of the answers and of the limiter, written once for both.

use lightrate_core::web::MissingIdentifier;
use lightrate_core::{DecisionSource, Limiter, OnUnavailable};
use serde_json::Value;

/// Each policy for a request without an identifier, and the status such a request (with a
/// peer address) gets.
pub const MISSING_IDENTIFIER: [(MissingIdentifier, u16); 3] = [
    (MissingIdentifier::PeerIp, 200),
    (MissingIdentifier::Unlimited, 200),
    (MissingIdentifier::Reject, 400),
];

/// Each policy for an unavailable source, and the status a request gets while it fails.
pub const OUTAGE: [(OnUnavailable, u16); 3] = [
    (OnUnavailable::Allow, 200),
    (OnUnavailable::Deny, 503),
    (OnUnavailable::Error, 503),
];

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// The body of a 429: `rate_limited`, to retry after one second, charged to `rule`.
pub fn rate_limited(body: &str, rule: &str) {
    let json = json(body);
    assert_eq!(json["error"], "rate_limited", "{body}");
    assert_eq!(json["retryAfter"], 1, "{body}");
    assert_eq!(json["rule"], rule, "{body}");
}

/// The `error` of a JSON answer (400, 429, 503).
pub fn error(body: &str) -> String {
    json(body)["error"].as_str().unwrap_or_default().to_owned()
}

/// The users that have a bucket in `limiter`.
pub fn users(limiter: &Limiter) -> Vec<String> {
    limiter
        .bucket_statuses()
        .into_iter()
        .map(|b| b.user_identifier)
        .collect()
}

/// Where the decisions of a handler came from (`format!("{:?}", decision.source())`): the
/// first `leases` answered by the source, every later one a local hit.
pub fn leased_then_local(sources: &[String], leases: usize) {
    assert!(
        sources[..leases]
            .iter()
            .all(|s| s == &format!("{:?}", DecisionSource::TokenSource)),
        "{sources:?}"
    );
    assert!(
        sources[leases..]
            .iter()
            .all(|s| s == &format!("{:?}", DecisionSource::LocalBucket)),
        "{sources:?}"
    );
}

/// Every call (target, tokens) asked for `tokens` tokens of `target`.
pub fn all_charged(calls: &[(String, u64)], target: &str, tokens: u64) {
    assert!(
        calls.iter().all(|(t, n)| t == target && *n == tokens),
        "{calls:?}: not all {tokens} of {target}"
    );
}

/// Fifty `GET /hello` of one user in shadow mode (burst 20, leases of one token): what the
/// handlers saw (`"<is_allowed> <source>"` each), the source's calls, and the log lines with
/// "shadow mode". Twenty allowed by the source, thirty let through that the denial cache would
/// have refused, the source asked exactly as often as under enforcement, and one log line for
/// the thirty naming the rule and the status they would have got.
pub fn shadow_run(seen: &[String], source_calls: usize, limiter: &Limiter, lines: &[String]) {
    assert_eq!(seen.len(), 50, "{seen:?}");
    assert!(
        seen[..20].iter().all(|s| s == "true TokenSource"),
        "{seen:?}"
    );
    // The last lease said the source was empty: the denial cache decides, as it would.
    assert!(
        seen[20..].iter().all(|s| s == "false DenialCache"),
        "{seen:?}"
    );
    assert_eq!(source_calls, 20);
    assert_eq!(limiter.stats().denied_by_denial_cache, 30);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("requests=1") && lines[0].contains("status=429"),
        "{lines:?}"
    );
    assert!(lines[0].contains("rule_hello"), "{lines:?}");
}

/// The shadow-mode log lines once ten seconds have passed and one more request came: a second
/// line saying how many were let through meanwhile.
pub fn shadow_second_line(lines: &[String]) {
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[1].contains("requests=30"), "{lines:?}");
}
