//! The bucket's lock-free paths under the loom model checker: every interleaving of two or
//! three threads (up to a preemption bound), each case asserting that no token is created or
//! lost: deposited (plus grants given back) = taken + held + lost, and nothing spent past its
//! deadline.
//!
//! `RUSTFLAGS="--cfg lightrate_loom" cargo test -p lightrate-core --lib --release --target-dir
//! target/loom loom` (`LOOM_MAX_PREEMPTIONS` overrides the bound).

use std::sync::Arc;

use ::loom::model::Builder;
use ::loom::thread;

use super::{LocalBucket, Take};
use crate::sync::checked::atomic::Ordering;

/// Runs `f` over every interleaving with at most 3 preemptions (each case runs in seconds).
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(3);
    }
    builder.check(f);
}

/// What the slow path does for one take (`slow.rs`): drops stale or expired tokens, counted
/// lost, and tries again. Whether `cost` tokens were taken.
fn take(bucket: &LocalBucket, cost: u64, now_ms: u64) -> bool {
    loop {
        match bucket.try_take(cost, now_ms) {
            Take::Taken(_) => return true,
            Take::Empty => return false,
            Take::Stale => {
                bucket.drop_stale(now_ms);
            }
            Take::Expired if bucket.is_dead() => return false,
            Take::Expired => {
                bucket.expire(now_ms);
            }
        }
    }
}

fn deposited(bucket: &LocalBucket) -> u64 {
    bucket.deposited.load(Ordering::Relaxed)
}

fn lost(bucket: &LocalBucket) -> u64 {
    bucket.lost.load(Ordering::Relaxed)
}

/// Every token is taken, held or lost: `into` (deposited and given back by grants) =
/// `taken` + held + lost (the bucket's, plus `lost_outside`: what could not go back).
#[track_caller]
fn assert_conserved(bucket: &LocalBucket, into: u64, taken: u64, lost_outside: u64) {
    assert_eq!(
        into,
        taken + bucket.tokens() + lost(bucket) + lost_outside,
        "in {into}, taken {taken}, held {}, lost {} + {lost_outside}",
        bucket.tokens(),
        lost(bucket),
    );
}

/// Two takes race a refill-ahead lease landing (3 tokens until 7 s) on 2 tokens until 5 s.
#[test]
fn loom_two_takes_and_a_deposit() {
    model(|| {
        let bucket = Arc::new(LocalBucket::new(0));
        bucket.deposit(2, 5_000, 0).unwrap();
        let takers: Vec<_> = [1, 2]
            .into_iter()
            .map(|cost| {
                let bucket = Arc::clone(&bucket);
                thread::spawn(move || if take(&bucket, cost, 100) { cost } else { 0 })
            })
            .collect();
        assert_eq!(bucket.deposit(3, 7_000, 100), Ok(0));
        let taken: u64 = takers.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(deposited(&bucket), 5);
        assert_conserved(&bucket, 5, taken, 0);
        assert_eq!(lost(&bucket), 0);
        assert_eq!(bucket.live_tokens(100), 5 - taken);
        // At 5 s the first lease's tokens are dead: at most the 3 of the second are alive.
        assert!(bucket.live_tokens(5_000) <= 3);
    });
}

/// A take given back (its request refused) races a take and a lease landing, on a bucket of
/// two generations (2 tokens until 5 s, 3 until 7 s), before and at the older deadline.
#[test]
fn loom_take_and_give_back_race_a_deposit() {
    for now in [4_000, 5_000] {
        model(move || {
            let bucket = Arc::new(LocalBucket::new(0));
            bucket.deposit(2, 5_000, 0).unwrap();
            bucket.deposit(3, 7_000, 1_000).unwrap();
            let refused = {
                let bucket = Arc::clone(&bucket);
                thread::spawn(move || {
                    if !take(&bucket, 1, now) {
                        return 0;
                    }
                    // Taken and given back: 1 lost if it could not go back.
                    u64::from(!bucket.give_back(1, now))
                })
            };
            let taker = {
                let bucket = Arc::clone(&bucket);
                thread::spawn(move || if take(&bucket, 2, now) { 2 } else { 0 })
            };
            let lease = bucket.deposit(4, 9_000, now);
            let lost_outside = refused.join().unwrap();
            let taken = taker.join().unwrap();
            assert!(lease.is_ok());
            assert_conserved(&bucket, 9, taken, lost_outside);
            // Alive: all 9 before 5 s; from 5 s only the 3 + 4 of the two later leases.
            let alive = if now < 5_000 { 9 } else { 7 };
            assert_eq!(taken + bucket.live_tokens(now), alive);
            assert!(bucket.live_tokens(7_000) <= 4);
        });
    }
}

/// A grant given back (another limit refused its request) races a take and a lease landing,
/// at the older deadline of a bucket of two generations (2 tokens until 5 s, 3 until 7 s),
/// before any hit dropped the 2 dead ones: the grant's 2 tokens join the newest generation,
/// and no dead token is spent.
#[test]
fn loom_give_back_granted_races_a_take_and_a_deposit() {
    model(|| {
        let now = 5_000;
        let bucket = Arc::new(LocalBucket::new(0));
        bucket.deposit(2, 5_000, 0).unwrap();
        bucket.deposit(3, 7_000, 1_000).unwrap();
        let granted = {
            let bucket = Arc::clone(&bucket);
            thread::spawn(move || bucket.give_back_granted(2, 7_000, now))
        };
        let taker = {
            let bucket = Arc::clone(&bucket);
            thread::spawn(move || if take(&bucket, 3, now) { 3 } else { 0 })
        };
        assert!(bucket.deposit(1, 9_000, now).is_ok());
        assert!(
            granted.join().unwrap(),
            "its lease is alive: the grant goes back"
        );
        let taken = taker.join().unwrap();
        assert_conserved(&bucket, 6 + 2, taken, 0);
        // Alive at 5 s: the second lease's 3, the grant's 2 and the third lease's 1, each
        // spent at most once; the first lease's 2 are dead.
        assert_eq!(taken + bucket.live_tokens(now), 3 + 2 + 1);
    });
}

/// A take given back races the bucket's removal: tokens given back to a dead bucket are
/// reported lost (`false`), never added to it.
#[test]
fn loom_give_back_races_kill() {
    model(|| {
        let bucket = Arc::new(LocalBucket::new(0));
        bucket.deposit(3, 5_000, 0).unwrap();
        assert!(take(&bucket, 2, 100));
        let back = {
            let bucket = Arc::clone(&bucket);
            thread::spawn(move || bucket.give_back(2, 100))
        };
        let killed = bucket.kill();
        let back = back.join().unwrap();
        assert!(bucket.is_dead());
        // What the kill reported is what the dead bucket holds: nothing landed after it.
        assert_eq!(bucket.tokens(), killed);
        assert_eq!(killed, if back { 3 } else { 1 });
        let taken = if back { 0 } else { 2 };
        assert_conserved(&bucket, 3, taken, u64::from(!back) * 2);
    });
}

/// A take given back races the bucket's move out of its map entry: what went back before
/// the move is in the copy, what came after is reported lost; the copy's counters add up.
#[test]
fn loom_give_back_races_moved() {
    model(|| {
        let bucket = Arc::new(LocalBucket::new(0));
        bucket.deposit(3, 5_000, 0).unwrap();
        assert!(take(&bucket, 2, 100));
        let back = {
            let bucket = Arc::clone(&bucket);
            thread::spawn(move || bucket.give_back(2, 100))
        };
        let copy = bucket.moved().unwrap();
        let back = back.join().unwrap();
        assert_eq!(
            bucket.tokens(),
            copy.tokens(),
            "nothing lands on the moved one"
        );
        assert_eq!(copy.tokens(), if back { 3 } else { 1 });
        let taken = if back { 0 } else { 2 };
        assert_conserved(&copy, 3, taken, u64::from(!back) * 2);
        assert_eq!(deposited(&copy), 3);
    });
}

/// The two-limit all-or-nothing take of `several.rs`, on two buckets: A holds 2 tokens, B
/// holds 1; two requests each take from A, then from B, and give A's back if B refused. One
/// is allowed; the refused one holds nothing of A, and A's tokens are conserved.
#[test]
fn loom_two_limits_all_or_nothing() {
    model(|| {
        let a = Arc::new(LocalBucket::new(0));
        let b = Arc::new(LocalBucket::new(0));
        a.deposit(2, 5_000, 0).unwrap();
        b.deposit(1, 5_000, 0).unwrap();
        // Whether the request was allowed, and A's tokens it spent.
        let request = |a: Arc<LocalBucket>, b: Arc<LocalBucket>| {
            move || {
                if !take(&a, 1, 100) {
                    return (false, 0);
                }
                if take(&b, 1, 100) {
                    return (true, 1);
                }
                // Refused by B: A's token goes back, never kept (`false`: it was lost).
                (false, u64::from(!a.give_back(1, 100)))
            }
        };
        let other = thread::spawn(request(Arc::clone(&a), Arc::clone(&b)));
        let (allowed, spent) = request(Arc::clone(&a), Arc::clone(&b))();
        let (other_allowed, other_spent) = other.join().unwrap();
        assert_eq!(u64::from(allowed) + u64::from(other_allowed), 1);
        // A refused request spent nothing of A (A's tokens are alive: none is lost).
        assert_eq!(spent, u64::from(allowed));
        assert_eq!(other_spent, u64::from(other_allowed));
        assert_conserved(&a, 2, 1, 0);
        assert_eq!(a.live_tokens(100), 1);
        assert_conserved(&b, 1, 1, 0);
    });
}
