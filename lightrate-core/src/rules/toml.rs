//! Rules files: a [`RuleSet`] from TOML, with errors that name the line.

use std::path::Path;

use http::Method;
use serde::Deserialize;

use crate::{Error, ErrorKind, RefillRate};

use super::builder::{At, RuleSpec};
use super::set::RuleSet;

impl RuleSet {
    /// Parses rules from TOML.
    ///
    /// ```
    /// use lightrate_core::{RuleSet, Target};
    ///
    /// let rules = RuleSet::from_toml_str(r#"
    ///     [default]
    ///     refill_rate = 1
    ///     burst_rate = 5
    ///
    ///     [[rules]]
    ///     name = "Send Email"
    ///     matcher = "^send_email$"
    ///     refill = "10/hour"     # or refill_rate = 0.5 (tokens per second)
    ///     burst_rate = 10
    ///
    ///     [[rules]]
    ///     id = "hello"
    ///     name = "Hello"
    ///     matcher = "^/hello"
    ///     http_method = "GET"
    ///     refill_rate = 1
    ///     burst_rate = 20
    /// "#).unwrap();
    /// assert_eq!(rules.resolve(&Target::operation("send_email")).id, "rule_send_email");
    /// assert_eq!(rules.rules().count(), 3);
    /// ```
    #[cfg(feature = "toml")]
    pub fn from_toml_str(text: &str) -> Result<RuleSet, Error> {
        if let Some(line) = toml_nested_too_deep(text) {
            return Err(Error::new(
                ErrorKind::Configuration,
                format!(
                    "invalid rules file: line {line}: arrays and tables nested more than \
                     {MAX_TOML_NESTING} deep"
                ),
            ));
        }
        let file: TomlRules = toml::from_str(text).map_err(|e| {
            Error::new(ErrorKind::Configuration, format!("invalid rules file: {e}"))
        })?;
        // An error found after parsing names the line of the table it is about.
        let line_of = |span: std::ops::Range<usize>| {
            1 + text.as_bytes()[..span.start.min(text.len())]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
        };
        let at_line = |line: usize, e: Error| {
            Error::new(
                ErrorKind::Configuration,
                format!("invalid rules file: line {line}: {}", e.message()),
            )
        };
        let default_line = line_of(file.default.span());
        let default = file.default.into_inner();
        let mut builder = RuleSet::builder().default_rule_named(
            default.name.unwrap_or_else(|| "Default".into()),
            default.id,
            default.refill_rate,
            default.burst_rate,
        );
        let mut lines = Vec::with_capacity(file.rules.len());
        for r in file.rules {
            let line = line_of(r.span());
            let r = r.into_inner();
            let http_method = match r.http_method {
                Some(m) => Some(Method::from_bytes(m.as_bytes()).map_err(|_| {
                    let e = Error::new(
                        ErrorKind::Configuration,
                        format!("rule {:?}: invalid http_method {m:?}", r.name),
                    );
                    at_line(line, e)
                })?),
                None => None,
            };
            lines.push(line);
            builder = builder.rule(RuleSpec {
                refill_rate: r.refill_rate,
                id: r.id,
                name: r.name,
                matcher: r.matcher,
                http_method,
                burst_rate: r.burst_rate,
            });
        }
        builder.build_located().map_err(|(e, at)| match at {
            At::Default => at_line(default_line, e),
            At::Rule(i) => match lines.get(i) {
                Some(line) => at_line(*line, e),
                None => e,
            },
            At::Nowhere => e,
        })
    }

    /// Reads and parses a TOML rules file (see [`from_toml_str`](RuleSet::from_toml_str)).
    #[cfg(feature = "toml")]
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<RuleSet, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::new(
                ErrorKind::Configuration,
                format!("cannot read rules file {}: {e}", path.display()),
            )
        })?;
        RuleSet::from_toml_str(&text)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlRules {
    default: toml::Spanned<TomlDefault>,
    #[serde(default)]
    rules: Vec<toml::Spanned<TomlRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlDefault {
    id: Option<String>,
    name: Option<String>,
    #[serde(alias = "refill")]
    refill_rate: RefillRate,
    burst_rate: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlRule {
    id: Option<String>,
    name: String,
    matcher: String,
    http_method: Option<String>,
    #[serde(alias = "refill")]
    refill_rate: RefillRate,
    burst_rate: u64,
}

/// How deep arrays and inline tables may nest in a rules file (a real one needs 2).
const MAX_TOML_NESTING: usize = 32;

/// The line where a TOML text first nests `[` or `{` more than [`MAX_TOML_NESTING`] deep,
/// outside strings and comments. The TOML parser recurses on nesting, so a hostile file could
/// otherwise overflow the stack of the thread that reads it.
pub(super) fn toml_nested_too_deep(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let (mut depth, mut line, mut i) = (0usize, 1usize, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => line += 1,
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            quote @ (b'"' | b'\'') => {
                // A string, single or triple quoted; a basic string's escapes are skipped.
                let triple = bytes[i..].starts_with(&[quote; 3]);
                i += if triple { 3 } else { 1 };
                while i < bytes.len() {
                    let b = bytes[i];
                    if b == b'\\' && quote == b'"' {
                        i += 2;
                        continue;
                    }
                    if b == b'\n' {
                        if !triple {
                            break;
                        }
                        line += 1;
                    }
                    if b == quote && (!triple || bytes[i..].starts_with(&[quote; 3])) {
                        i += if triple { 3 } else { 1 };
                        break;
                    }
                    i += 1;
                }
                continue;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_TOML_NESTING {
                    return Some(line);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    None
}
