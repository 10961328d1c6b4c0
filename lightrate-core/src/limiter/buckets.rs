//! [`Buckets`]: the local buckets of a limiter, one per (user, rule), in a lock-free map, with
//! the sweeps that remove the idle ones and the cap on how many live.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use papaya::{Compute, Operation};

use super::bucket::LocalBucket;
use super::counters::Counters;
use super::keys::{BucketKey, BucketRef};
use super::maps::{hot_map, Hasher};
use super::settings::Settings;
use crate::clock::Timestamp;

/// A bucket in its map entry: inline (one allocation, one cache miss less than a shared
/// bucket: what a hit among many users pays for), or, once a thread has served its user twice
/// in a row, shared with the per-thread memos of hot buckets ([`memo`](super::memo)), whose hits
/// enter no epoch and probe no map.
pub(super) enum Held {
    Inline(LocalBucket),
    Hot(Arc<LocalBucket>),
}

impl Deref for Held {
    type Target = LocalBucket;

    #[inline]
    fn deref(&self) -> &LocalBucket {
        match self {
            Held::Inline(bucket) => bucket,
            Held::Hot(bucket) => bucket,
        }
    }
}

/// Every local bucket of a limiter.
pub(super) struct Buckets {
    /// (user, rule) → bucket.
    map: papaya::HashMap<BucketKey, Held, Hasher>,
    /// When the last sweep ran (ms), and whether one is running.
    last_sweep_ms: AtomicU64,
    sweeping: AtomicBool,
    /// Whether a request is making room at the cap.
    evicting: AtomicBool,
}

impl Buckets {
    /// Buckets whose map shares `collector` with the target cache: one guard serves a hit.
    pub(super) fn new(collector: Arc<seize::Collector>) -> Self {
        Buckets {
            map: hot_map(collector),
            last_sweep_ms: AtomicU64::new(0),
            sweeping: AtomicBool::new(false),
            evicting: AtomicBool::new(false),
        }
    }

    /// A guard for reading buckets (and the target cache, which shares its collector).
    #[inline]
    pub(super) fn guard(&self) -> papaya::LocalGuard<'_> {
        self.map.guard()
    }

    /// The bucket of (user, slot), if there is one (live or not).
    #[inline]
    pub(super) fn get<'g>(
        &self,
        user: &[u8],
        slot: u32,
        guard: &'g papaya::LocalGuard<'_>,
    ) -> Option<&'g Held> {
        self.map.get(&BucketRef { user, slot }, guard)
    }

    /// The bucket of (user, slot) shared, to be memoized: `held` itself if it is shared
    /// already, else a copy of it moved out of its entry (`held` dies, and a take on it fails
    /// and goes to the map again). `None` if the entry changed meanwhile, or the bucket died.
    #[cold]
    pub(super) fn share(
        &self,
        user: &[u8],
        slot: u32,
        held: &Held,
        counters: &Counters,
        guard: &papaya::LocalGuard<'_>,
    ) -> Option<Arc<LocalBucket>> {
        let inline = match held {
            Held::Hot(bucket) => return Some(bucket.clone()),
            Held::Inline(bucket) => bucket,
        };
        let moved = Arc::new(inline.moved()?);
        let computed = self.map.compute(
            BucketKey::from_bytes(user, slot),
            |existing| match existing {
                Some((_, current)) if std::ptr::eq(&**current, inline) => {
                    Operation::Insert(Held::Hot(moved.clone()))
                }
                _ => Operation::Abort(()),
            },
            guard,
        );
        match computed {
            Compute::Updated { .. } | Compute::Inserted(..) => Some(moved),
            _ => {
                // The dead bucket was replaced first (a request found it dead): what it held
                // is lost, as on any removal.
                counters.expired(slot, moved.kill());
                None
            }
        }
    }

    /// The bucket of (user, slot), created empty if there is none (or only a removed one);
    /// at the cap of live buckets, room is made first.
    pub(super) fn get_or_insert<'g>(
        &self,
        user: &str,
        slot: u32,
        now: Timestamp,
        settings: &Settings,
        counters: &Counters,
        guard: &'g papaya::LocalGuard<'_>,
    ) -> &'g LocalBucket {
        if let Some(bucket) = self.get(user.as_bytes(), slot, guard) {
            if !bucket.is_dead() {
                return bucket;
            }
            self.remove_dead(user, slot, bucket, guard);
        }
        if self.map.len() >= settings.max_buckets {
            self.make_room(now, settings, counters);
        }
        let now_ms = now.as_millis();
        let computed = self.map.compute(
            BucketKey::new(user, slot),
            |existing| match existing {
                Some((_, bucket)) if !bucket.is_dead() => Operation::Abort(bucket),
                _ => Operation::Insert(Held::Inline(LocalBucket::new(now_ms))),
            },
            guard,
        );
        match computed {
            Compute::Aborted(bucket) => bucket,
            Compute::Inserted(_, bucket) => bucket,
            Compute::Updated {
                new: (_, bucket), ..
            } => bucket,
            Compute::Removed(..) => unreachable!("the computation never removes"),
        }
    }

    /// Kills the bucket of (user, slot), counting what it loses, and removes it if it is still
    /// the one there.
    pub(super) fn retire(
        &self,
        user: &str,
        slot: u32,
        bucket: &LocalBucket,
        counters: &Counters,
        guard: &papaya::LocalGuard<'_>,
    ) {
        counters.expired(slot, bucket.kill());
        self.remove_dead(user, slot, bucket, guard);
    }

    /// Removes the dead bucket of (user, slot) from the map if it is still the one there.
    fn remove_dead(
        &self,
        user: &str,
        slot: u32,
        bucket: &LocalBucket,
        guard: &papaya::LocalGuard<'_>,
    ) {
        self.map.compute(
            BucketKey::new(user, slot),
            |existing| match existing {
                Some((_, current)) if std::ptr::eq(&**current, bucket) => Operation::Remove,
                _ => Operation::Abort(()),
            },
            guard,
        );
    }

    /// Whether a sweep is due at `now_ms`; if so, this caller runs it and must call
    /// [`swept`](Self::swept) after.
    pub(super) fn claim_sweep(&self, now_ms: u64, interval_ms: u64) -> bool {
        let last = self.last_sweep_ms.load(Ordering::Relaxed);
        if now_ms < last.saturating_add(interval_ms) || self.sweeping.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.last_sweep_ms.store(now_ms, Ordering::Relaxed);
        true
    }

    /// Ends a sweep claimed by [`claim_sweep`](Self::claim_sweep).
    pub(super) fn swept(&self) {
        self.sweeping.store(false, Ordering::Release);
    }

    /// Removes the buckets nothing needs at `now` (no live token, no denial in force, no
    /// slow-path use for `ttl_ms`), counting what they held lost.
    pub(super) fn sweep(&self, now: Timestamp, ttl_ms: u64, counters: &Counters) {
        let now_ms = now.as_millis();
        let guard = self.map.guard();
        self.map.retain(
            |key, bucket| match bucket.kill_if_idle(now, ttl_ms) {
                Some(lost) => {
                    counters.expired(key.slot, lost);
                    false
                }
                None => true,
            },
            &guard,
        );
        self.last_sweep_ms.fetch_max(now_ms, Ordering::Relaxed);
    }

    /// At the cap of live buckets: forgets buckets until 90% of the cap is used, those safe to
    /// forget first. Forgetting a bucket never admits anything: what it loses is a demand
    /// estimate, a denial (the source is asked again, and says no again), or leased tokens
    /// (counted lost).
    #[cold]
    fn make_room(&self, now: Timestamp, settings: &Settings, counters: &Counters) {
        if self.evicting.swap(true, Ordering::AcqRel) {
            // Another request is making room; this one may go a little past the cap.
            return;
        }
        let max = settings.max_buckets;
        let target = max - max / 10;
        let before = self.map.len();
        // Idle buckets first: what a sweep removes.
        self.sweep(now, settings.bucket_ttl_ms, counters);
        let (now_ms, now_nanos) = (now.as_millis(), now.as_nanos());
        let guard = self.map.guard();
        // Then, at random, buckets holding no live token and no denial, then those holding no
        // live token, then any. At random: removing a run of neighbouring entries leaves a run
        // of tombstones that papaya (0.2.5) can fail to copy past, spinning forever.
        let passes: [&dyn Fn(&LocalBucket) -> bool; 3] = [
            &|b| b.live_tokens(now_ms) == 0 && b.denied_until() <= now_nanos,
            &|b| b.live_tokens(now_ms) == 0,
            &|_| true,
        ];
        let mut rng = fastrand::Rng::new();
        for forget in passes {
            for _ in 0..4 {
                let len = self.map.len();
                if len <= target {
                    break;
                }
                let mut excess = len - target;
                let odds = (1.5 * excess as f64 / len as f64).min(1.0);
                self.map.retain(
                    |key, bucket| {
                        if excess == 0 || rng.f64() >= odds || !forget(bucket) {
                            return true;
                        }
                        excess -= 1;
                        counters.expired(key.slot, bucket.kill());
                        false
                    },
                    &guard,
                );
            }
        }
        let evicted = before.saturating_sub(self.map.len());
        counters.evicted(evicted as u64);
        tracing::debug!(
            target: "lightrate::limiter",
            evicted,
            max_buckets = max,
            "at the cap of live buckets: forgot some to make room"
        );
        self.evicting.store(false, Ordering::Release);
    }

    /// Removes every bucket, counting their tokens lost.
    pub(super) fn clear(&self, counters: &Counters) {
        let guard = self.map.guard();
        self.map.retain(
            |key, bucket| {
                counters.expired(key.slot, bucket.kill());
                false
            },
            &guard,
        );
    }

    /// How many buckets were moved out of their entries to be shared with the memos.
    #[cfg(test)]
    pub(super) fn shared(&self) -> usize {
        let guard = self.map.guard();
        self.map
            .iter(&guard)
            .filter(|(_, held)| matches!(held, Held::Hot(_)))
            .count()
    }

    /// How many buckets there are.
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// Tokens held (alive or not yet counted lost), per rule slot, and how many buckets.
    pub(super) fn held(&self) -> (HashMap<u32, u64>, u64) {
        let guard = self.map.guard();
        let mut held: HashMap<u32, u64> = HashMap::new();
        let mut live = 0;
        for (key, bucket) in self.map.iter(&guard) {
            *held.entry(key.slot).or_default() += bucket.tokens();
            live += 1;
        }
        (held, live)
    }

    /// Calls `each` with every live bucket's user, rule slot and bucket.
    pub(super) fn for_each_live(&self, mut each: impl FnMut(&str, u32, &LocalBucket)) {
        let guard = self.map.guard();
        for (key, bucket) in self.map.iter(&guard) {
            if !bucket.is_dead() {
                each(&key.user.to_str_lossy(), key.slot, bucket);
            }
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_no_larger_than_its_bucket() {
        // A shared bucket's entry is told apart by the bucket's `shared` flag, not a tag.
        assert_eq!(
            std::mem::size_of::<Held>(),
            std::mem::size_of::<LocalBucket>()
        );
    }
}
