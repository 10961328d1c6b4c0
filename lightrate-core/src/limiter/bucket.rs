//! A local bucket: tokens leased from the source and not yet spent, in one atomic word.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bits 0..24: tokens held. Bits 24..63: last use, in milliseconds since the clock's epoch
/// (17 years). Bit 63: the bucket was removed from the map and takes no more deposits.
const TOKEN_BITS: u32 = 24;
const TOKEN_MASK: u64 = (1 << TOKEN_BITS) - 1;
const TIME_MASK: u64 = (1 << 39) - 1;
const DEAD: u64 = 1 << 63;

/// The most tokens one bucket holds.
pub(crate) const MAX_TOKENS: u64 = TOKEN_MASK;

fn pack(tokens: u64, last_ms: u64) -> u64 {
    ((last_ms.min(TIME_MASK)) << TOKEN_BITS) | tokens.min(TOKEN_MASK)
}

fn tokens_of(state: u64) -> u64 {
    state & TOKEN_MASK
}

fn last_ms_of(state: u64) -> u64 {
    (state >> TOKEN_BITS) & TIME_MASK
}

/// The result of trying to take tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Take {
    /// Taken; this many are left.
    Taken(u64),
    /// Fewer tokens than asked for (nothing was taken).
    Empty,
    /// Idle past its TTL, or removed: it must not answer.
    Expired,
}

/// Tokens of one (user, rule) in this process: 24 bytes, inline in its map entry (which keeps
/// its address until the entry is removed and no reader can see it any more). What only the
/// slow path needs (the lease in flight, what to send) lives elsewhere, so that the memory a
/// hit reads stays small.
#[derive(Debug)]
pub(crate) struct LocalBucket {
    /// Tokens and last use, packed: a hit is one compare-and-swap of this word.
    state: AtomicU64,
    /// Denial cache: no token can exist before this timestamp (nanoseconds; 0 = none).
    denied_until: AtomicU64,
    /// What the source said it had left at the last lease.
    source_remaining: AtomicU64,
}

impl LocalBucket {
    pub(crate) fn new(now_ms: u64) -> Self {
        LocalBucket {
            state: AtomicU64::new(pack(0, now_ms)),
            denied_until: AtomicU64::new(0),
            source_remaining: AtomicU64::new(0),
        }
    }

    /// Takes `cost` tokens if the bucket is alive and holds them. The hot path: one load and
    /// one compare-and-swap (retried only under contention).
    #[inline]
    pub(crate) fn try_take(&self, cost: u64, now_ms: u64, ttl_ms: u64) -> Take {
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            if current & DEAD != 0 {
                return Take::Expired;
            }
            let last = last_ms_of(current);
            if now_ms.saturating_sub(last) >= ttl_ms {
                return Take::Expired;
            }
            let tokens = tokens_of(current);
            if tokens < cost {
                return Take::Empty;
            }
            let next = pack(tokens - cost, last.max(now_ms));
            match self.state.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Take::Taken(tokens - cost),
                Err(actual) => current = actual,
            }
        }
    }

    /// Adds leased tokens and marks the bucket used now. `Err(tokens)` if the bucket was
    /// removed meanwhile (the caller files them into a new one). Tokens past [`MAX_TOKENS`]
    /// are dropped and returned in `Ok`.
    pub(crate) fn deposit(&self, tokens: u64, now_ms: u64) -> Result<u64, u64> {
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            if current & DEAD != 0 {
                return Err(tokens);
            }
            let held = tokens_of(current);
            let total = held.saturating_add(tokens);
            let next = pack(total, last_ms_of(current).max(now_ms));
            match self.state.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(total.saturating_sub(MAX_TOKENS)),
                Err(actual) => current = actual,
            }
        }
    }

    /// Marks the bucket used now without changing its tokens (a denial or a lease keeps an
    /// empty bucket alive).
    pub(crate) fn touch(&self, now_ms: u64) {
        let mut current = self.state.load(Ordering::Acquire);
        while current & DEAD == 0 && last_ms_of(current) < now_ms {
            let next = pack(tokens_of(current), now_ms);
            match self.state.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// Marks the bucket removed if it is still idle past `ttl_ms` at `now_ms`; returns the
    /// tokens it held (lost), or `None` if it is alive. (A lease that lands on a removed
    /// bucket files its tokens into a new one.)
    pub(crate) fn kill_if_idle(&self, now_ms: u64, ttl_ms: u64) -> Option<u64> {
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            if current & DEAD != 0 {
                return Some(0);
            }
            if now_ms.saturating_sub(last_ms_of(current)) < ttl_ms {
                return None;
            }
            match self.state.compare_exchange_weak(
                current,
                current | DEAD,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(tokens_of(current)),
                Err(actual) => current = actual,
            }
        }
    }

    /// Marks the bucket removed unconditionally; returns the tokens it held.
    pub(crate) fn kill(&self) -> u64 {
        let previous = self.state.fetch_or(DEAD, Ordering::AcqRel);
        if previous & DEAD != 0 {
            0
        } else {
            tokens_of(previous)
        }
    }

    pub(crate) fn is_dead(&self) -> bool {
        self.state.load(Ordering::Acquire) & DEAD != 0
    }

    pub(crate) fn tokens(&self) -> u64 {
        tokens_of(self.state.load(Ordering::Acquire))
    }

    pub(crate) fn last_used_ms(&self) -> u64 {
        last_ms_of(self.state.load(Ordering::Acquire))
    }

    pub(crate) fn source_remaining(&self) -> u64 {
        self.source_remaining.load(Ordering::Relaxed)
    }

    pub(crate) fn set_source_remaining(&self, remaining: u64) {
        self.source_remaining.store(remaining, Ordering::Relaxed);
    }

    /// The end of the denial period (nanoseconds since the clock's epoch), 0 if none.
    pub(crate) fn denied_until(&self) -> u64 {
        self.denied_until.load(Ordering::Acquire)
    }

    pub(crate) fn set_denied_until(&self, until_nanos: u64) {
        self.denied_until.store(until_nanos, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(now_ms: u64) -> LocalBucket {
        LocalBucket::new(now_ms)
    }

    #[test]
    fn a_bucket_is_small() {
        // It lives inline in its map entry: what the hot path reads is one entry.
        assert_eq!(std::mem::size_of::<LocalBucket>(), 24);
    }

    #[test]
    fn takes_only_what_is_held() {
        let b = bucket(0);
        assert_eq!(b.try_take(1, 0, 60_000), Take::Empty);
        assert_eq!(b.deposit(3, 0), Ok(0));
        assert_eq!(b.try_take(2, 1, 60_000), Take::Taken(1));
        assert_eq!(b.try_take(2, 1, 60_000), Take::Empty);
        assert_eq!(b.try_take(1, 1, 60_000), Take::Taken(0));
    }

    #[test]
    fn idle_past_ttl_never_answers() {
        let b = bucket(1_000);
        b.deposit(5, 1_000).unwrap();
        assert_eq!(b.try_take(1, 60_999, 60_000), Take::Taken(4));
        // Use refreshed the time: 60 s from the last use, not from creation.
        assert_eq!(b.try_take(1, 120_998, 60_000), Take::Taken(3));
        assert_eq!(b.try_take(1, 180_998, 60_000), Take::Expired);
        assert_eq!(b.kill_if_idle(180_998, 60_000), Some(3));
        assert!(b.is_dead());
        assert_eq!(b.deposit(2, 180_999), Err(2));
        assert_eq!(b.try_take(1, 180_999, 60_000), Take::Expired);
    }

    #[test]
    fn kill_if_idle_spares_live_buckets() {
        let b = bucket(0);
        b.deposit(1, 10_000).unwrap();
        assert_eq!(b.kill_if_idle(69_999, 60_000), None);
        assert_eq!(b.kill_if_idle(70_000, 60_000), Some(1));
    }

    #[test]
    fn deposits_saturate_at_max_tokens() {
        let b = bucket(0);
        assert_eq!(b.deposit(MAX_TOKENS - 1, 0), Ok(0));
        assert_eq!(b.deposit(10, 0), Ok(9));
        assert_eq!(b.tokens(), MAX_TOKENS);
    }

    #[test]
    fn time_never_goes_backwards_in_the_word() {
        let b = bucket(5_000);
        b.deposit(2, 5_000).unwrap();
        assert_eq!(b.try_take(1, 4_000, 60_000), Take::Taken(1));
        assert_eq!(b.last_used_ms(), 5_000);
        b.touch(7_000);
        assert_eq!(b.last_used_ms(), 7_000);
        b.touch(6_000);
        assert_eq!(b.last_used_ms(), 7_000);
    }
}
