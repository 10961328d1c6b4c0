//! The key of a bucket: `<prefix>:<application>:<rule id>:<user>`, each part after the prefix
//! percent-encoded.

use std::fmt::Write as _;

use lightrate_core::{Error, ErrorKind};

/// Bytes written as themselves in a key part; every other byte is `%XX` (upper-case hex).
///
/// Left out on purpose: `:` (the separator, so the parts can always be told apart), `{` and `}`
/// (Redis Cluster hash tags: with no braces in a key, Cluster hashes the whole key, so one
/// user's buckets spread over the slots and no identifier can pin keys to one slot), `%` (the
/// escape), spaces, control characters and every non-ASCII byte.
fn is_plain(byte: u8) -> bool {
    byte.is_ascii_alphanumeric()
        || matches!(byte, b'-' | b'.' | b'_' | b'~' | b'@' | b'/' | b'+' | b'=')
}

/// Appends `part` to `key`, percent-encoded.
pub(crate) fn push_encoded(key: &mut String, part: &str) {
    for &byte in part.as_bytes() {
        if is_plain(byte) {
            key.push(char::from(byte));
        } else {
            let _ = write!(key, "%{byte:02X}");
        }
    }
}

/// `<prefix>:<application>:<rule id>:`, the start of every key of one rule.
pub(crate) fn rule_prefix(prefix: &str, application_id: &str, rule_id: &str) -> String {
    let mut key = String::with_capacity(prefix.len() + application_id.len() + rule_id.len() + 3);
    key.push_str(prefix);
    key.push(':');
    push_encoded(&mut key, application_id);
    key.push(':');
    push_encoded(&mut key, rule_id);
    key.push(':');
    key
}

/// The key of `user`'s bucket under the rule whose [`rule_prefix`] is `rule_prefix`.
pub(crate) fn bucket_key(rule_prefix: &str, user: &str) -> String {
    let mut key = String::with_capacity(rule_prefix.len() + user.len() + 8);
    key.push_str(rule_prefix);
    push_encoded(&mut key, user);
    key
}

/// Checks a key prefix: not empty, visible ASCII, no braces (they would make a Cluster hash
/// tag of part of every key).
pub(crate) fn check_prefix(prefix: &str) -> Result<(), Error> {
    let ok = !prefix.is_empty()
        && prefix
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}');
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Configuration,
            format!(
                "the Redis key prefix {prefix:?} must be visible ASCII, not empty, without braces"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(user: &str) -> String {
        bucket_key(&rule_prefix("lightrate", "app", "rule_hello"), user)
    }

    #[test]
    fn plain_identifiers_are_readable() {
        assert_eq!(key("alice"), "lightrate:app:rule_hello:alice");
        assert_eq!(
            key("a.b@example.com"),
            "lightrate:app:rule_hello:a.b@example.com"
        );
        assert_eq!(key("10.0.0.1"), "lightrate:app:rule_hello:10.0.0.1");
    }

    #[test]
    fn separators_braces_spaces_and_non_ascii_are_escaped() {
        assert_eq!(
            key("a:b {c} 100%"),
            "lightrate:app:rule_hello:a%3Ab%20%7Bc%7D%20100%25"
        );
        assert_eq!(key("é"), "lightrate:app:rule_hello:%C3%A9");
        assert_eq!(
            bucket_key(&rule_prefix("p", "my:app", "{r}"), "u"),
            "p:my%3Aapp:%7Br%7D:u"
        );
    }

    #[test]
    fn encoding_is_injective() {
        // Distinct identifiers never share a key, whatever bytes they hold.
        let ids = [
            "a:b", "a%3Ab", "a", "a:", "a%", "{a}", "%7Ba%7D", "a b", "a+b",
        ];
        let mut keys: Vec<_> = ids.iter().map(|id| key(id)).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), ids.len());
        for k in &keys {
            assert!(!k.contains('{') && !k.contains('}'), "{k}");
            assert_eq!(k.matches(':').count(), 3, "{k}");
        }
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(check_prefix("lightrate").is_ok());
        assert!(check_prefix("svc:limits").is_ok());
        for bad in ["", "a b", "{tag}", "é"] {
            assert_eq!(
                check_prefix(bad).unwrap_err().kind(),
                ErrorKind::Configuration,
                "{bad:?}"
            );
        }
    }
}
