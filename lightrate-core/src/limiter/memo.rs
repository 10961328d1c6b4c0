//! Per-thread memos in front of the maps of the hot path: the targets this thread resolved
//! last, and the buckets of the users it served twice in a row.
//!
//! A server's requests hit a handful of routes over and over, and a busy user's requests come
//! one after the other: comparing a request's target and user with the last few seen on this
//! thread is cheaper than hashing them, entering the maps' epoch and probing. The maps stay the
//! truth:
//!
//! - a target memo is used only while its limiter's generation (bumped whenever a cached
//!   mapping may change) is the one it was filled at, and its own copy of the expiry has not
//!   passed;
//! - a bucket memo holds the bucket itself (buckets are shared, `Arc`): a bucket removed from
//!   its map is dead first, and a dead bucket never answers, so a memo of one only sends the
//!   request to the map. A bucket is memoized on the second request of its user in a row, so
//!   that traffic from many users touches no reference count.

use std::cell::RefCell;
use std::sync::Arc;

use super::bucket::LocalBucket;
use super::decision::RuleSummary;
use super::keys::{same_bytes, TargetKey};
use crate::Target;

const TARGETS: usize = 4;
const BUCKETS: usize = 2;

/// The longest identifier whose bucket is memoized (an IPv6 address, a UUID fit): the memos
/// hold identifiers inline, so that filling them never allocates.
const USER_BYTES: usize = 48;

/// An identifier of at most [`USER_BYTES`] bytes, inline.
#[derive(Clone, Copy)]
struct User {
    len: u8,
    bytes: [u8; USER_BYTES],
}

impl User {
    fn new(user: &[u8]) -> Option<Self> {
        let mut bytes = [0; USER_BYTES];
        bytes.get_mut(..user.len())?.copy_from_slice(user);
        Some(User {
            len: user.len() as u8,
            bytes,
        })
    }

    #[inline]
    fn is(&self, user: &[u8]) -> bool {
        same_bytes(&self.bytes[..usize::from(self.len)], user)
    }
}

/// One remembered resolution.
struct TargetMemo {
    limiter: u64,
    generation: u64,
    expires_ms: u64,
    rule: RuleSummary,
    key: Arc<TargetKey>,
}

/// One remembered bucket.
struct BucketMemo {
    limiter: u64,
    slot: u32,
    user: User,
    bucket: Arc<LocalBucket>,
}

/// The last bucket key looked up in a map, not memoized (yet).
struct Candidate {
    limiter: u64,
    slot: u32,
    user: User,
}

struct Memos {
    targets: [Option<TargetMemo>; TARGETS],
    next_target: usize,
    buckets: [Option<BucketMemo>; BUCKETS],
    next_bucket: usize,
    candidate: Option<Candidate>,
}

thread_local! {
    static MEMOS: RefCell<Memos> = const {
        RefCell::new(Memos {
            targets: [const { None }; TARGETS],
            next_target: 0,
            buckets: [const { None }; BUCKETS],
            next_bucket: 0,
            candidate: None,
        })
    };
}

/// What a memo (or the map behind it) says about a target.
#[derive(Clone, Copy, Debug)]
pub(super) struct Resolved {
    pub(super) rule: RuleSummary,
    pub(super) expires_ms: u64,
}

/// Looks `target` up in this thread's memo for `limiter` at `generation`.
#[inline]
pub(super) fn find(limiter: u64, generation: u64, target: &Target<'_>) -> Option<Resolved> {
    MEMOS
        .try_with(|memos| {
            let memos = memos.try_borrow().ok()?;
            memos
                .targets
                .iter()
                .flatten()
                .find(|m| {
                    m.limiter == limiter && m.generation == generation && m.key.matches(target)
                })
                .map(|memo| Resolved {
                    rule: memo.rule,
                    expires_ms: memo.expires_ms,
                })
        })
        .ok()
        .flatten()
}

/// Remembers a resolution on this thread (replacing the oldest, or the same target's).
#[cold]
pub(super) fn remember(limiter: u64, generation: u64, resolved: Resolved, key: &Arc<TargetKey>) {
    let _ = MEMOS.try_with(|memos| {
        let Ok(mut memos) = memos.try_borrow_mut() else {
            return;
        };
        let memo = TargetMemo {
            limiter,
            generation,
            expires_ms: resolved.expires_ms,
            rule: resolved.rule,
            key: key.clone(),
        };
        let same = memos.targets.iter().position(|m| {
            m.as_ref()
                .is_some_and(|m| m.limiter == limiter && *m.key == **key)
        });
        let at = same.unwrap_or_else(|| {
            let at = memos.next_target;
            memos.next_target = (at + 1) % TARGETS;
            at
        });
        memos.targets[at] = Some(memo);
    });
}

/// Calls `take` with this thread's memo of the bucket of (user, slot) of `limiter`, if it has
/// one and it is alive; `None` otherwise (a dead one is forgotten).
#[inline]
pub(super) fn with_bucket<R>(
    limiter: u64,
    user: &[u8],
    slot: u32,
    take: impl FnOnce(&LocalBucket) -> R,
) -> Option<R> {
    MEMOS
        .try_with(|memos| {
            let mut memos = memos.try_borrow_mut().ok()?;
            let at = memos.buckets.iter().position(|m| {
                m.as_ref()
                    .is_some_and(|m| m.slot == slot && m.limiter == limiter && m.user.is(user))
            })?;
            let memo = memos.buckets[at].as_ref()?;
            if memo.bucket.is_dead() {
                memos.buckets[at] = None;
                return None;
            }
            Some(take(&memo.bucket))
        })
        .ok()
        .flatten()
}

/// Notes that (user, slot) of `limiter` was found in its map: its bucket is memoized if the
/// last one found was the same.
#[inline]
pub(super) fn found_bucket(limiter: u64, user: &[u8], slot: u32, bucket: &Arc<LocalBucket>) {
    let _ = MEMOS.try_with(|memos| {
        let Ok(mut memos) = memos.try_borrow_mut() else {
            return;
        };
        let again = memos
            .candidate
            .as_ref()
            .is_some_and(|c| c.slot == slot && c.limiter == limiter && c.user.is(user));
        if again {
            memoize(&mut memos, limiter, user, slot, bucket);
        } else {
            // An identifier too long for the memos is not memoized.
            memos.candidate = User::new(user).map(|user| Candidate {
                limiter,
                slot,
                user,
            });
        }
    });
}

#[cold]
fn memoize(memos: &mut Memos, limiter: u64, user: &[u8], slot: u32, bucket: &Arc<LocalBucket>) {
    let Some(user) = User::new(user) else {
        return;
    };
    let at = memos.next_bucket;
    memos.next_bucket = (at + 1) % BUCKETS;
    memos.buckets[at] = Some(BucketMemo {
        limiter,
        slot,
        user,
        bucket: bucket.clone(),
    });
    memos.candidate = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RefillRate;
    use http::Method;

    fn rule(slot: u32) -> RuleSummary {
        RuleSummary {
            slot,
            burst_rate: 10,
            refill_rate: RefillRate::per_second(1),
            is_default: false,
        }
    }

    #[test]
    fn hits_only_for_the_same_limiter_generation_and_target() {
        let target = Target::path(Method::GET, "/memo/a");
        let key = Arc::new(TargetKey::from_target(&target));
        let resolved = Resolved {
            rule: rule(7),
            expires_ms: 100,
        };
        remember(1_000_001, 5, resolved, &key);
        let slot =
            |limiter, generation, t: &Target<'_>| find(limiter, generation, t).map(|r| r.rule.slot);
        assert_eq!(slot(1_000_001, 5, &target), Some(7));
        assert_eq!(slot(1_000_001, 6, &target), None, "another generation");
        assert_eq!(slot(1_000_002, 5, &target), None, "another limiter");
        assert_eq!(
            slot(1_000_001, 5, &Target::path(Method::POST, "/memo/a")),
            None
        );
        // Remembering the same target again replaces it rather than filling a slot.
        remember(
            1_000_001,
            6,
            Resolved {
                rule: rule(8),
                expires_ms: 200,
            },
            &key,
        );
        assert_eq!(slot(1_000_001, 6, &target), Some(8));
        assert_eq!(slot(1_000_001, 5, &target), None);
    }

    #[test]
    fn holds_a_few_targets() {
        let keys: Vec<_> = (0..TARGETS + 1)
            .map(|i| Arc::new(TargetKey::from_target(&Target::operation(format!("op{i}")))))
            .collect();
        for (i, key) in keys.iter().enumerate() {
            let resolved = Resolved {
                rule: rule(i as u32),
                expires_ms: 100,
            };
            remember(2_000_001, 1, resolved, key);
        }
        let found = |i: usize| find(2_000_001, 1, &keys[i].as_target()).is_some();
        assert!(!found(0), "the oldest was replaced");
        assert!((1..=TARGETS).all(found));
    }

    #[test]
    fn a_bucket_is_memoized_on_its_second_find_and_forgotten_dead() {
        let bucket = Arc::new(LocalBucket::new(0));
        bucket.deposit(5, 1_000, 0).unwrap();
        let tokens = |user: &[u8]| with_bucket(3_000_001, user, 1, |b| b.tokens());
        found_bucket(3_000_001, b"alice", 1, &bucket);
        assert_eq!(tokens(b"alice"), None, "seen once");
        found_bucket(3_000_001, b"bob", 1, &bucket);
        found_bucket(3_000_001, b"alice", 1, &bucket);
        assert_eq!(tokens(b"alice"), None, "not twice in a row");
        found_bucket(3_000_001, b"alice", 1, &bucket);
        assert_eq!(tokens(b"alice"), Some(5));
        assert_eq!(with_bucket(3_000_001, b"alice", 2, |b| b.tokens()), None);
        assert_eq!(with_bucket(3_000_002, b"alice", 1, |b| b.tokens()), None);
        bucket.kill();
        assert_eq!(tokens(b"alice"), None, "a dead bucket is not used");
        assert_eq!(Arc::strong_count(&bucket), 1, "and not kept");
        // An identifier longer than the memos hold is never memoized.
        let long = [b'x'; USER_BYTES + 1];
        let alive = Arc::new(LocalBucket::new(0));
        found_bucket(3_000_001, &long, 1, &alive);
        found_bucket(3_000_001, &long, 1, &alive);
        assert_eq!(with_bucket(3_000_001, &long, 1, |b| b.tokens()), None);
        assert_eq!(Arc::strong_count(&alive), 1);
    }
}
