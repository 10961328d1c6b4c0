//! [`RuleSet`]: the default rule and the others, and which one a target falls under.

use std::fmt;

use crate::{Rule, Target};

use super::matcher::CompiledRule;

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
    pub(super) default: CompiledRule,
    pub(super) rules: Vec<CompiledRule>,
}

impl RuleSet {
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
