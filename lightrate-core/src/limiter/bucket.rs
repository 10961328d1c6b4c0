//! A local bucket: tokens leased from the source and not yet spent, each with a bounded age.
//!
//! A leased token is spendable until its lease's *deadline* (the lease's start plus the token
//! horizon H): so every token admitted at time t was granted after t − H, and a fleet of any
//! size admits at most what the source granted in a window H longer than the one observed.
//!
//! A bucket holds at most two generations of tokens: what a refill-ahead lease brought (the
//! newest, valid until `deadline` in `state`) and what was left of the previous lease (valid
//! until the earlier deadline in `older`). Tokens are spent oldest first, so once the older
//! deadline passes, at most `newest` tokens of the bucket are still alive; the hot path sees
//! that as [`Take::Stale`] and the slow path drops the excess.

use super::learned::Learned;
use crate::clock::Timestamp;
use crate::sync::checked::atomic::{AtomicU32, AtomicU64, Ordering};
use crate::sync::checked::{self, Mutex, MutexGuard};

/// `state`: bits 0..24 tokens held; bits 24..62 the deadline of the newest tokens, in
/// milliseconds since the clock's epoch (8.7 years); bit 62: a deposit is changing `older` and
/// `state` together (takes wait); bit 63: removed from the map.
const TOKEN_BITS: u32 = 24;
const TOKEN_MASK: u64 = (1 << TOKEN_BITS) - 1;
const TIME_MASK: u64 = (1 << 38) - 1;
const BUSY: u64 = 1 << 62;
const DEAD: u64 = 1 << 63;

/// The most tokens one bucket holds.
pub(crate) const MAX_TOKENS: u64 = TOKEN_MASK;

fn pack(tokens: u64, deadline_ms: u64) -> u64 {
    (deadline_ms.min(TIME_MASK) << TOKEN_BITS) | tokens.min(TOKEN_MASK)
}

fn tokens_of(word: u64) -> u64 {
    word & TOKEN_MASK
}

fn deadline_of(word: u64) -> u64 {
    (word >> TOKEN_BITS) & TIME_MASK
}

/// `older` packs (deadline of the older generation, size of the newest deposit) the same way:
/// after that deadline, at most `newest` tokens are alive.
fn older_deadline(older: u64) -> u64 {
    deadline_of(older)
}

fn newest_of(older: u64) -> u64 {
    tokens_of(older)
}

/// The result of trying to take tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Take {
    /// Taken; this many are left, and the tokens taken were spendable until this deadline
    /// (ms: their generation's; the older one's when the take spent any of it).
    Taken(u64, u64),
    /// Fewer live tokens than asked for (nothing was taken).
    Empty,
    /// It holds tokens past their deadline: the slow path counts them lost
    /// ([`LocalBucket::expire`]); or it was removed from the map.
    Expired,
    /// The older generation's deadline passed while some of it is left: the slow path drops it
    /// ([`LocalBucket::drop_stale`]) and tries again.
    Stale,
    /// A deposit is changing the bucket's two words: the slow path tries again (it takes a
    /// few instructions).
    Busy,
}

/// Tokens of one (user, rule) in this process, inline in its map entry (which keeps its
/// address until the entry is removed and no reader can see it any more).
///
/// A hit reads `state`, `older`, `refill_below`, `source_remaining` and `shared` (what its map
/// entry is told by) and compare-and-swaps `state`: the first 32 bytes, in this order
/// (`repr(C)`: left to the compiler, `shared` went last, and a hit among many users paid a
/// second cache line for it), and no other write. The rest is the slow path's: the denial
/// cache and what lease sizing learns ([`Learned`]).
#[derive(Debug)]
#[repr(C)]
pub(crate) struct LocalBucket {
    /// Tokens and their deadline, packed: a hit is one compare-and-swap of this word.
    state: AtomicU64,
    /// The older generation's deadline and the newest deposit's size, packed.
    older: AtomicU64,
    /// What the source said it had left at the last lease.
    source_remaining: AtomicU64,
    /// Refill-ahead: a take that leaves fewer than this many tokens (and started with at
    /// least this many) leases the next batch. 0: never.
    refill_below: AtomicU32,
    /// Whether this bucket was moved out of its map entry, to be shared with the per-thread
    /// memos. (Never changed: a plain `bool`, whose spare values let the map's entry tell an
    /// inline bucket from a shared one without a byte more.)
    shared: bool,
    /// Denial cache: no token can exist before this timestamp (nanoseconds; 0 = none).
    denied_until: AtomicU64,
    /// The last time the slow path used this bucket (ms): a lease, a denial, a take after
    /// waiting. Hits do not write it; they only happen while tokens are alive.
    touched_ms: AtomicU64,
    /// Every token deposited, and every token lost (expired, dropped), since creation.
    deposited: AtomicU64,
    lost: AtomicU64,
    /// What lease sizing learns: demand, the others' take, the source's level (slow path).
    learned: Mutex<Learned>,
}

impl LocalBucket {
    pub(crate) fn new(now_ms: u64) -> Self {
        LocalBucket {
            state: AtomicU64::new(pack(0, 0)),
            older: AtomicU64::new(0),
            source_remaining: AtomicU64::new(0),
            refill_below: AtomicU32::new(0),
            denied_until: AtomicU64::new(0),
            touched_ms: AtomicU64::new(now_ms),
            deposited: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            learned: Mutex::new(Learned::new(now_ms)),
            shared: false,
        }
    }

    /// Takes `cost` tokens if that many are alive. The hot path: two loads and one
    /// compare-and-swap (retried only under contention).
    #[inline]
    pub(crate) fn try_take(&self, cost: u64, now_ms: u64) -> Take {
        // `state` before `older`: a deposit writes `older` first, so a reader that sees the
        // new `state` also sees the `older` that goes with it.
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            if current & (DEAD | BUSY) != 0 {
                return if current & DEAD != 0 {
                    Take::Expired
                } else {
                    Take::Busy
                };
            }
            let tokens = tokens_of(current);
            if now_ms >= deadline_of(current) {
                return if tokens > 0 {
                    Take::Expired
                } else {
                    Take::Empty
                };
            }
            let older = self.older.load(Ordering::Acquire);
            if now_ms >= older_deadline(older) && tokens > newest_of(older) {
                return Take::Stale;
            }
            if tokens < cost {
                return Take::Empty;
            }
            let next = (current & !TOKEN_MASK) | (tokens - cost);
            match self.state.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    // Spent oldest first: any of the older generation, and it dies first.
                    let until_ms = if tokens > newest_of(older) {
                        older_deadline(older)
                    } else {
                        deadline_of(current)
                    };
                    return Take::Taken(tokens - cost, until_ms);
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Takes up to `most` tokens, as many as are alive, and returns how many it took: what a
    /// reservation settled above its estimate takes locally before it owes the rest. Takes
    /// nothing from a bucket whose older generation must be dropped first (the rest is owed:
    /// never more taken than is alive).
    pub(crate) fn take_up_to(&self, most: u64, now_ms: u64) -> u64 {
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            let tokens = tokens_of(current);
            if current & BUSY != 0 && current & DEAD == 0 {
                self.wait_for_deposit();
                current = self.state.load(Ordering::Acquire);
                continue;
            }
            if current & DEAD != 0 || now_ms >= deadline_of(current) || tokens == 0 {
                return 0;
            }
            let older = self.older.load(Ordering::Acquire);
            if now_ms >= older_deadline(older) && tokens > newest_of(older) {
                return 0;
            }
            let taken = tokens.min(most);
            let next = (current & !TOKEN_MASK) | (tokens - taken);
            match self.state.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return taken,
                Err(actual) => current = actual,
            }
        }
    }

    /// Puts back `tokens` that a take of this bucket (or a grant to a request) handed out and a
    /// request did not spend: another limit of the request refused it. They keep the deadline
    /// of what the bucket holds, and count as its older generation when there are two (they
    /// may die early, never late: the bound holds). `false` when they cannot go back (the
    /// bucket was removed, or holds nothing alive any more): they are lost.
    ///
    /// Lock-free, like a take: one compare-and-swap, retried only under contention.
    pub(crate) fn give_back(&self, tokens: u64, now_ms: u64) -> bool {
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            if current & DEAD != 0 || now_ms >= deadline_of(current) {
                return false;
            }
            if current & BUSY != 0 {
                self.wait_for_deposit();
                current = self.state.load(Ordering::Acquire);
                continue;
            }
            match self.try_add(current, tokens) {
                Ok(()) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// Adds `tokens` to the bucket whose state is `current`, in one compare-and-swap (those
    /// past [`MAX_TOKENS`] lost); `Err` with the state found when it had changed.
    fn try_add(&self, current: u64, tokens: u64) -> Result<(), u64> {
        let total = tokens_of(current).saturating_add(tokens);
        let next = (current & !TOKEN_MASK) | total.min(TOKEN_MASK);
        self.state
            .compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire)?;
        self.lost
            .fetch_add(total.saturating_sub(TOKEN_MASK), Ordering::Relaxed);
        Ok(())
    }

    /// Puts back `tokens` a take of this bucket handed out and a request did not spend (another
    /// limit refused it, or a reservation was settled below its estimate), which were
    /// spendable until `until_ms` (the take's [`Take::Taken`]). They land in a generation that
    /// dies no later: lock-free while the bucket's generations allow it (the newest, or the
    /// older, whichever they are counted in has a deadline no later than theirs); else, under
    /// the bucket's lock, they join the older generation early (as a grant does, when they are
    /// at least what it holds) or are lost. `false` when lost (past their deadline, the bucket
    /// removed, or not worth the older generation's life); also returns the older
    /// generation's tokens it found past their deadline and dropped.
    pub(crate) fn give_back_taken(&self, tokens: u64, until_ms: u64, now_ms: u64) -> (bool, u64) {
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            if current & DEAD != 0 || now_ms >= until_ms.min(TIME_MASK) {
                return (false, 0);
            }
            if current & BUSY != 0 {
                self.wait_for_deposit();
                current = self.state.load(Ordering::Acquire);
                continue;
            }
            // `state` before `older`, as a take reads them; a deposit between the two marks
            // `state` busy first, so that the compare-and-swap below fails.
            let older = self.older.load(Ordering::Acquire);
            let held = tokens_of(current);
            // Counted after the tokens held: up to the newest lease's size they are the newest
            // generation's, the rest the older one's.
            let to_newest = newest_of(older).saturating_sub(held).min(tokens);
            let to_older = tokens - to_newest;
            let until = until_ms.min(TIME_MASK);
            let newest_ok = to_newest == 0 || deadline_of(current) <= until;
            let older_ok =
                to_older == 0 || (now_ms < older_deadline(older) && older_deadline(older) <= until);
            if !(newest_ok && older_ok) || now_ms >= deadline_of(current) {
                // Their generation is gone (two leases landed since the take): under the lock,
                // as a grant's.
                let _moving = self.learned();
                let stale = self.drop_stale(now_ms);
                return (self.join_older_early(tokens, until_ms, now_ms), stale);
            }
            match self.try_add(current, tokens) {
                Ok(()) => return (true, 0),
                Err(actual) => current = actual,
            }
        }
    }

    /// Puts back `tokens` a lease granted straight to a request (they were never in the
    /// bucket) that another limit of the request refused: spendable until `deadline_ms`, the
    /// lease's. The newest generation's when that lease filed it (its deadline is the
    /// bucket's), else the older one's, whose deadline is no later; lost when that has passed
    /// or the bucket was removed (`false`). Also returns the older generation's tokens it found
    /// past their deadline and dropped.
    pub(crate) fn give_back_granted(
        &self,
        tokens: u64,
        deadline_ms: u64,
        now_ms: u64,
    ) -> (bool, u64) {
        if now_ms >= deadline_ms {
            return (false, 0);
        }
        // Deposits and moves hold this lock: `older` and `state` change together.
        let _moving = self.learned();
        // What is left of the older generation past its deadline is lost first, as in a
        // deposit: with the newest count raised before `state`, a hit that read the old
        // `state` and the new `older` would spend it (found by reading for the model checks).
        let stale = self.drop_stale(now_ms);
        let current = self.state.load(Ordering::Acquire);
        if current & DEAD != 0 {
            return (false, stale);
        }
        if deadline_of(current) != deadline_ms.min(TIME_MASK) {
            // Filed with the older generation, the grant lives until that one's deadline:
            // only if it is no later than the grant's own. Two leases landed since the grant
            // (its generation is gone): never kept past its own deadline (found by the model
            // checks, `loom_give_back_granted_across_deposits_outlives_its_deadline`).
            if older_deadline(self.older.load(Ordering::Acquire)) > deadline_ms.min(TIME_MASK) {
                return (self.join_older_early(tokens, deadline_ms, now_ms), stale);
            }
            return (self.give_back(tokens, now_ms), stale);
        }
        // `older` and `state` change together: takes wait while `state` is marked busy (a
        // take that read the old `state` and the new `older` spent a token of the older
        // generation past its deadline: `loom_give_back_granted_races_a_take_at_the_older_deadline`).
        let Some(frozen) = self.freeze() else {
            return (false, stale);
        };
        let older = self.older.load(Ordering::Acquire);
        self.older.store(
            pack(
                newest_of(older).saturating_add(tokens),
                older_deadline(older),
            ),
            Ordering::Release,
        );
        let total = tokens_of(frozen).saturating_add(tokens);
        let next = (frozen & !(TOKEN_MASK | BUSY)) | total.min(TOKEN_MASK);
        if !self.publish(frozen, next) {
            return (false, stale);
        }
        self.lost
            .fetch_add(total.saturating_sub(TOKEN_MASK), Ordering::Relaxed);
        (true, stale)
    }

    /// Waits for a deposit that marked `state` busy to finish: it does so under the bucket's
    /// lock, so taking the lock is waiting for it (no spinning). Never called with the lock
    /// held: a holder of the lock never sees `state` busy (it is busy only under the lock).
    pub(crate) fn wait_for_deposit(&self) {
        drop(self.learned());
    }

    /// Gives back `tokens` of a grant whose generation is gone (two leases landed since) by
    /// making them the older generation's, and that generation die at the grant's deadline,
    /// `deadline_ms`, if it lived longer: its tokens die early, never late. Worth it only when
    /// the grant is at least what that generation holds (a reservation settled far below its
    /// estimate): else the grant is lost (`false`), and the generation keeps its life. Under
    /// the bucket's lock.
    fn join_older_early(&self, tokens: u64, deadline_ms: u64, now_ms: u64) -> bool {
        let Some(frozen) = self.freeze() else {
            return false;
        };
        let current = frozen & !BUSY;
        let held = tokens_of(current);
        let older = self.older.load(Ordering::Acquire);
        // Dropped past its deadline by the caller: an older generation alive, or none.
        let older_alive = now_ms < older_deadline(older);
        let in_older = if older_alive {
            held.saturating_sub(newest_of(older))
        } else {
            0
        };
        if tokens < in_older || now_ms >= deadline_of(current) {
            // Not worth it (or nothing alive to join): `state` as it was.
            self.publish(frozen, current);
            return false;
        }
        let (newest, dies_ms) = if older_alive {
            (newest_of(older), older_deadline(older).min(deadline_ms))
        } else {
            // What the bucket holds is all of its newest lease.
            (held, deadline_ms)
        };
        self.older.store(pack(newest, dies_ms), Ordering::Release);
        let total = held.saturating_add(tokens);
        let next = (frozen & !(TOKEN_MASK | BUSY)) | total.min(TOKEN_MASK);
        if !self.publish(frozen, next) {
            return false;
        }
        self.lost
            .fetch_add(total.saturating_sub(TOKEN_MASK), Ordering::Relaxed);
        true
    }

    /// Marks `state` busy (a deposit is changing `older` and `state` together: takes and
    /// give-backs wait) and returns what it was; `None` if the bucket was removed. Only under
    /// the bucket's lock: one writer of `older` at a time.
    fn freeze(&self) -> Option<u64> {
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            if current & DEAD != 0 {
                return None;
            }
            match self.state.compare_exchange_weak(
                current,
                current | BUSY,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(current | BUSY),
                Err(actual) => current = actual,
            }
        }
    }

    /// Replaces the busy `frozen` state with `next` (not busy); `false` if the bucket was
    /// removed meanwhile (the only change a busy state may see).
    fn publish(&self, frozen: u64, next: u64) -> bool {
        self.state
            .compare_exchange(frozen, next, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Whether a take that left `left` of `left + cost` tokens crosses the refill-ahead mark.
    #[inline]
    pub(crate) fn crosses_low_water(&self, left: u64, cost: u64) -> bool {
        let mark = u64::from(self.refill_below.load(Ordering::Relaxed));
        left < mark && left + cost >= mark
    }

    /// Adds `tokens` leased by a call that started at `started_ms`, spendable until
    /// `deadline_ms`. What the bucket still holds keeps its own deadline. `Err(tokens)` if the
    /// bucket was removed meanwhile (the caller files them into a new one). `Ok` holds the
    /// tokens lost on the way: held ones past their deadline, and any past [`MAX_TOKENS`].
    ///
    /// Deposits of one bucket never run concurrently (one lease in flight per bucket), and
    /// never while the bucket [moves](Self::moved): both hold the bucket's lock, so that
    /// `older` always goes with the `state` a move sees.
    pub(crate) fn deposit(&self, tokens: u64, deadline_ms: u64, now_ms: u64) -> Result<u64, u64> {
        let _moving = self.learned();
        if self.is_dead() {
            return Err(tokens);
        }
        // What is left of the older generation past its deadline is lost before anything is
        // computed from `older`: carried into the new generation, it would live on until the
        // newer deadline (a hit that saw it stale would have dropped it; none may have come).
        let stale = self.drop_stale(now_ms);
        // Takes wait while `older` and `state` change (a take that read the old `state` and
        // the new `older` spent a dead token: `loom_deposit_races_a_take_at_the_older_deadline`).
        let Some(frozen) = self.freeze() else {
            return Err(tokens);
        };
        let current = frozen & !BUSY;
        let held_alive = tokens_of(current) > 0 && now_ms < deadline_of(current);
        let older = self.older.load(Ordering::Acquire);
        let older_deadline = if !held_alive {
            // Nothing older is alive: after the deposit every token is of the newest lease.
            0
        } else if now_ms < older_deadline(older) && tokens_of(current) > newest_of(older) {
            // Two generations are already held: keep the earliest deadline for both (a third
            // cannot be told apart; the bound holds, a few tokens may expire early).
            older_deadline(older)
        } else {
            deadline_of(current)
        };
        let newest = tokens.min(MAX_TOKENS);
        self.older
            .store(pack(newest, older_deadline), Ordering::Release);
        // Held tokens past their deadline are lost, not carried.
        let (held, expired) = if now_ms < deadline_of(current) {
            (tokens_of(current), 0)
        } else {
            (0, tokens_of(current))
        };
        let total = held.saturating_add(tokens);
        if !self.publish(frozen, pack(total, deadline_ms)) {
            return Err(tokens);
        }
        self.deposited.fetch_add(tokens, Ordering::Relaxed);
        let lost = expired + total.saturating_sub(MAX_TOKENS);
        self.lost.fetch_add(lost, Ordering::Relaxed);
        Ok(lost + stale)
    }

    /// Drops the tokens past their deadline; returns how many were lost.
    pub(crate) fn expire(&self, now_ms: u64) -> u64 {
        self.lose(|current| {
            let dead = now_ms >= deadline_of(current);
            dead.then_some(0)
        })
    }

    /// Drops what is left of the older generation once its deadline passed; returns how many
    /// tokens were lost.
    pub(crate) fn drop_stale(&self, now_ms: u64) -> u64 {
        self.lose(|_| {
            let older = self.older.load(Ordering::Acquire);
            (now_ms >= older_deadline(older)).then_some(newest_of(older))
        })
    }

    /// Lowers the live bucket's tokens to `keep(state)` when that is `Some` and lower, counting
    /// the difference lost; returns it.
    fn lose(&self, keep: impl Fn(u64) -> Option<u64>) -> u64 {
        let mut lost = 0;
        let _ = self
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                // Set anew on every attempt: only the one that succeeds counts.
                lost = 0;
                let tokens = tokens_of(current);
                // A deposit under way: what it files is its own to count.
                let kept = keep(current).filter(|k| current & (DEAD | BUSY) == 0 && *k < tokens)?;
                lost = tokens - kept;
                Some((current & !TOKEN_MASK) | kept)
            });
        self.lost.fetch_add(lost, Ordering::Relaxed);
        lost
    }

    /// Marks the bucket removed if nothing needs it any more at `now_ms`: no live tokens, no
    /// denial in force, and no slow-path use for `keep_ms`. Returns the tokens it held (lost),
    /// or `None` if it is still needed. (A lease that lands on a removed bucket files its
    /// tokens into a new one.)
    pub(crate) fn kill_if_idle(&self, now: Timestamp, keep_ms: u64) -> Option<u64> {
        let now_ms = now.as_millis();
        if now.as_nanos() < self.denied_until()
            || now_ms
                < self
                    .touched_ms
                    .load(Ordering::Relaxed)
                    .saturating_add(keep_ms)
        {
            return None;
        }
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            if current & DEAD != 0 {
                return Some(0);
            }
            if current & BUSY != 0 || (tokens_of(current) > 0 && now_ms < deadline_of(current)) {
                return None;
            }
            match self.state.compare_exchange_weak(
                current,
                current | DEAD,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                // What it held stays in its (dead) state, as `kill` and `moved` leave it: counted
                // lost by the caller, not in `lost` too (`consumed` would count it twice).
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

    /// Kills this bucket and returns a live copy of it, marked shared: its tokens with their deadlines, its
    /// denial, and what it learned, for a bucket that moves out of its map entry. `None` if it
    /// was dead already. A take on this one after the move fails, as on any removed bucket.
    pub(crate) fn moved(&self) -> Option<LocalBucket> {
        // No deposit runs while the lock is held: `older` is the one of the state killed.
        let learned = self.learned();
        let state = self.state.fetch_or(DEAD, Ordering::AcqRel);
        if state & DEAD != 0 {
            return None;
        }
        let copy = |word: &AtomicU64| AtomicU64::new(word.load(Ordering::Acquire));
        Some(LocalBucket {
            state: AtomicU64::new(state),
            older: copy(&self.older),
            source_remaining: copy(&self.source_remaining),
            refill_below: AtomicU32::new(self.refill_below.load(Ordering::Relaxed)),
            denied_until: copy(&self.denied_until),
            touched_ms: copy(&self.touched_ms),
            deposited: copy(&self.deposited),
            lost: copy(&self.lost),
            learned: Mutex::new(learned.clone()),
            shared: true,
        })
    }

    /// Whether this bucket was moved out of its map entry ([`moved`](Self::moved)).
    #[cfg(test)]
    pub(crate) fn is_shared(&self) -> bool {
        self.shared
    }

    #[inline]
    pub(crate) fn is_dead(&self) -> bool {
        self.state.load(Ordering::Acquire) & DEAD != 0
    }

    /// Tokens held (alive or not yet counted lost).
    pub(crate) fn tokens(&self) -> u64 {
        tokens_of(self.state.load(Ordering::Acquire))
    }

    /// Tokens alive at `now_ms`.
    pub(crate) fn live_tokens(&self, now_ms: u64) -> u64 {
        let current = self.state.load(Ordering::Acquire);
        if current & DEAD != 0 || now_ms >= deadline_of(current) {
            return 0;
        }
        let older = self.older.load(Ordering::Acquire);
        let tokens = tokens_of(current);
        if now_ms >= older_deadline(older) {
            tokens.min(newest_of(older))
        } else {
            tokens
        }
    }

    /// The deadline of the newest tokens (ms).
    pub(crate) fn deadline_ms(&self) -> u64 {
        deadline_of(self.state.load(Ordering::Acquire))
    }

    pub(crate) fn touched_ms(&self) -> u64 {
        self.touched_ms.load(Ordering::Relaxed)
    }

    /// Marks the bucket used by the slow path now.
    pub(crate) fn touch(&self, now_ms: u64) {
        self.touched_ms.fetch_max(now_ms, Ordering::Relaxed);
    }

    #[inline]
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

    pub(crate) fn set_refill_below(&self, mark: u64) {
        self.refill_below
            .store(u32::try_from(mark).unwrap_or(u32::MAX), Ordering::Relaxed);
    }

    /// Tokens consumed from this bucket so far: deposited, minus held, minus lost.
    pub(crate) fn consumed(&self) -> u64 {
        self.deposited
            .load(Ordering::Relaxed)
            .saturating_sub(self.tokens())
            .saturating_sub(self.lost.load(Ordering::Relaxed))
    }

    /// What lease sizing has learned about this bucket (the slow path's; leases of one bucket
    /// never run concurrently, so this lock is not contended).
    pub(crate) fn learned(&self) -> MutexGuard<'_, Learned> {
        checked::lock(&self.learned)
    }
}

#[cfg(all(test, lightrate_loom))]
mod loom;

#[cfg(test)]
mod tests {
    use super::*;

    /// How many tokens a take left, if it took.
    fn left(take: Take) -> Option<u64> {
        match take {
            Take::Taken(left, _) => Some(left),
            _ => None,
        }
    }

    #[test]
    fn a_bucket_is_small() {
        // It lives inline in its map entry; what a hit reads is its first 32 bytes.
        assert!(std::mem::size_of::<LocalBucket>() <= 120);
    }

    #[test]
    fn takes_only_what_is_held() {
        let b = LocalBucket::new(0);
        assert_eq!(b.try_take(1, 0), Take::Empty);
        assert_eq!(b.deposit(3, 5_000, 0), Ok(0));
        assert_eq!(left(b.try_take(2, 1)), Some(1));
        assert_eq!(b.try_take(2, 1), Take::Empty);
        assert_eq!(left(b.try_take(1, 1)), Some(0));
    }

    #[test]
    fn tokens_die_at_their_deadline() {
        let b = LocalBucket::new(0);
        b.deposit(5, 5_000, 0).unwrap();
        assert_eq!(left(b.try_take(1, 4_999)), Some(4));
        assert_eq!(b.try_take(1, 5_000), Take::Expired);
        assert_eq!(b.live_tokens(5_000), 0);
        assert_eq!(b.expire(5_000), 4);
        assert_eq!(b.try_take(1, 5_000), Take::Empty);
        assert_eq!(b.consumed(), 1);
    }

    #[test]
    fn a_deposit_does_not_extend_the_life_of_older_tokens() {
        let b = LocalBucket::new(0);
        b.deposit(5, 5_000, 0).unwrap();
        assert_eq!(left(b.try_take(2, 100)), Some(3));
        // A refill-ahead lease lands: 3 old (until 5 s) + 10 new (until 7 s).
        b.deposit(10, 7_000, 2_000).unwrap();
        assert_eq!(b.live_tokens(4_999), 13);
        assert_eq!(left(b.try_take(1, 4_000)), Some(12));
        // At 5 s the 2 old ones left die; the 10 new ones live on.
        assert_eq!(b.live_tokens(5_000), 10);
        assert_eq!(b.try_take(1, 5_000), Take::Stale);
        assert_eq!(b.drop_stale(5_000), 2);
        assert_eq!(left(b.try_take(1, 5_000)), Some(9));
        assert_eq!(left(b.try_take(9, 6_999)), Some(0));
        assert_eq!(b.consumed(), 2 + 1 + 1 + 9);
    }

    #[test]
    fn spending_the_older_generation_first_keeps_the_newer() {
        let b = LocalBucket::new(0);
        b.deposit(2, 5_000, 0).unwrap();
        b.deposit(10, 7_000, 1_000).unwrap();
        assert_eq!(left(b.try_take(3, 2_000)), Some(9));
        // The two old tokens were spent first: nothing is stale at 5 s.
        assert_eq!(left(b.try_take(1, 5_000)), Some(8));
        assert_eq!(b.drop_stale(5_000), 0);
    }

    #[test]
    fn a_third_generation_takes_the_earliest_deadline() {
        let b = LocalBucket::new(0);
        b.deposit(4, 5_000, 0).unwrap();
        b.deposit(4, 6_000, 1_000).unwrap();
        b.deposit(4, 7_000, 2_000).unwrap();
        // At 5 s only the newest 4 are certainly younger than their horizon.
        assert_eq!(b.live_tokens(5_000), 4);
        assert_eq!(b.live_tokens(4_999), 12);
    }

    #[test]
    fn a_deposit_on_expired_tokens_counts_them_lost() {
        let b = LocalBucket::new(0);
        b.deposit(5, 5_000, 0).unwrap();
        assert_eq!(b.deposit(3, 9_000, 6_000), Ok(5));
        assert_eq!(b.live_tokens(6_000), 3);
        assert_eq!(b.lost.load(Ordering::Relaxed), 5);
        assert_eq!(left(b.try_take(3, 6_000)), Some(0));
    }

    #[test]
    fn a_deposit_does_not_revive_stale_tokens() {
        let b = LocalBucket::new(0);
        b.deposit(5, 5_000, 0).unwrap();
        b.deposit(10, 7_000, 2_000).unwrap();
        // 3 of the first lease are left, 10 of the second.
        assert_eq!(left(b.try_take(2, 3_000)), Some(13));
        // At 6 s the first lease's 3 are past their deadline; no hit saw them stale before a
        // third lease lands: they are lost, not carried to the second lease's deadline.
        assert_eq!(b.deposit(10, 9_000, 6_000), Ok(3));
        assert_eq!(b.live_tokens(6_500), 20);
        assert_eq!(b.try_take(21, 6_500), Take::Empty);
        assert_eq!(left(b.try_take(20, 6_500)), Some(0));
    }

    #[test]
    fn a_moved_bucket_keeps_its_tokens_and_their_deadlines() {
        let b = LocalBucket::new(0);
        b.deposit(5, 5_000, 0).unwrap();
        b.deposit(10, 7_000, 2_000).unwrap();
        b.set_denied_until(9);
        let m = b.moved().unwrap();
        assert!(b.is_dead() && !m.is_dead());
        assert!(m.is_shared() && !b.is_shared());
        assert!(b.moved().is_none(), "a dead bucket does not move");
        assert_eq!(b.try_take(1, 3_000), Take::Expired);
        assert_eq!(m.live_tokens(4_999), 15);
        assert_eq!(m.live_tokens(5_000), 10);
        assert_eq!(m.denied_until(), 9);
        assert_eq!(m.consumed(), 0);
        assert_eq!(left(m.try_take(15, 4_000)), Some(0));
        assert_eq!(b.deposit(1, 8_000, 4_000), Err(1));
    }

    #[test]
    fn removed_buckets_take_no_deposits() {
        let b = LocalBucket::new(0);
        b.deposit(2, 5_000, 0).unwrap();
        assert_eq!(b.kill(), 2);
        assert!(b.is_dead());
        assert_eq!(b.deposit(2, 6_000, 1_000), Err(2));
        assert_eq!(b.try_take(1, 1_000), Take::Expired);
    }

    #[test]
    fn idle_buckets_are_killed_only_when_nothing_needs_them() {
        let b = LocalBucket::new(0);
        b.deposit(1, 5_000, 0).unwrap();
        // Live tokens.
        assert_eq!(
            b.kill_if_idle(Timestamp::from_nanos(4_000_000_000), 1_000),
            None
        );
        // Tokens dead, but used recently.
        b.touch(4_500);
        assert_eq!(
            b.kill_if_idle(Timestamp::from_nanos(5_000_000_000), 1_000),
            None
        );
        // A denial in force.
        b.set_denied_until(7_000_000_000);
        assert_eq!(
            b.kill_if_idle(Timestamp::from_nanos(6_000_000_000), 1_000),
            None
        );
        let consumed = b.consumed();
        assert_eq!(
            b.kill_if_idle(Timestamp::from_nanos(7_000_000_000), 1_000),
            Some(1)
        );
        assert!(b.is_dead());
        // The token it held was lost, not consumed, and not counted twice.
        assert_eq!(b.consumed(), consumed);
        let (deposited, lost) = (
            b.deposited.load(Ordering::Relaxed),
            b.lost.load(Ordering::Relaxed),
        );
        assert_eq!(deposited, b.consumed() + b.tokens() + lost);
    }

    #[test]
    fn a_take_given_back_is_spendable_again() {
        let b = LocalBucket::new(0);
        b.deposit(3, 5_000, 0).unwrap();
        assert_eq!(left(b.try_take(2, 10)), Some(1));
        assert!(b.give_back(2, 20));
        assert_eq!(b.live_tokens(20), 3);
        assert_eq!(b.consumed(), 0);
        assert_eq!(left(b.try_take(3, 30)), Some(0));
        assert_eq!(b.consumed(), 3);
    }

    #[test]
    fn a_give_back_never_revives_a_bucket() {
        let b = LocalBucket::new(0);
        // Nothing deposited: no deadline to give back under.
        assert!(!b.give_back(1, 0));
        b.deposit(3, 5_000, 0).unwrap();
        assert_eq!(left(b.try_take(1, 10)), Some(2));
        // Past the deadline: lost.
        assert!(!b.give_back(1, 5_000));
        assert_eq!(b.kill(), 2);
        assert!(!b.give_back(1, 100));
        assert_eq!(b.tokens(), 2);
    }

    #[test]
    fn a_give_back_after_the_older_deadline_is_stale() {
        let b = LocalBucket::new(0);
        b.deposit(2, 5_000, 0).unwrap();
        b.deposit(10, 7_000, 1_000).unwrap();
        // The two older tokens are spent, then given back after their deadline passed:
        // they count as the older generation, and die.
        assert_eq!(left(b.try_take(2, 2_000)), Some(10));
        assert!(b.give_back(2, 5_100));
        assert_eq!(b.live_tokens(5_100), 10);
        assert_eq!(b.try_take(1, 5_100), Take::Stale);
    }

    #[test]
    fn a_granted_token_given_back_joins_its_lease() {
        let b = LocalBucket::new(0);
        // A lease that served its waiters and filed nothing.
        b.deposit(0, 5_000, 0).unwrap();
        assert_eq!(b.give_back_granted(1, 5_000, 10), (true, 0));
        assert_eq!(b.live_tokens(10), 1);
        assert_eq!(left(b.try_take(1, 20)), Some(0));
        // A grant of an older lease goes to the older generation, and dies with it.
        b.deposit(3, 5_000, 100).unwrap();
        b.deposit(4, 7_000, 200).unwrap();
        assert_eq!(b.give_back_granted(1, 5_000, 300), (true, 0));
        assert_eq!(b.live_tokens(4_999), 8);
        assert_eq!(b.live_tokens(5_000), 4);
        // Past its deadline: lost.
        assert_eq!(b.give_back_granted(1, 5_000, 5_000), (false, 0));
        // The older generation's leftovers past their deadline are dropped before a grant
        // joins the newest (a hit must not read them as the newest's).
        let c = LocalBucket::new(0);
        c.deposit(2, 5_000, 0).unwrap();
        c.deposit(3, 7_000, 1_000).unwrap();
        assert_eq!(c.give_back_granted(2, 7_000, 5_000), (true, 2));
        assert_eq!(c.live_tokens(5_000), 5);
        assert_eq!(left(c.try_take(5, 5_000)), Some(0));
    }

    #[test]
    fn deposits_saturate_at_max_tokens() {
        let b = LocalBucket::new(0);
        assert_eq!(b.deposit(MAX_TOKENS - 1, 5_000, 0), Ok(0));
        assert_eq!(b.deposit(10, 5_000, 0), Ok(9));
        assert_eq!(b.tokens(), MAX_TOKENS);
    }

    #[test]
    fn refill_ahead_mark_is_crossed_once() {
        let b = LocalBucket::new(0);
        b.set_refill_below(3);
        assert!(!b.crosses_low_water(3, 1));
        assert!(b.crosses_low_water(2, 1));
        assert!(!b.crosses_low_water(1, 1));
        assert!(b.crosses_low_water(0, 5));
        b.set_refill_below(0);
        assert!(!b.crosses_low_water(0, 1));
    }

    #[test]
    fn a_big_grant_given_back_after_two_leases_joins_the_older_generation_early() {
        // A lease of 5 s granted everything straight to requests; two leases landed since (1
        // token until 7 s, 2 until 9 s).
        let b = LocalBucket::new(0);
        b.deposit(0, 5_000, 0).unwrap();
        b.deposit(1, 7_000, 1_000).unwrap();
        b.deposit(2, 9_000, 1_000).unwrap();
        // 3 given back: more than the older generation holds (1), so they join it, and it
        // dies at the grant's 5 s.
        assert_eq!(b.give_back_granted(3, 5_000, 1_000), (true, 0));
        assert_eq!(b.live_tokens(4_999), 6);
        assert_eq!(b.live_tokens(5_000), 2);
        // 1 given back to a bucket whose older generation holds 4: lost, and it keeps its life.
        let b = LocalBucket::new(0);
        b.deposit(0, 5_000, 0).unwrap();
        b.deposit(4, 7_000, 1_000).unwrap();
        b.deposit(2, 9_000, 1_000).unwrap();
        assert_eq!(b.give_back_granted(1, 5_000, 1_000), (false, 0));
        assert_eq!(b.live_tokens(6_999), 6);
    }
}
