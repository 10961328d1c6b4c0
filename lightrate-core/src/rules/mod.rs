//! Rules: which rule a [`Target`] falls under, with the SDKs' matcher semantics.
//!
//! A rule without an HTTP method is an *operation rule*: its matcher is tested against the
//! operation name. A rule with a method is a *path rule*: the method must be equal (exactly,
//! case included) and the matcher is tested against the path. A matcher is an unanchored
//! regular expression; one that does not compile is compared as a literal string. What no rule
//! matches falls to the default rule.
//!
//! | file | what it holds |
//! |---|---|
//! | `matcher.rs` | a rule's compiled matcher and its limits |
//! | `set.rs` | [`RuleSet`]: the rules, and which one a target falls under |
//! | `builder.rs` | [`RuleSpec`], [`RuleSetBuilder`]: rules written in code, and their ids |
//! | `toml.rs` | rules files (the `toml` feature) |

mod builder;
mod matcher;
mod set;
#[cfg(feature = "toml")]
mod toml;

pub use builder::{RuleSetBuilder, RuleSpec};
pub(crate) use matcher::CompiledRule;
pub use set::RuleSet;

#[cfg(test)]
mod tests {
    use http::Method;

    use super::matcher::Matcher;
    #[cfg(feature = "toml")]
    use super::toml::toml_nested_too_deep;
    use super::*;
    use crate::{ErrorKind, RefillRate, Target};

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
