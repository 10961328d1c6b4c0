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
//! - a bucket memo holds the bucket itself, shared with its map entry
//!   ([`Held::Hot`](super::buckets::Held)): a bucket leaves its map dead, and a dead one is
//!   never used, so a memo of one only sends the request to the map.
//!
//! Buckets start inline in their entries, where a hit among many users finds them with one
//! cache miss; only the bucket of a user this thread served twice in a row is moved out to be
//! shared (once), so that traffic from many users pays for no memo but a compare of addresses.
//!
//! A request decided against several limits looks each up in its own [`Lane`] (its place in
//! the request's list): each lane remembers where it found its target and bucket last, so that
//! the limits of one request, which come in the same order every time, do not take turns
//! evicting each other's places (measured: two limits searched the memos on every hit and
//! never memoized a bucket, 1 498 instructions a request; BENCHMARKS.md).

use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::sync::Arc;

use super::bucket::LocalBucket;
use super::decision::RuleSummary;
use super::keys::{InList, Probe, TargetKey, UserProbe};
use crate::ip::IpText;
use crate::Target;

/// Memo slots shared by the one-limit hits and the first limit of a request's list (taken in
/// turn); the lanes after the first have one more slot each, their own, past these. A lane's
/// slots stay empty where no request has more than one limit, and an empty slot costs a
/// search one compare. A power of two each, so that the last slot is found with a mask (a
/// bounds check instead cost the one-limit hit 2 instructions; the spare slots stay empty).
const TARGETS: usize = (4 + LANES).next_power_of_two();
const SHARED_TARGETS: usize = 4;
const BUCKETS: usize = (2 + LANES).next_power_of_two();
const SHARED_BUCKETS: usize = 2;

/// Lanes besides the memos' own: the places in a request's list of limits, after the first,
/// that remember their own places in the memos (the limits past the last share it).
const LANES: usize = 3;

/// The longest identifier whose bucket is memoized (an IPv6 address, a UUID fit): the memos
/// hold identifiers inline, so that filling them never allocates.
const USER_BYTES: usize = 48;

/// An identifier of at most [`USER_BYTES`] bytes, inline, and the address it is the canonical
/// text of, if any (so that the web adapters' default path compares addresses, not texts).
#[derive(Clone, Copy)]
struct User {
    len: u8,
    bytes: [u8; USER_BYTES],
    ip: Option<IpAddr>,
}

impl User {
    fn new(user: &[u8]) -> Option<Self> {
        let mut bytes = [0; USER_BYTES];
        bytes.get_mut(..user.len())?.copy_from_slice(user);
        // An address only if writing it gives back these very bytes: then comparing the
        // addresses is comparing the texts.
        let ip = std::str::from_utf8(user)
            .ok()
            .and_then(|text| text.parse::<IpAddr>().ok())
            .filter(|ip| IpText::new(*ip).as_bytes() == user);
        Some(User {
            len: user.len() as u8,
            bytes,
            ip,
        })
    }

    #[inline]
    fn is(&self, user: &(impl UserProbe + ?Sized)) -> bool {
        user.is(&self.bytes[..usize::from(self.len)], self.ip)
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

impl TargetMemo {
    /// Whether this is the memo of `target` for `limiter` at `generation`.
    #[inline(always)]
    fn is(&self, limiter: u64, generation: u64, target: &impl Probe) -> bool {
        self.limiter == limiter && self.generation == generation && target.matches(&self.key)
    }
}

impl BucketMemo {
    /// Whether this is the memo of `user`'s bucket of rule `slot` for `limiter`.
    #[inline(always)]
    fn is(&self, limiter: u64, slot: u32, user: &(impl UserProbe + ?Sized)) -> bool {
        self.slot == slot && self.limiter == limiter && self.user.is(user)
    }
}

struct Memos {
    targets: [Option<TargetMemo>; TARGETS],
    next_target: usize,
    buckets: [Option<BucketMemo>; BUCKETS],
    next_bucket: usize,
    /// The target slot and the bucket slot that answered last, for the memos' own place
    /// (first) and each lane's after it: a hit looks there first, and searches the others
    /// (out of line) only when it is another target or bucket. Searched inline, the loop
    /// made the compiler load and keep every part of the request's target before the first
    /// compare. A lane entered swaps its places with the first; a request's list reads the
    /// place of each limit's lane where it is, at its index (one array: 6 instructions a
    /// limit less than the first apart from the lanes).
    places: [(Cell<usize>, Cell<usize>); LANES + 1],
    /// The lane entered, 1-based; 0 for none (the first place's, the memos' own).
    lane: Cell<usize>,
}

impl Memos {
    /// The target slot that answered last, where a hit looks first.
    #[inline(always)]
    fn last_target(&self) -> &Cell<usize> {
        &self.places[0].0
    }

    /// The bucket slot that answered last, where a hit looks first.
    #[inline(always)]
    fn last_bucket(&self) -> &Cell<usize> {
        &self.places[0].1
    }

    /// The slots a search looks in: outside a lane, only the `shared` ones (the lanes' own are
    /// filled only in lanes).
    #[inline]
    fn searched<'m, T>(&self, slots: &'m [Option<T>], shared: usize) -> &'m [Option<T>] {
        if self.lane.get() == 0 {
            &slots[..shared]
        } else {
            slots
        }
    }
}

thread_local! {
    static MEMOS: RefCell<Memos> = const {
        RefCell::new(Memos {
            targets: [const { None }; TARGETS],
            next_target: 0,
            buckets: [const { None }; BUCKETS],
            next_bucket: 0,
            places: [const { (Cell::new(0), Cell::new(0)) }; LANES + 1],
            lane: Cell::new(0),
        })
    };
    /// The address of the bucket this thread last found in a map (not memoized), and what each
    /// lane keeps of it while another looks.
    static LAST_FOUND: (Cell<usize>, [Cell<usize>; LANES]) =
        const { (Cell::new(0), [const { Cell::new(0) }; LANES]) };
}

/// The limit at one place of a request's list, looking in the memos: while it is entered,
/// the memos look first where this place found its last, and what it finds is kept for it
/// (until [`leave`](Self::leave), or drop). The first place is the memos' own, where a
/// one-limit hit looks: entering it costs nothing.
pub(super) struct Lane(usize);

impl Lane {
    /// Enters the lane of the limit at `index` of its request's list.
    #[inline]
    pub(super) fn enter(index: usize) -> Lane {
        let lane = Lane(index.min(LANES));
        lane.swap(lane.0);
        lane
    }

    /// Leaves the lane (as dropping it does).
    #[inline]
    pub(super) fn leave(self) {}

    /// Swaps the lane's places with the memos' own: on entering, in; on leaving, back out;
    /// and notes `entered` as the lane entered.
    #[inline]
    fn swap(&self, entered: usize) {
        let Some(at) = self.0.checked_sub(1) else {
            return;
        };
        let _ = MEMOS.try_with(|memos| {
            if let Ok(memos) = memos.try_borrow() {
                let (target, bucket) = &memos.places[at + 1];
                memos.last_target().swap(target);
                memos.last_bucket().swap(bucket);
                memos.lane.set(entered);
            }
        });
        let _ = LAST_FOUND.try_with(|(last, lanes)| last.swap(&lanes[at]));
    }
}

impl Drop for Lane {
    #[inline]
    fn drop(&mut self) {
        self.swap(0);
    }
}

/// What a memo (or the map behind it) says about a target.
#[derive(Clone, Copy, Debug)]
pub(super) struct Resolved {
    pub(super) rule: RuleSummary,
    pub(super) expires_ms: u64,
}

/// Looks `target` and (`user`, its rule) up in this thread's memos for `limiter` at
/// `generation`: if the target is there (and its rule fresh at `now_ms`), calls `take` with the
/// rule and the bucket, if that is there too (and alive), and returns what `take` returns;
/// `false` if the target is not there.
///
/// `take` gets references and writes what it decides where its caller wants it: a value
/// returned through this closure and the thread-local's was copied several times over.
#[inline]
pub(super) fn hit(
    limiter: u64,
    generation: u64,
    now_ms: u64,
    target: &impl Probe,
    user: &(impl UserProbe + ?Sized),
    take: impl FnOnce(&RuleSummary, Option<&Arc<LocalBucket>>) -> bool,
) -> bool {
    MEMOS
        .try_with(|memos| {
            let Ok(memos) = memos.try_borrow() else {
                return false;
            };
            // The searches' closures are made in their arms: made once for both the last slot
            // and the search, they were written to the stack on every hit (8 instructions).
            let memo = match &memos.targets[memos.last_target().get() % TARGETS] {
                Some(m) if m.is(limiter, generation, target) => m,
                _ => match search(
                    memos.searched(&memos.targets, SHARED_TARGETS),
                    memos.last_target(),
                    |m: &TargetMemo| m.is(limiter, generation, target),
                ) {
                    Some(m) => m,
                    None => return false,
                },
            };
            if now_ms >= memo.expires_ms {
                return false;
            }
            let rule = &memo.rule;
            // A dead bucket is not filtered out here: its take says so (`Take::Expired` of a
            // dead bucket), off the hit's path, where reading its state twice cost 4
            // instructions a hit.
            let bucket = match &memos.buckets[memos.last_bucket().get() % BUCKETS] {
                Some(m) if m.is(limiter, rule.slot, user) => Some(m),
                _ => search(
                    memos.searched(&memos.buckets, SHARED_BUCKETS),
                    memos.last_bucket(),
                    |m: &BucketMemo| m.is(limiter, rule.slot, user),
                ),
            };
            take(rule, bucket.map(|memo| &memo.bucket))
        })
        .unwrap_or(false)
}

/// A limit of a request's list, as the memos look it up.
pub(super) trait Listed {
    /// Its target.
    fn target(&self) -> &Target<'_>;
    /// Its identifier's bytes.
    fn user(&self) -> &[u8];
}

/// The local hits of a request's list of limits, with one look at this thread's memos: for
/// each limit in turn, in its own lane, if its target and bucket are where its lane found
/// them last (the target's rule fresh at `now_ms`; a dead bucket is handed out, as [`hit`]
/// does, and its take says so), calls `take` with its index, the limit, its rule and bucket.
/// Stops at the first limit that is not there, or that `take` refuses (returns `false`), and
/// returns its index: the limits before it were taken, it and those after are left to the
/// per-limit path.
///
/// A request's limits come in the same order every time, each in its lane: one borrow, one
/// clock and generation for the list, and no lane swapped in and out, where a limit at a time
/// paid for all three (issue 22's budget: two limits at most 1.7x one).
#[inline]
pub(super) fn hit_list<L: Listed>(
    limiter: u64,
    generation: u64,
    now_ms: u64,
    limits: &[L],
    mut take: impl FnMut(usize, &L, &RuleSummary, &LocalBucket) -> bool,
) -> usize {
    MEMOS
        .try_with(|memos| {
            let Ok(memos) = memos.try_borrow() else {
                return 0;
            };
            for (index, limit) in limits.iter().enumerate() {
                let (target, user) = (limit.target(), limit.user());
                let (last_target, last_bucket) = &memos.places[index.min(LANES)];
                let Some(memo) = &memos.targets[last_target.get() % TARGETS] else {
                    return index;
                };
                if !(memo.is(limiter, generation, &InList(target)) && now_ms < memo.expires_ms) {
                    return index;
                }
                let rule = &memo.rule;
                let Some(bucket) = &memos.buckets[last_bucket.get() % BUCKETS] else {
                    return index;
                };
                if !bucket.is(limiter, rule.slot, user) {
                    return index;
                }
                if !take(index, limit, rule, &bucket.bucket) {
                    return index;
                }
            }
            limits.len()
        })
        .unwrap_or(0)
}

/// The memo in `slots` that is `wanted`, made the `last` one; searched out of line, so that the
/// hit's look at the last slot keeps nothing of the search.
#[inline(never)]
fn search<'m, T>(
    slots: &'m [Option<T>],
    last: &Cell<usize>,
    wanted: impl Fn(&T) -> bool,
) -> Option<&'m T> {
    let at = slots.iter().position(|m| m.as_ref().is_some_and(&wanted))?;
    last.set(at);
    slots[at].as_ref()
}

/// Remembers a resolution on this thread (replacing the oldest, or the same target's).
#[cold]
pub(super) fn remember(limiter: u64, generation: u64, resolved: Resolved, key: &Arc<TargetKey>) {
    let memo = TargetMemo {
        limiter,
        generation,
        expires_ms: resolved.expires_ms,
        rule: resolved.rule,
        key: key.clone(),
    };
    with_memos(|memos| {
        let Memos {
            targets,
            next_target,
            lane,
            ..
        } = memos;
        put(
            targets,
            SHARED_TARGETS,
            lane.get(),
            next_target,
            memo,
            |m| m.limiter == limiter && *m.key == **key,
        );
    });
}

/// Calls `f` with this thread's memos, unless they are borrowed (a memo is then not kept).
fn with_memos(f: impl FnOnce(&mut Memos)) {
    let _ = MEMOS.try_with(|memos| {
        if let Ok(mut memos) = memos.try_borrow_mut() {
            f(&mut memos);
        }
    });
}

/// Puts `memo` in the slot of the one it replaces (`same`), else in the slot of `lane`
/// (1-based; past the first `shared` slots), else (lane 0) in the oldest of the `shared`.
fn put<T>(
    slots: &mut [Option<T>],
    shared: usize,
    lane: usize,
    next: &mut usize,
    memo: T,
    same: impl Fn(&T) -> bool,
) {
    let at = slots
        .iter()
        .position(|m| m.as_ref().is_some_and(&same))
        .unwrap_or_else(|| match lane.checked_sub(1) {
            Some(own) => (shared + own).min(slots.len() - 1),
            None => {
                let at = *next % shared;
                *next = (at + 1) % shared;
                at
            }
        });
    slots[at] = Some(memo);
}

/// Notes that this thread found `bucket` in a map: whether it found the same one last time
/// (its user is served twice in a row, and its bucket is worth memoizing).
#[inline]
pub(super) fn found_again(bucket: &LocalBucket) -> bool {
    let address = std::ptr::from_ref(bucket) as usize;
    LAST_FOUND
        .try_with(|(last, _)| last.replace(address) == address)
        .unwrap_or(false)
}

/// Whether the bucket of `user` may be memoized (its identifier fits a memo).
#[inline]
pub(super) fn fits(user: &[u8]) -> bool {
    user.len() <= USER_BYTES
}

/// Memoizes the bucket of (`user`, `slot`) of `limiter` on this thread, replacing the oldest.
#[cold]
pub(super) fn memoize(limiter: u64, user: &[u8], slot: u32, bucket: Arc<LocalBucket>) {
    let Some(memo_user) = User::new(user) else {
        return;
    };
    let memo = BucketMemo {
        limiter,
        slot,
        user: memo_user,
        bucket,
    };
    with_memos(|memos| {
        let Memos {
            buckets,
            next_bucket,
            lane,
            ..
        } = memos;
        put(
            buckets,
            SHARED_BUCKETS,
            lane.get(),
            next_bucket,
            memo,
            |m| m.limiter == limiter && m.slot == slot && m.user.is(user),
        );
    });
    let _ = LAST_FOUND.try_with(|(last, _)| last.set(0));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::bucket::Take;
    use crate::RefillRate;
    use crate::Target;
    use http::Method;

    fn rule(slot: u32) -> RuleSummary {
        RuleSummary {
            slot,
            burst_rate: 10,
            refill_rate: RefillRate::per_second(1),
            is_default: false,
        }
    }

    /// The operation `op` remembered for `limiter` (generation 1) with the rule of `slot`,
    /// fresh until 100 ms, and a bucket holding 5 tokens to memoize for it.
    fn remembered(
        limiter: u64,
        op: &'static str,
        slot: u32,
    ) -> (Target<'static>, Arc<LocalBucket>) {
        let target = Target::operation(op);
        let key = Arc::new(TargetKey::from_target(&target));
        let resolved = Resolved {
            rule: rule(slot),
            expires_ms: 100,
        };
        remember(limiter, 1, resolved, &key);
        let bucket = Arc::new(LocalBucket::new(0));
        bucket.deposit(5, 10_000, 0).unwrap();
        (target, bucket)
    }

    /// The rule slot the memos know for `target`.
    fn slot_of(limiter: u64, generation: u64, target: &Target<'_>) -> Option<u32> {
        let mut slot = None;
        hit(limiter, generation, 0, target, &b"u"[..], |rule, _| {
            slot = Some(rule.slot);
            true
        });
        slot
    }

    #[test]
    fn a_bucket_is_memoized_for_its_limiter_rule_and_user_while_alive() {
        let (target, bucket) = remembered(3_000_001, "memo-bucket", 3);
        let found = |user: &[u8], now_ms| {
            let mut found = None;
            hit(3_000_001, 1, now_ms, &target, user, |rule, b| {
                found = b.map(|b| (rule.slot, b.try_take(1, now_ms)));
                true
            });
            found
        };
        assert_eq!(found(b"alice", 0), None, "nothing memoized yet");
        let b = LocalBucket::new(0);
        assert!(!found_again(&b), "first time found");
        assert!(found_again(&b), "found twice in a row");
        assert!(fits(b"alice") && !fits(&[b'x'; USER_BYTES + 1]));
        memoize(3_000_001, b"alice", 3, bucket.clone());
        assert!(!found_again(&b), "memoizing forgets the last found");
        assert_eq!(found(b"alice", 0), Some((3, Take::Taken(4, 10_000))));
        assert_eq!(found(b"alicf", 0), None, "another user");
        assert_eq!(found(b"alice", 100), None, "the rule expired");
        memoize(3_000_001, b"bob", 4, bucket.clone());
        assert_eq!(found(b"bob", 0), None, "another rule's bucket");
        bucket.kill();
        // A dead bucket is handed out as it is: its take says so, and the hit goes to the map.
        assert_eq!(
            found(b"alice", 0),
            Some((3, Take::Expired)),
            "a dead bucket takes nothing"
        );
    }

    #[test]
    fn an_address_finds_the_bucket_of_its_text_and_only_that() {
        use crate::limiter::IpProbe;
        let (target, bucket) = remembered(4_000_001, "memo-address", 5);
        let by_ip = |ip: &str| {
            let probe = IpProbe(ip.parse().unwrap());
            hit(4_000_001, 1, 0, &target, &probe, |_, b| b.is_some())
        };
        let by_text = |text: &str| {
            hit(4_000_001, 1, 0, &target, text.as_bytes(), |_, b| {
                b.is_some()
            })
        };
        memoize(4_000_001, b"192.0.2.10", 5, bucket.clone());
        assert!(by_ip("192.0.2.10") && by_text("192.0.2.10"));
        assert!(!by_ip("192.0.2.11") && !by_ip("::ffff:192.0.2.10"));
        memoize(4_000_001, b"2001:db8::1", 5, bucket.clone());
        assert!(
            by_ip("2001:db8::1") && by_ip("2001:0db8:0::1"),
            "the same address"
        );
        // Text that reads as an address but is not its canonical text is another user.
        memoize(4_000_001, b"2001:0db8::2", 5, bucket.clone());
        assert!(!by_ip("2001:db8::2") && by_text("2001:0db8::2"));
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
        let slot = slot_of;
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
    fn each_lane_keeps_its_own_places() {
        // Two limits of one request, in turn: each lane finds its own bucket twice in a row
        // (memoized by the second request), where one lane saw them take turns.
        let (a, b) = (LocalBucket::new(0), LocalBucket::new(0));
        let found = |index: usize, bucket: &LocalBucket| {
            let lane = Lane::enter(index);
            let again = found_again(bucket);
            lane.leave();
            again
        };
        assert!(
            !found(0, &a) && !found(1, &b),
            "first request: found once each"
        );
        assert!(
            found(0, &a) && found(1, &b),
            "second request: each found again"
        );
        assert!(
            !found_again(&b),
            "outside a lane, the first lane's last is a"
        );
        // And the targets: each lane looks first where it found its own.
        let (first, _) = remembered(5_000_001, "lane-first", 1);
        let (second, _) = remembered(5_000_001, "lane-second", 2);
        let slot_in = |index: usize, target: &Target<'_>| {
            let lane = Lane::enter(index);
            let slot = slot_of(5_000_001, 1, target);
            drop(lane);
            slot
        };
        for _ in 0..3 {
            assert_eq!(slot_in(0, &first), Some(1));
            assert_eq!(slot_in(1, &second), Some(2));
        }
        let last = |index: usize| {
            let _lane = Lane::enter(index);
            MEMOS.with(|m| m.borrow().last_target().get())
        };
        assert_ne!(
            last(0),
            last(1),
            "each lane's last slot is its own target's"
        );
    }

    #[test]
    fn four_limits_of_one_user_keep_four_buckets() {
        // Each lane memoizes into its own slot: the fourth does not evict the first (with the
        // two shared slots alone, every request of three limits memoized again).
        let limiter = 6_000_001;
        let found: Vec<_> = (0..4u32)
            .map(|i| {
                let (target, bucket) = remembered(limiter, ["l0", "l1", "l2", "l3"][i as usize], i);
                let lane = Lane::enter(i as usize);
                memoize(limiter, b"alice", i, bucket);
                drop(lane);
                target
            })
            .collect();
        for (i, target) in found.iter().enumerate() {
            let _lane = Lane::enter(i);
            let hit_bucket = hit(limiter, 1, 0, target, &b"alice"[..], |_, b| b.is_some());
            assert!(hit_bucket, "limit {i}'s bucket is still memoized");
        }
    }

    #[test]
    fn holds_a_few_targets() {
        let keys: Vec<_> = (0..SHARED_TARGETS + 1)
            .map(|i| Arc::new(TargetKey::from_target(&Target::operation(format!("op{i}")))))
            .collect();
        for (i, key) in keys.iter().enumerate() {
            let resolved = Resolved {
                rule: rule(i as u32),
                expires_ms: 100,
            };
            remember(2_000_001, 1, resolved, key);
        }
        let found = |i: usize| slot_of(2_000_001, 1, &keys[i].as_target()).is_some();
        assert!(!found(0), "the oldest was replaced");
        assert!((1..=SHARED_TARGETS).all(found));
    }
}
