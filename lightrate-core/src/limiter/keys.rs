//! Map keys, with borrowed forms so that a lookup on the hot path allocates nothing.

use std::hash::{Hash, Hasher};

use http::Method;
use papaya::Equivalent;

use crate::Target;

/// A target, owned: the key of the target → rule cache, and what a lease sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TargetKey {
    Operation(Box<str>),
    Path { method: Method, path: Box<str> },
    Default,
}

impl TargetKey {
    pub(crate) fn from_target(target: &Target<'_>) -> Self {
        match target {
            Target::Operation(op) => TargetKey::Operation((**op).into()),
            Target::Path { method, path } => TargetKey::Path {
                method: method.clone(),
                path: (**path).into(),
            },
            Target::Default => TargetKey::Default,
        }
    }

    /// The target, borrowing from the key.
    pub(crate) fn as_target(&self) -> Target<'_> {
        match self {
            TargetKey::Operation(op) => Target::operation(&**op),
            TargetKey::Path { method, path } => Target::path(method.clone(), &**path),
            TargetKey::Default => Target::Default,
        }
    }

    fn matches(&self, target: &Target<'_>) -> bool {
        match (self, target) {
            (TargetKey::Operation(a), Target::Operation(b)) => **a == **b,
            (TargetKey::Path { method, path }, Target::Path { method: m, path: p }) => {
                method == m && **path == **p
            }
            (TargetKey::Default, Target::Default) => true,
            _ => false,
        }
    }
}

/// One hash for both forms of a target.
fn hash_target<H: Hasher>(target: &Target<'_>, state: &mut H) {
    match target {
        Target::Operation(op) => {
            state.write_u8(0);
            op.hash(state);
        }
        Target::Path { method, path } => {
            state.write_u8(1);
            method.as_str().hash(state);
            path.hash(state);
        }
        Target::Default => state.write_u8(2),
    }
}

impl Hash for TargetKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_target(&self.as_target(), state);
    }
}

/// A borrowed target, to look up a [`TargetKey`].
#[derive(Debug)]
pub(crate) struct TargetRef<'a, 'b>(pub(crate) &'a Target<'b>);

impl Hash for TargetRef<'_, '_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_target(self.0, state);
    }
}

impl Equivalent<TargetKey> for TargetRef<'_, '_> {
    fn equivalent(&self, key: &TargetKey) -> bool {
        key.matches(self.0)
    }
}

/// The key of a local bucket: (user, rule slot).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BucketKey {
    pub(crate) user: Box<str>,
    pub(crate) slot: u32,
}

impl Hash for BucketKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        BucketRef {
            user: &self.user,
            slot: self.slot,
        }
        .hash(state);
    }
}

/// A borrowed bucket key.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BucketRef<'a> {
    pub(crate) user: &'a str,
    pub(crate) slot: u32,
}

impl Hash for BucketRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u32(self.slot);
        self.user.hash(state);
    }
}

impl Equivalent<BucketKey> for BucketRef<'_> {
    fn equivalent(&self, key: &BucketKey) -> bool {
        key.slot == self.slot && *key.user == *self.user
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn borrowed_and_owned_forms_hash_and_compare_alike() {
        let hasher = foldhash::fast::FixedState::with_seed(7);
        for target in [
            Target::operation("send_email"),
            Target::path(Method::GET, "/items/42"),
            Target::path(Method::from_bytes(b"PURGE").unwrap(), "/x"),
            Target::Default,
        ] {
            let key = TargetKey::from_target(&target);
            assert_eq!(hasher.hash_one(&key), hasher.hash_one(TargetRef(&target)));
            assert!(TargetRef(&target).equivalent(&key));
            assert_eq!(key.as_target(), target);
        }
        let op = TargetKey::from_target(&Target::operation("/x"));
        assert!(!TargetRef(&Target::path(Method::GET, "/x")).equivalent(&op));

        let key = BucketKey {
            user: "alice".into(),
            slot: 3,
        };
        let r = BucketRef {
            user: "alice",
            slot: 3,
        };
        assert_eq!(hasher.hash_one(&key), hasher.hash_one(r));
        assert!(r.equivalent(&key));
        assert!(!BucketRef { slot: 4, ..r }.equivalent(&key));
    }
}
