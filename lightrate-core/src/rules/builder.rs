//! [`RuleSpec`] and [`RuleSetBuilder`]: rules written in code, and the ids they get.

use std::collections::HashSet;

use http::Method;

use crate::{Error, ErrorKind, RefillRate, Rule};

use super::matcher::CompiledRule;
use super::set::RuleSet;

impl RuleSet {
    /// A builder.
    pub fn builder() -> RuleSetBuilder {
        RuleSetBuilder::default()
    }

    /// The demo rules of the example apps: operation `send_email` refill 1/s burst 10; path
    /// `^/hello` method `GET` refill 1/s burst 20; default rule refill 1/s burst 5. For the
    /// routes with several limits, cost and waiting: operations `search_per_second` 2/s burst
    /// 5, `search_per_day` 12/day burst 12, `org_reports` 1/minute burst 8, `hello_pro` 10/s
    /// burst 50, `llm_requests` 1/s burst 20, `llm_tokens` 10/s burst 1000, `jobs` 5/s burst 1;
    /// path `^/reports` method `GET` 1/minute burst 5. Each rule's id is `rule_<name>`.
    pub fn demo() -> RuleSet {
        let op = |name: &str, rate, burst| RuleSpec {
            id: Some(format!("rule_{name}")),
            ..RuleSpec::operation(name, format!("^{name}$"), rate, burst)
        };
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
            .rule(op("search_per_second", RefillRate::per_second(2), 5))
            .rule(op("search_per_day", RefillRate::per_day(12), 12))
            .rule(op("org_reports", RefillRate::per_minute(1), 8))
            .rule(op("hello_pro", RefillRate::per_second(10), 50))
            .rule(op("llm_requests", RefillRate::per_second(1), 20))
            .rule(op("llm_tokens", RefillRate::per_second(10), 1000))
            .rule(op("jobs", RefillRate::per_second(5), 1))
            .rule(RuleSpec {
                id: Some("rule_reports".into()),
                name: "Reports".into(),
                ..RuleSpec::path(Method::GET, "^/reports", RefillRate::per_minute(1), 5)
            })
            .build()
            .unwrap_or_else(|_| unreachable!("the demo rules are valid"))
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

    pub(super) fn default_rule_named(
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
    pub(super) fn build_located(self) -> Result<RuleSet, (Error, At)> {
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
pub(super) enum At {
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
