//! Map keys, with borrowed forms so that a lookup on the hot path allocates nothing, and
//! hashes of two writes each (the hot path hashes two keys per request).

use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use http::Method;
use papaya::Equivalent;

use crate::Target;

/// A target, owned: the key of the target → rule cache, and what a lease sends.
// A tag byte of its own: niche-encoded in the method, the kind took 8 instructions to decode
// on every hit's comparison.
#[repr(u8)]
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

    /// Whether `target` is this key: the one-limit hit's comparison.
    #[inline]
    pub(crate) fn matches(&self, target: &Target<'_>) -> bool {
        self.is(target)
    }

    /// The comparison itself, inlined into the hit's [`matches`](Self::matches) and into
    /// [`InList`]'s.
    #[inline(always)]
    fn is(&self, target: &Target<'_>) -> bool {
        match (self, target) {
            (TargetKey::Operation(a), Target::Operation(b)) => {
                same_bytes(a.as_bytes(), b.as_bytes())
            }
            (TargetKey::Path { method, path }, Target::Path { method: m, path: p }) => {
                same_bytes(path.as_bytes(), p.as_bytes()) && method == m
            }
            (TargetKey::Default, Target::Default) => true,
            _ => false,
        }
    }
}

/// What a local hit is asked about: a [`Target`], or a method and path the caller has not
/// made one ([`PathProbe`], the web adapters' default path). The memos compare it with their
/// keys as it is; the target is built only off the memos' path, where it is needed.
pub(crate) trait Probe {
    /// Whether `key` is this target.
    fn matches(&self, key: &TargetKey) -> bool;

    /// Calls `f` with the target.
    fn with_target<R>(&self, f: impl FnOnce(&Target<'_>) -> R) -> R;
}

impl Probe for Target<'_> {
    #[inline]
    fn matches(&self, key: &TargetKey) -> bool {
        key.matches(self)
    }

    #[inline]
    fn with_target<R>(&self, f: impl FnOnce(&Target<'_>) -> R) -> R {
        f(self)
    }
}

/// A target compared with the comparison inlined where it is probed, without calling
/// [`TargetKey::matches`]: what a request's list of limits (`memo::hit_list`) and a
/// reservation's one limit probe the memos with. With those paths inlining `matches` too,
/// the compiler called it out of line in the one-limit hit (8 instructions a hit), and
/// behind one out-of-line call for them they paid 20 more a limit (BENCHMARKS.md).
#[derive(Clone, Copy, Debug)]
pub(crate) struct InList<'t, 'a>(pub(crate) &'t Target<'a>);

impl Probe for InList<'_, '_> {
    #[inline]
    fn matches(&self, key: &TargetKey) -> bool {
        key.is(self.0)
    }

    #[inline]
    fn with_target<R>(&self, f: impl FnOnce(&Target<'_>) -> R) -> R {
        f(self.0)
    }
}

/// A path target, as its method and path: what the default configuration of the web adapters
/// asks about, compared with the memos' keys without building a [`Target`] (and decoding it
/// again) on every request.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PathProbe<'a> {
    pub(crate) method: &'a Method,
    pub(crate) path: &'a str,
}

impl Probe for PathProbe<'_> {
    #[inline]
    fn matches(&self, key: &TargetKey) -> bool {
        match key {
            TargetKey::Path { method, path } => {
                same_bytes(path.as_bytes(), self.path.as_bytes()) && method == self.method
            }
            _ => false,
        }
    }

    #[inline]
    fn with_target<R>(&self, f: impl FnOnce(&Target<'_>) -> R) -> R {
        f(&Target::path(self.method.clone(), self.path))
    }
}

/// Who a local hit is for: an identifier's bytes, or a client's address not yet written as
/// text ([`IpProbe`], the web adapters' default path), which a memo of
/// that address's user compares as an address. The text is written only off the memos' path.
pub(crate) trait UserProbe {
    /// Whether this is the user whose identifier is `text`, which is the canonical text of
    /// `ip` when it has one.
    fn is(&self, text: &[u8], ip: Option<IpAddr>) -> bool;

    /// Calls `f` with the identifier's bytes.
    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R;
}

impl UserProbe for [u8] {
    #[inline]
    fn is(&self, text: &[u8], _: Option<IpAddr>) -> bool {
        same_bytes(text, self)
    }

    #[inline]
    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(self)
    }
}

/// A client's address as the limiter's hot path takes it: compared as an address with the
/// memo of its user, written as text only where the text is needed (the maps, the source).
#[derive(Clone, Copy, Debug)]
pub(crate) struct IpProbe(pub(crate) IpAddr);

impl UserProbe for IpProbe {
    #[inline]
    fn is(&self, _: &[u8], ip: Option<IpAddr>) -> bool {
        ip == Some(self.0)
    }

    #[inline]
    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(crate::ip::IpText::new(self.0).as_bytes())
    }
}

/// Whether two byte strings are equal: for the short ones of routes and identifiers (up to 32
/// bytes), two overlapping loads of each instead of a call to `memcmp`. Shared by the maps'
/// keys here and the in-flight caps' identifiers.
#[inline]
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    // The last bytes first: identifiers that differ often share a prefix ("user-000…").
    fn ends<const N: usize>(a: &[u8], b: &[u8]) -> bool {
        a.last_chunk::<N>() == b.last_chunk::<N>() && a.first_chunk::<N>() == b.first_chunk::<N>()
    }
    let n = a.len();
    if n != b.len() {
        false
    } else if n >= 8 {
        if n <= 16 {
            ends::<8>(a, b)
        } else if n <= 32 {
            ends::<16>(a, b)
        } else {
            a == b
        }
    } else if n >= 4 {
        ends::<4>(a, b)
    } else {
        a == b
    }
}

/// A word for a method: names under 8 bytes (every standard method) are their own bytes;
/// longer extension methods a hash of their name. A collision only costs hash quality: keys
/// are compared in full.
#[inline]
fn method_code(method: &Method) -> u64 {
    let name = method.as_str().as_bytes();
    if name.len() < 8 {
        let mut word = [0u8; 8];
        word[..name.len()].copy_from_slice(name);
        u64::from_le_bytes(word)
    } else {
        name.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        }) | (1 << 63)
    }
}

/// One hash for both forms of a target: a word for the kind (and method), then the bytes.
#[inline]
fn hash_target<H: Hasher>(target: &Target<'_>, state: &mut H) {
    match target {
        Target::Operation(op) => {
            state.write_u64(0);
            state.write(op.as_bytes());
        }
        Target::Path { method, path } => {
            state.write_u64(method_code(method));
            state.write(path.as_bytes());
        }
        Target::Default => state.write_u64(u64::MAX),
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
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_target(self.0, state);
    }
}

impl Equivalent<TargetKey> for TargetRef<'_, '_> {
    #[inline]
    fn equivalent(&self, key: &TargetKey) -> bool {
        key.matches(self.0)
    }
}

/// How many bytes of a user identifier are kept in the key itself: most identifiers (ids,
/// IPv4 and IPv6 addresses, short names) fit, so comparing keys reads no other memory.
const INLINE: usize = 22;

/// A user identifier, inline when short.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum UserKey {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<[u8]>),
}

impl UserKey {
    /// The key of an identifier's bytes (UTF-8, as every identifier is).
    pub(crate) fn from_bytes(user: &[u8]) -> Self {
        if user.len() <= INLINE {
            let mut bytes = [0u8; INLINE];
            bytes[..user.len()].copy_from_slice(user);
            UserKey::Inline {
                len: user.len() as u8,
                bytes,
            }
        } else {
            UserKey::Heap(user.into())
        }
    }

    #[inline]
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            UserKey::Inline { len, bytes } => &bytes[..usize::from(*len)],
            UserKey::Heap(s) => s,
        }
    }

    /// The identifier (made from a `&str`, so always UTF-8).
    pub(crate) fn to_str_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(self.as_bytes())
    }
}

/// The key of a local bucket: (user, rule slot).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BucketKey {
    pub(crate) user: UserKey,
    pub(crate) slot: u32,
}

impl BucketKey {
    pub(crate) fn new(user: &str, slot: u32) -> Self {
        Self::from_bytes(user.as_bytes(), slot)
    }

    pub(crate) fn from_bytes(user: &[u8], slot: u32) -> Self {
        BucketKey {
            user: UserKey::from_bytes(user),
            slot,
        }
    }
}

#[inline]
fn hash_bucket<H: Hasher>(user: &[u8], slot: u32, state: &mut H) {
    state.write_u32(slot);
    state.write(user);
}

impl Hash for BucketKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_bucket(self.user.as_bytes(), self.slot, state);
    }
}

/// A borrowed bucket key.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BucketRef<'a> {
    pub(crate) user: &'a [u8],
    pub(crate) slot: u32,
}

impl Hash for BucketRef<'_> {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        hash_bucket(self.user, self.slot, state);
    }
}

impl Equivalent<BucketKey> for BucketRef<'_> {
    #[inline]
    fn equivalent(&self, key: &BucketKey) -> bool {
        key.slot == self.slot && same_bytes(key.user.as_bytes(), self.user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn short_and_long_byte_strings_compare_exactly() {
        let samples: Vec<String> = (0..48)
            .map(|n| (0..n).map(|i| char::from(b'a' + (i % 26) as u8)).collect())
            .collect();
        for a in &samples {
            for b in &samples {
                assert_eq!(
                    same_bytes(a.as_bytes(), b.as_bytes()),
                    a == b,
                    "{a:?} {b:?}"
                );
            }
            // One byte changed anywhere is seen.
            for at in 0..a.len() {
                let mut c = a.clone().into_bytes();
                c[at] ^= 1;
                assert!(!same_bytes(a.as_bytes(), &c), "{a:?} at {at}");
            }
        }
    }

    #[test]
    fn a_path_probe_matches_what_its_target_matches() {
        let targets = [
            Target::operation("/items/42"),
            Target::path(Method::GET, "/items/42"),
            Target::path(Method::POST, "/items/42"),
            Target::path(Method::GET, "/items/43"),
            Target::path(Method::from_bytes(b"PURGE").unwrap(), "/items/42"),
            Target::Default,
        ];
        for key in targets.iter().map(TargetKey::from_target) {
            for target in &targets {
                let Target::Path { method, path } = target else {
                    continue;
                };
                let probe = PathProbe { method, path };
                assert_eq!(
                    probe.matches(&key),
                    key.matches(target),
                    "{key:?} {target:?}"
                );
                assert!(probe.with_target(|t| t == target));
            }
        }
    }

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
        assert_ne!(method_code(&Method::GET), method_code(&Method::POST));
        assert_ne!(
            method_code(&Method::from_bytes(b"GET2").unwrap()),
            method_code(&Method::GET)
        );
        assert!(method_code(&Method::from_bytes(b"LONGMETHOD").unwrap()) >= 1 << 63);

        for user in [
            "alice",
            "",
            "exactly-twenty-two-ch",
            "a much longer identifier than that",
        ] {
            let key = BucketKey::new(user, 3);
            let r = BucketRef {
                user: user.as_bytes(),
                slot: 3,
            };
            assert_eq!(hasher.hash_one(&key), hasher.hash_one(r));
            assert!(r.equivalent(&key));
            assert!(!BucketRef { slot: 4, ..r }.equivalent(&key));
            assert_eq!(key.user.to_str_lossy(), user);
        }
        assert!(!BucketRef {
            user: b"alicf",
            slot: 3
        }
        .equivalent(&BucketKey::new("alice", 3)));
        assert!(matches!(
            UserKey::from_bytes(b"0123456789012345678901"),
            UserKey::Inline { .. }
        ));
        assert!(matches!(
            UserKey::from_bytes(b"01234567890123456789012"),
            UserKey::Heap(_)
        ));
    }
}
