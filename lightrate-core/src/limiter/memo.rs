//! A per-thread memo of recently resolved targets, in front of the target → rule map.
//!
//! A server's requests hit a handful of routes over and over; comparing a request's target with
//! the last few resolved on this thread is cheaper than hashing it and probing the shared map.
//! The map stays the truth: a memo entry is used only while its limiter's generation (bumped
//! whenever a cached mapping may change) is the one it was filled at and its own copy of the
//! expiry has not passed.
//!
//! (Buckets are not memoized: a bucket shared with a memo would have to live apart from its map
//! entry, and among many users that costs every hit one more cache miss than the memo saves
//! for a few.)

use std::cell::RefCell;
use std::sync::Arc;

use super::decision::RuleSummary;
use super::keys::TargetKey;
use crate::Target;

const SLOTS: usize = 4;

/// One remembered resolution.
struct Memo {
    limiter: u64,
    generation: u64,
    expires_ms: u64,
    rule: RuleSummary,
    key: Arc<TargetKey>,
}

struct Memos {
    slots: [Option<Memo>; SLOTS],
    next: usize,
}

thread_local! {
    static MEMOS: RefCell<Memos> = const {
        RefCell::new(Memos {
            slots: [const { None }; SLOTS],
            next: 0,
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
                .slots
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
        let memo = Memo {
            limiter,
            generation,
            expires_ms: resolved.expires_ms,
            rule: resolved.rule,
            key: key.clone(),
        };
        let same = memos.slots.iter().position(|m| {
            m.as_ref()
                .is_some_and(|m| m.limiter == limiter && *m.key == **key)
        });
        let at = same.unwrap_or_else(|| {
            let at = memos.next;
            memos.next = (at + 1) % SLOTS;
            at
        });
        memos.slots[at] = Some(memo);
    });
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
        let keys: Vec<_> = (0..SLOTS + 1)
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
        assert!((1..=SLOTS).all(found));
    }
}
