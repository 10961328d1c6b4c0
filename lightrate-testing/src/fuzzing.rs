//! The bodies of the fuzz targets (`fuzz/`, run with `cargo fuzz`), written once: the fuzzer
//! calls them with what it generates, and `tests/fuzz_corpus.rs` replays the corpora kept in
//! `fuzz/corpus/<target>/` through them as an ordinary test.
//!
//! Each one feeds its bytes to a parser of untrusted input and checks what must hold of
//! whatever the parser accepts; it panics only when that does not hold (or the parser panics).

use std::str::FromStr;

use lightrate_core::http::Method;
use lightrate_core::{ConsumeTokensResponse, RefillRate, RuleSet, Target};

/// Every target: its name (the corpus folder) and its body.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("consume_response", consume_response),
    ("rules_toml", rules_toml),
    ("refill_rate", refill_rate),
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
