//! Rules: which rule a [`Target`] falls under, with the SDKs' matcher semantics.
//!
//! A rule without an HTTP method is an *operation rule*: its matcher is tested against the
//! operation name. A rule with a method is a *path rule*: the method must be equal (exactly,
//! case included) and the matcher is tested against the path. A matcher is an unanchored
//! regular expression; one that does not compile is compared as a literal string. What no rule
//! matches falls to the default rule.

use std::collections::HashSet;
use std::fmt;
#[cfg(feature = "toml")]
use std::path::Path;

use http::Method;
#[cfg(feature = "toml")]
use serde::Deserialize;

use crate::{Error, ErrorKind, RefillRate, Rule, Target};

/// The largest compiled program a matcher may have. Matchers can come from a server's answers,
/// so one that would take more memory than this is treated as a literal instead.
const MATCHER_SIZE_LIMIT: usize = 256 * 1024;

/// How deep groups and repetitions may nest in a matcher. The regex parser recurses on nesting;
/// its own limit (250) let a matcher like `z****…` overflow a 2 MiB thread stack (found by
/// fuzzing the rules files), and matchers can come from a server's answers.
const MATCHER_NEST_LIMIT: u32 = 32;

/// A rule's compiled pattern.
#[derive(Clone, Debug)]
pub(crate) enum Matcher {
    Regex(regex::Regex),
    Literal(Box<str>),
}

impl Matcher {
    /// Compiles `pattern` as an unanchored regular expression, or keeps it as a literal when it
    /// does not compile (or would be too large).
    pub(crate) fn compile(pattern: &str) -> Matcher {
        match regex::RegexBuilder::new(pattern)
            .size_limit(MATCHER_SIZE_LIMIT)
            .dfa_size_limit(MATCHER_SIZE_LIMIT)
            .nest_limit(MATCHER_NEST_LIMIT)
            .build()
        {
            Ok(re) => Matcher::Regex(re),
            Err(_) => Matcher::Literal(pattern.into()),
        }
    }

    pub(crate) fn is_match(&self, text: &str) -> bool {
        match self {
            Matcher::Regex(re) => re.is_match(text),
            Matcher::Literal(lit) => **lit == *text,
        }
    }
}

/// A rule with its matcher compiled once.
#[derive(Clone, Debug)]
pub(crate) struct CompiledRule {
    pub(crate) rule: Rule,
    matcher: Option<Matcher>,
}

impl CompiledRule {
    pub(crate) fn new(rule: Rule) -> Self {
        let matcher = if rule.is_default {
            None
        } else {
            rule.matcher.as_deref().map(Matcher::compile)
        };
        CompiledRule { rule, matcher }
    }

    /// Whether this (non-default) rule applies to `target`.
    pub(crate) fn matches(&self, target: &Target<'_>) -> bool {
        let Some(matcher) = &self.matcher else {
            return false;
        };
        match (target, self.rule.http_method.as_deref()) {
            (Target::Operation(op), None) => matcher.is_match(op),
            (Target::Path { method, path }, Some(rule_method)) => {
                method.as_str() == rule_method && matcher.is_match(path)
            }
            _ => false,
        }
    }
}

/// An application's rules: a default rule plus operation and path rules, tried in order.
///
/// ```
/// use lightrate_core::{RefillRate, RuleSet, Target};
/// use http::Method;
///
/// let rules = RuleSet::builder()
///     .default_rule(RefillRate::per_second(1), 5)
///     .operation("Send Email", "^send_email$", RefillRate::per_second(1), 10)
///     .path(Method::GET, "^/hello", RefillRate::per_second(1), 20)
///     .build()
///     .unwrap();
/// assert_eq!(rules.resolve(&Target::operation("send_email")).burst_rate, 10);
/// assert_eq!(rules.resolve(&Target::path(Method::GET, "/hello/world")).burst_rate, 20);
/// assert!(rules.resolve(&Target::path(Method::POST, "/hello")).is_default);
/// ```
#[derive(Clone, Debug)]
pub struct RuleSet {
    default: CompiledRule,
    rules: Vec<CompiledRule>,
}

impl RuleSet {
    /// A builder.
    pub fn builder() -> RuleSetBuilder {
        RuleSetBuilder::default()
    }

    /// The demo rules of the example apps: operation `send_email` refill 1/s burst 10; path
    /// `^/hello` method `GET` refill 1/s burst 20; default rule refill 1/s burst 5.
    pub fn demo() -> RuleSet {
        RuleSet::builder()
            .default_rule(RefillRate::per_second(1), 5)
            .rule(RuleSpec {
                id: Some("rule_send_email".into()),
                ..RuleSpec::operation("Send Email", "^send_email$", RefillRate::per_second(1), 10)
            })
            .rule(RuleSpec {
                id: Some("rule_hello".into()),
                name: "Hello".into(),
                ..RuleSpec::path(Method::GET, "^/hello", RefillRate::per_second(1), 20)
            })
            .build()
            .unwrap_or_else(|_| unreachable!("the demo rules are valid"))
    }

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

    /// The rule `target` falls under: the first rule that matches it, else the default rule.
    pub fn resolve(&self, target: &Target<'_>) -> &Rule {
        self.rule_at(self.resolve_index(target))
    }

    /// Index into `rules`, or `rules.len()` for the default rule.
    pub(crate) fn resolve_index(&self, target: &Target<'_>) -> usize {
        self.rules
            .iter()
            .position(|r| r.matches(target))
            .unwrap_or(self.rules.len())
    }

    /// How many rules besides the default one (`rule_at(len())` is the default rule).
    pub(crate) fn len(&self) -> usize {
        self.rules.len()
    }

    /// The rule at `index` as returned by `resolve_index`.
    pub(crate) fn rule_at(&self, index: usize) -> &Rule {
        self.rules
            .get(index)
            .map_or(&self.default.rule, |r| &r.rule)
    }

    /// Every rule, the default rule first.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        std::iter::once(&self.default.rule).chain(self.rules.iter().map(|r| &r.rule))
    }

    /// The default rule.
    pub fn default_rule(&self) -> &Rule {
        &self.default.rule
    }
}

/// One line per rule: its id, what it applies to, its refill rate and burst.
///
/// ```
/// use lightrate_core::RuleSet;
///
/// let text = RuleSet::demo().to_string();
/// assert!(text.contains("rule_hello") && text.contains("GET path ~ ^/hello"));
/// ```
impl fmt::Display for RuleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, rule) in self.rules().enumerate() {
            let applies_to = match (&rule.matcher, &rule.http_method) {
                (None, _) => "everything else".to_owned(),
                (Some(m), None) => format!("operation ~ {m}"),
                (Some(m), Some(method)) => format!("{method} path ~ {m}"),
            };
            if i > 0 {
                writeln!(f)?;
            }
            write!(
                f,
                "  {:<16} {:<24} refill {}, burst {}",
                rule.id, applies_to, rule.refill_rate, rule.burst_rate
            )?;
        }
        Ok(())
    }
}

/// One rule to add to a [`RuleSetBuilder`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct RuleSpec {
    /// The rule's id; derived from the name (`rule_<name>`) when `None`.
    pub id: Option<String>,
    /// A human-readable name.
    pub name: String,
    /// The pattern (an unanchored regular expression, or a literal if it does not compile).
    pub matcher: String,
    /// `Some` for a path rule, `None` for an operation rule.
    pub http_method: Option<Method>,
    /// Tokens added per second.
    pub refill_rate: RefillRate,
    /// Bucket capacity; at least 1.
    pub burst_rate: u64,
}

impl RuleSpec {
    /// An operation rule.
    pub fn operation(
        name: impl Into<String>,
        matcher: impl Into<String>,
        refill_rate: RefillRate,
        burst_rate: u64,
    ) -> Self {
        RuleSpec {
            id: None,
            name: name.into(),
            matcher: matcher.into(),
            http_method: None,
            refill_rate,
            burst_rate,
        }
    }

    /// A path rule, named after its method and matcher.
    pub fn path(
        method: Method,
        matcher: impl Into<String>,
        refill_rate: RefillRate,
        burst_rate: u64,
    ) -> Self {
        let matcher = matcher.into();
        RuleSpec {
            id: None,
            name: format!("{method} {matcher}"),
            matcher,
            http_method: Some(method),
            refill_rate,
            burst_rate,
        }
    }

    /// Sets the id.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }
}

/// Builds a [`RuleSet`]. See [`RuleSet::builder`].
#[derive(Clone, Debug, Default)]
pub struct RuleSetBuilder {
    default: Option<(String, Option<String>, RefillRate, u64)>,
    rules: Vec<RuleSpec>,
}

impl RuleSetBuilder {
    /// The default rule, for what no other rule matches. Required.
    pub fn default_rule(self, refill_rate: RefillRate, burst_rate: u64) -> Self {
        self.default_rule_named("Default".into(), None, refill_rate, burst_rate)
    }

    fn default_rule_named(
        mut self,
        name: String,
        id: Option<String>,
        refill_rate: RefillRate,
        burst_rate: u64,
    ) -> Self {
        self.default = Some((name, id, refill_rate, burst_rate));
        self
    }

    /// Adds an operation rule named `name`.
    pub fn operation(
        self,
        name: impl Into<String>,
        matcher: impl Into<String>,
        refill_rate: RefillRate,
        burst_rate: u64,
    ) -> Self {
        self.rule(RuleSpec::operation(name, matcher, refill_rate, burst_rate))
    }

    /// Adds a path rule for `method`.
    pub fn path(
        self,
        method: Method,
        matcher: impl Into<String>,
        refill_rate: RefillRate,
        burst_rate: u64,
    ) -> Self {
        self.rule(RuleSpec::path(method, matcher, refill_rate, burst_rate))
    }

    /// Adds a rule.
    pub fn rule(mut self, spec: RuleSpec) -> Self {
        self.rules.push(spec);
        self
    }

    /// Checks and compiles the rules.
    ///
    /// Errors (kind [`ErrorKind::Configuration`]): no default rule, a burst of 0, an empty
    /// matcher, or two rules with the same id.
    pub fn build(self) -> Result<RuleSet, Error> {
        self.build_located().map_err(|(e, _)| e)
    }

    /// [`build`](Self::build), saying which rule an error is about.
    fn build_located(self) -> Result<RuleSet, (Error, At)> {
        let config = |msg: String| Error::new(ErrorKind::Configuration, msg);
        let (name, id, refill_rate, burst_rate) = self
            .default
            .ok_or_else(|| (config("a default rule is required".into()), At::Nowhere))?;
        if burst_rate == 0 {
            return Err((
                config("default rule: burst_rate must be at least 1".into()),
                At::Default,
            ));
        }
        let mut ids = HashSet::new();
        let default_id = id.unwrap_or_else(|| "rule_default".into());
        ids.insert(default_id.clone());
        let default = CompiledRule::new(Rule {
            id: default_id,
            name,
            refill_rate,
            burst_rate,
            is_default: true,
            matcher: None,
            http_method: None,
        });
        let mut rules = Vec::with_capacity(self.rules.len());
        for (i, spec) in self.rules.into_iter().enumerate() {
            let config = |msg: String| (config(msg), At::Rule(i));
            if spec.burst_rate == 0 {
                return Err(config(format!(
                    "rule {:?}: burst_rate must be at least 1",
                    spec.name
                )));
            }
            if spec.matcher.is_empty() {
                return Err(config(format!("rule {:?}: matcher is empty", spec.name)));
            }
            let id = match spec.id {
                Some(id) if !id.trim().is_empty() => id,
                Some(_) => return Err(config(format!("rule {:?}: id is empty", spec.name))),
                None => unique_id(&slug(&spec.name), &ids),
            };
            if !ids.insert(id.clone()) {
                return Err(config(format!("two rules have the id {id:?}")));
            }
            rules.push(CompiledRule::new(Rule {
                id,
                name: spec.name,
                refill_rate: spec.refill_rate,
                burst_rate: spec.burst_rate,
                is_default: false,
                matcher: Some(spec.matcher),
                http_method: spec.http_method.map(|m| m.as_str().to_owned()),
            }));
        }
        Ok(RuleSet { default, rules })
    }
}

/// Which part of a [`RuleSetBuilder`] an error is about (read by the rules files' errors).
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(feature = "toml"), allow(dead_code))]
enum At {
    Default,
    /// The rule added `n`th (from 0).
    Rule(usize),
    Nowhere,
}

fn slug(name: &str) -> String {
    let mut out = String::from("rule_");
    let mut last_sep = true;
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
            last_sep = false;
        } else if !last_sep {
            out.push('_');
            last_sep = true;
        }
    }
    while out.ends_with('_') && out.len() > "rule_".len() {
        out.pop();
    }
    out
}

fn unique_id(base: &str, taken: &HashSet<String>) -> String {
    if !taken.contains(base) {
        return base.to_owned();
    }
    (2..)
        .map(|n| format!("{base}_{n}"))
        .find(|id| !taken.contains(id))
        .unwrap_or_else(|| unreachable!("an unbounded range always has a free id"))
}

#[cfg(feature = "toml")]
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlRules {
    default: toml::Spanned<TomlDefault>,
    #[serde(default)]
    rules: Vec<toml::Spanned<TomlRule>>,
}

#[cfg(feature = "toml")]
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlDefault {
    id: Option<String>,
    name: Option<String>,
    #[serde(alias = "refill")]
    refill_rate: RefillRate,
    burst_rate: u64,
}

#[cfg(feature = "toml")]
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
#[cfg(feature = "toml")]
const MAX_TOML_NESTING: usize = 32;

/// The line where a TOML text first nests `[` or `{` more than [`MAX_TOML_NESTING`] deep,
/// outside strings and comments. The TOML parser recurses on nesting, so a hostile file could
/// otherwise overflow the stack of the thread that reads it.
#[cfg(feature = "toml")]
fn toml_nested_too_deep(text: &str) -> Option<usize> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> RuleSet {
        RuleSet::demo()
    }

    #[test]
    fn demo_rules_resolve_as_documented() {
        let rules = demo();
        let email = rules.resolve(&Target::operation("send_email"));
        assert_eq!(
            (email.id.as_str(), email.burst_rate),
            ("rule_send_email", 10)
        );
        let hello = rules.resolve(&Target::path(Method::GET, "/hello"));
        assert_eq!((hello.id.as_str(), hello.burst_rate), ("rule_hello", 20));
        let items = rules.resolve(&Target::path(Method::GET, "/items/42"));
        assert!(items.is_default);
        assert_eq!(items.burst_rate, 5);
        assert!(rules.resolve(&Target::Default).is_default);
    }

    #[test]
    fn matchers_are_unanchored_regexes() {
        let rules = RuleSet::builder()
            .default_rule(RefillRate::per_second(1), 1)
            .operation("emails", "email", RefillRate::per_second(1), 7)
            .build()
            .unwrap();
        assert_eq!(
            rules
                .resolve(&Target::operation("send_email_now"))
                .burst_rate,
            7
        );
        assert!(rules.resolve(&Target::operation("sms")).is_default);
    }

    #[test]
    fn matcher_that_does_not_compile_is_a_literal() {
        let rules = RuleSet::builder()
            .default_rule(RefillRate::per_second(1), 1)
            .operation("weird", "send(email", RefillRate::per_second(1), 7)
            .build()
            .unwrap();
        assert_eq!(
            rules.resolve(&Target::operation("send(email")).burst_rate,
            7
        );
        assert!(rules.resolve(&Target::operation("send(email2")).is_default);
        assert!(rules.resolve(&Target::operation("sendemail")).is_default);
    }

    #[test]
    fn methods_are_compared_exactly_and_kinds_do_not_cross() {
        let rules = demo();
        // A path rule never matches an operation, and vice versa.
        assert!(rules.resolve(&Target::operation("/hello")).is_default);
        assert!(
            rules
                .resolve(&Target::path(Method::POST, "send_email"))
                .is_default
        );
        // Method comparison is exact, case included.
        let lower = Method::from_bytes(b"get").unwrap();
        assert!(rules.resolve(&Target::path(lower, "/hello")).is_default);
        // Unanchored at the end: /hello/there matches ^/hello.
        assert_eq!(
            rules
                .resolve(&Target::path(Method::GET, "/hellothere"))
                .burst_rate,
            20
        );
        assert!(
            rules
                .resolve(&Target::path(Method::GET, "/x/hello"))
                .is_default
        );
    }

    #[test]
    fn first_matching_rule_wins() {
        let rules = RuleSet::builder()
            .default_rule(RefillRate::per_second(1), 1)
            .operation("a", "mail", RefillRate::per_second(1), 2)
            .operation("b", "^send_mail$", RefillRate::per_second(1), 3)
            .build()
            .unwrap();
        assert_eq!(rules.resolve(&Target::operation("send_mail")).burst_rate, 2);
    }

    #[test]
    fn builder_rejects_bad_rules() {
        let no_default = RuleSet::builder().build().unwrap_err();
        assert_eq!(no_default.kind(), ErrorKind::Configuration);
        let zero = RuleSet::builder()
            .default_rule(RefillRate::per_second(1), 1)
            .operation("z", "z", RefillRate::per_second(1), 0)
            .build();
        assert!(zero.is_err());
        let dup = RuleSet::builder()
            .default_rule(RefillRate::per_second(1), 1)
            .rule(RuleSpec::operation("a", "a", RefillRate::per_second(1), 1).with_id("x"))
            .rule(RuleSpec::operation("b", "b", RefillRate::per_second(1), 1).with_id("x"))
            .build()
            .unwrap_err();
        assert!(dup.message().contains("\"x\""));
        let empty = RuleSet::builder()
            .default_rule(RefillRate::per_second(1), 1)
            .operation("e", "", RefillRate::per_second(1), 1)
            .build();
        assert!(empty.is_err());
    }

    #[test]
    fn generated_ids_are_unique_slugs() {
        let rules = RuleSet::builder()
            .default_rule(RefillRate::per_second(1), 1)
            .operation("Send Email!", "a", RefillRate::per_second(1), 1)
            .operation("send email", "b", RefillRate::per_second(1), 1)
            .build()
            .unwrap();
        let ids: Vec<_> = rules.rules().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids,
            ["rule_default", "rule_send_email", "rule_send_email_2"]
        );
    }

    #[cfg(feature = "toml")]
    #[test]
    fn toml_errors_are_configuration_errors() {
        for bad in [
            "",                                                      // no default
            "[default]\nrefill_rate = 1\nburst_rate = 5\nbogus = 1", // unknown field
            "[default]\nrefill_rate = -1\nburst_rate = 5",           // negative
            "[default]\nrefill_rate = 1\nburst_rate = 5\n[[rules]]\nname='x'\nmatcher='x'\nhttp_method='G T'\nrefill_rate=1\nburst_rate=1",
        ] {
            let e = RuleSet::from_toml_str(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Configuration, "{bad}");
        }
        let missing = RuleSet::from_toml_file("/nonexistent/rules.toml").unwrap_err();
        assert!(missing.message().contains("/nonexistent/rules.toml"));
        // A bad rate names the line and says how to write one.
        let e = RuleSet::from_toml_str("[default]\nrefill = \"3/fortnight\"\nburst_rate = 5")
            .unwrap_err();
        assert!(e.message().contains("line 2"), "{e}");
        assert!(e.message().contains("10/hour"), "{e}");
    }

    #[cfg(feature = "toml")]
    #[test]
    fn errors_found_after_parsing_name_the_line_of_their_rule() {
        let rule = |name: &str, extra: &str| {
            format!("\n[[rules]]\nname = '{name}'\nmatcher = 'x'\nrefill_rate = 1\n{extra}\n")
        };
        let head = "# rules\n[default]\nrefill_rate = 1\nburst_rate = 5\n";
        let cases = [
            (
                format!("{head}{}", rule("a", "burst_rate = 0")),
                "line 6: rule \"a\": burst_rate must be at least 1",
            ),
            (
                format!(
                    "{head}{}{}",
                    rule("a", "burst_rate = 1\nid = 'x'"),
                    rule("b", "burst_rate = 1\nid = 'x'")
                ),
                "line 13: two rules have the id \"x\"",
            ),
            (
                format!("{head}{}", rule("a", "burst_rate = 1\nhttp_method = 'G T'")),
                "line 6: rule \"a\": invalid http_method",
            ),
            (
                "[default]\nrefill_rate = 1\nburst_rate = 0\n".to_owned(),
                "line 1: default rule: burst_rate must be at least 1",
            ),
        ];
        for (text, expected) in cases {
            let e = RuleSet::from_toml_str(&text).unwrap_err();
            assert!(e.message().contains(expected), "{text}\n=> {e}");
        }
    }

    #[test]
    fn brackets_in_strings_and_comments_do_not_count_as_nesting() {
        let deep = "[".repeat(100);
        let text = format!(
            "# {deep}\n[default]\nname = \"{deep}\\\"{deep}\"\nid = '{deep}'\nrefill_rate = 1\n\
             burst_rate = 5\n[[rules]]\nname = \"\"\"\n{deep}\n\"\"\"\nmatcher = '''[\\[]{{3}}'''\n\
             refill_rate = 1\nburst_rate = 1\n"
        );
        assert_eq!(toml_nested_too_deep(&text), None);
        let rules = RuleSet::from_toml_str(&text).unwrap();
        assert_eq!(rules.default_rule().name, format!("{deep}\"{deep}"));
        assert_eq!(toml_nested_too_deep("a = 1\nb = [[[[\n"), None);
        assert_eq!(
            toml_nested_too_deep(&format!("\n\nb = {}", "[".repeat(33))),
            Some(3)
        );
    }

    #[test]
    fn deeply_nested_matchers_are_literals_not_a_stack_overflow() {
        for pattern in [
            format!("z{}", "*".repeat(240)),
            "(".repeat(240) + &")".repeat(240),
        ] {
            let probe = pattern.clone();
            let literal = std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let m = Matcher::compile(&probe);
                    (matches!(m, Matcher::Literal(_)), m.is_match(&probe))
                })
                .unwrap()
                .join()
                .unwrap();
            assert_eq!(literal, (true, true), "{pattern}");
        }
        assert!(matches!(
            Matcher::compile("^/a(/(b|c)+)*$"),
            Matcher::Regex(_)
        ));
    }

    #[test]
    fn deeply_nested_rules_files_are_an_error_not_a_stack_overflow() {
        // Found by fuzzing: nesting a few hundred deep overflowed a 2 MiB thread stack (a
        // tokio worker's, where the server reloads its rules) inside the TOML parser.
        for open in ["[", "{a=", "a=["] {
            let text = format!("x = {}", open.repeat(100_000));
            let outcome = std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || RuleSet::from_toml_str(&text).map(|_| ()))
                .unwrap()
                .join()
                .unwrap();
            let e = outcome.unwrap_err();
            assert!(e.message().contains("nested"), "{e}");
        }
    }

    #[test]
    fn toml_rates_are_exact_in_every_form() {
        let rules = RuleSet::from_toml_str(
            r#"
            [default]
            refill = "100/day"
            burst_rate = 5

            [[rules]]
            name = "hourly"
            matcher = "^hourly$"
            refill = "10/hour"
            burst_rate = 10

            [[rules]]
            name = "decimal"
            matcher = "^decimal$"
            refill_rate = 0.000277778
            burst_rate = 1

            [[rules]]
            name = "daily"
            matcher = "^daily$"
            refill_rate = "1/day"
            burst_rate = 1

            [[rules]]
            name = "whole"
            matcher = "^whole$"
            refill_rate = 2
            burst_rate = 1
            "#,
        )
        .unwrap();
        let rate = |op: &str| rules.resolve(&Target::operation(op)).refill_rate;
        assert_eq!(rules.default_rule().refill_rate, RefillRate::per_day(100));
        assert_eq!(rate("hourly"), RefillRate::per_hour(10));
        assert_eq!(rate("daily"), RefillRate::per_day(1));
        assert_eq!(rate("whole"), RefillRate::per_second(2));
        let decimal = rate("decimal").time_per_token().unwrap().as_secs_f64();
        assert!((decimal - 3600.0).abs() < 3.6, "{decimal}");
        assert_eq!(
            rules.default_rule().refill_rate.time_per_token(),
            Some(std::time::Duration::from_secs(864))
        );
        assert!(
            rules.to_string().contains("refill 10/hour, burst 10"),
            "{rules}"
        );
    }

    #[test]
    fn oversized_regex_falls_back_to_literal() {
        let huge = "(a|b|c|d|e|f|g|h|i|j){1,1000}".repeat(20);
        let m = Matcher::compile(&huge);
        assert!(matches!(m, Matcher::Literal(_)));
    }
}
