//! The bodies of the fuzz targets (`fuzz/`, run with `cargo fuzz`), written once: the fuzzer
//! calls them with what it generates, and `tests/fuzz_corpus.rs` replays the corpora kept in
//! `fuzz/corpus/<target>/` through them as an ordinary test.
//!
//! Each one feeds its bytes to a parser of untrusted input and checks what must hold of
//! whatever the parser accepts; it panics only when that does not hold (or the parser panics).

use std::str::FromStr;

use std::net::IpAddr;
use std::time::Duration;

use lightrate_core::http::Method;
use lightrate_core::web::fuzzing as web;
use lightrate_core::web::{InvalidIdentifier, MAX_REQUEST_IDENTIFIER_BYTES};
use lightrate_core::{ConsumeTokensResponse, RefillRate, RuleSet, Target};

/// A fuzz target: its name (the corpus folder) and its body.
pub type FuzzTarget = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: &[FuzzTarget] = &[
    ("consume_response", consume_response),
    ("rules_toml", rules_toml),
    ("refill_rate", refill_rate),
    ("identifier", identifier),
    ("ietf_fields", ietf_fields),
];

/// A token source's answer, as the client reads it: what parses serializes, and reads back as
/// the same answer (the refill rate within a few parts in 10¹⁵).
pub fn consume_response(data: &[u8]) {
    let Ok(answer) = serde_json::from_slice::<ConsumeTokensResponse>(data) else {
        return;
    };
    let text = serde_json::to_string(&answer).expect("an answer that parsed serializes");
    let again: ConsumeTokensResponse =
        serde_json::from_str(&text).expect("what was written reads back");
    assert_eq!(again.tokens_consumed, answer.tokens_consumed);
    assert_eq!(again.tokens_remaining, answer.tokens_remaining);
    assert_eq!(again.rule.id, answer.rule.id);
    assert_eq!(again.rule.burst_rate, answer.rule.burst_rate);
    assert_close(again.rule.refill_rate, answer.rule.refill_rate);
}

/// A rules file: what parses prints its table, resolves any target, and every rate reads back
/// from what it prints as the same rate.
pub fn rules_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(rules) = RuleSet::from_toml_str(text) else {
        return;
    };
    let _ = rules.to_string();
    for rule in rules.rules() {
        let printed = rule.refill_rate.to_string();
        assert_eq!(
            RefillRate::from_str(&printed).expect("a printed rate parses"),
            rule.refill_rate,
            "{printed}"
        );
    }
    let probe = text.get(..text.len().min(64)).unwrap_or("");
    for target in [
        Target::operation(probe),
        Target::path(Method::GET, probe),
        Target::Default,
    ] {
        let _ = rules.resolve(&target);
    }
}

/// A refill rate as written in a rules file (`"10/hour"`, `"0.5"`): what parses prints as text
/// that reads back as the same rate, and survives the wire (JSON) within a few parts in 10¹⁵.
pub fn refill_rate(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(rate) = RefillRate::from_str(text) else {
        return;
    };
    let printed = rate.to_string();
    assert_eq!(RefillRate::from_str(&printed).ok(), Some(rate), "{printed}");
    let json = serde_json::to_string(&rate).expect("a rate serializes");
    let back: RefillRate = serde_json::from_str(&json).expect("a rate reads back");
    assert_close(back, rate);
    let _ = rate.time_per_token();
    let _ = rate.tokens_in(std::time::Duration::from_secs(3600));
}

fn assert_close(a: RefillRate, b: RefillRate) {
    let (x, y) = (a.as_f64(), b.as_f64());
    assert!((x - y).abs() <= y.abs() * 4e-15, "{a:?} and {b:?} differ");
}

/// A user identifier taken from a request, and the client's address from `X-Forwarded-For`:
/// what is accepted is non-blank visible text within the limit, and what is refused says why
/// truthfully; an address found is the peer or one written in the header, and prints back.
pub fn identifier(data: &[u8]) {
    match web::validate_identifier(data) {
        Ok(text) => {
            assert!(text.len() <= MAX_REQUEST_IDENTIFIER_BYTES);
            assert!(!text.trim().is_empty());
            assert!(!text.chars().any(char::is_control));
            assert_eq!(text.as_bytes(), data);
        }
        Err(InvalidIdentifier::TooLong) => assert!(data.len() > MAX_REQUEST_IDENTIFIER_BYTES),
        Err(InvalidIdentifier::Empty) => {
            assert!(std::str::from_utf8(data).is_ok_and(|t| t.trim().is_empty()));
        }
        Err(InvalidIdentifier::NotVisible) => {
            assert!(std::str::from_utf8(data).map_or(true, |t| t.chars().any(char::is_control)))
        }
        Err(other) => panic!("unknown refusal {other:?}"),
    }
    let Some((&trusted, rest)) = data.split_first() else {
        return;
    };
    let values: Vec<&[u8]> = rest.split(|b| *b == b'\n').collect();
    let peer: IpAddr = [127, 0, 0, 1].into();
    if let Some(ip) = web::client_ip(Some(peer), &values, usize::from(trusted % 4)) {
        let text = web::ip_text(ip);
        assert_eq!(text.parse::<IpAddr>().ok(), Some(ip), "{text}");
        let written = values
            .iter()
            .filter_map(|v| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
            .any(|hop| hop.trim().parse::<IpAddr>().ok() == Some(ip));
        assert!(
            ip == peer || written,
            "{ip} is neither the peer nor in the header"
        );
    }
}

/// The IETF `RateLimit-Policy` and `RateLimit` fields for any rule and decision: always both,
/// valid header values, the policy name quoted with no quote or backslash inside, the numbers
/// those of the rule and decision.
pub fn ietf_fields(data: &[u8]) {
    if data.len() < 26 {
        return;
    }
    let number = |at: usize| u64::from_le_bytes(data[at..at + 8].try_into().unwrap_or_default());
    let (burst, remaining, retry_ms) = (number(0), number(8), number(16));
    let allowed = data[24] & 1 == 1;
    let rest = &data[25..];
    let split = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    let Ok(rate) = RefillRate::from_str(&String::from_utf8_lossy(&rest[..split])) else {
        return;
    };
    let policy = String::from_utf8_lossy(rest.get(split + 1..).unwrap_or_default());
    let headers = web::rate_limit_headers(
        &policy,
        burst,
        rate,
        remaining,
        allowed,
        Duration::from_millis(retry_ms),
    );
    let field = |name: &str| {
        headers
            .get(name)
            .unwrap_or_else(|| panic!("{name} is written"))
            .to_str()
            .expect("a field is visible ASCII")
            .to_owned()
    };
    let (policy_field, limit_field) = (field("ratelimit-policy"), field("ratelimit"));
    let name_of = |value: &str| -> String {
        let inner = value.strip_prefix('"').expect("the name is quoted");
        let end = inner.find('"').expect("the name is closed");
        assert!(!inner[..end].contains('\\'));
        inner[..end].to_owned()
    };
    assert_eq!(name_of(&policy_field), name_of(&limit_field));
    let params = |value: &str| -> Vec<(String, u64)> {
        let after = &value[value[1..].find('"').expect("closed") + 2..];
        after
            .split(';')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').expect("key=value");
                (k.to_owned(), v.parse().expect("a number"))
            })
            .collect()
    };
    let policy_params = params(&policy_field);
    assert_eq!(policy_params[0], ("q".into(), burst));
    assert_eq!(params(&limit_field)[0], ("r".into(), remaining));
    assert_eq!(policy_params[1].0, "w");
    assert!(policy_params[1].1 >= 1);
    let limit_params = params(&limit_field);
    assert_eq!(limit_params[0].0, "r");
    assert_eq!(limit_params[1].0, "t");
    if !allowed {
        assert!(limit_params[1].1 >= 1, "a denial says when to retry");
        // Whole seconds, rounded up, at least 1; a decision holds at most 2⁶⁴ ns (584 years).
        let retry = Duration::from_millis(retry_ms).min(Duration::from_nanos(u64::MAX));
        let secs = retry.as_secs() + u64::from(retry.subsec_nanos() > 0);
        assert_eq!(limit_params[1].1, secs.max(1));
    }
}
