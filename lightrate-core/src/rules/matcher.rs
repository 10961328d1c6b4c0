//! A rule's compiled matcher: a bounded regular expression, or a literal.

use crate::{Rule, Target};

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
