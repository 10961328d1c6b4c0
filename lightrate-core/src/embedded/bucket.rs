//! [`Bucket`]: one (user, rule) token bucket of the embedded source, in exact integer maths.

use crate::clock::Timestamp;
use crate::RefillRate;

/// A token bucket: a level as of `updated`, in units of the rule's rate
/// ([`RefillRate::units`]): one token is `unit` units and the level grows by `per_ns` units
/// every nanosecond, so the maths is exact integer arithmetic, with no rounding and no drift
/// however slow the rate or however long the bucket lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Bucket {
    level: u128,
    updated: Timestamp,
}

/// A rule's rate and capacity in bucket units.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Scale {
    per_ns: u128,
    unit: u128,
    capacity: u128,
}

impl Scale {
    pub(crate) fn new(rate: RefillRate, capacity_tokens: u64) -> Self {
        let (per_ns, unit) = rate.units();
        Scale {
            per_ns,
            unit,
            capacity: u128::from(capacity_tokens).saturating_mul(unit),
        }
    }

    pub(crate) fn of(rule: &crate::Rule) -> Self {
        Scale::new(rule.refill_rate, rule.burst_rate)
    }
}

impl Bucket {
    /// A full bucket.
    pub(crate) fn full(scale: Scale, now: Timestamp) -> Self {
        Bucket {
            level: scale.capacity,
            updated: now,
        }
    }

    /// Brings the level forward to `now` (time that goes backwards counts as none).
    pub(crate) fn refill(&mut self, now: Timestamp, scale: Scale) {
        let elapsed = now.as_nanos().saturating_sub(self.updated.as_nanos());
        let added = u128::from(elapsed).saturating_mul(scale.per_ns);
        self.level = self.level.saturating_add(added).min(scale.capacity);
        self.updated = self.updated.max(now);
    }

    /// Whole tokens in the bucket.
    pub(crate) fn tokens(&self, scale: Scale) -> u64 {
        u64::try_from(self.level / scale.unit).unwrap_or(u64::MAX)
    }

    /// Takes up to `wanted` whole tokens (all or nothing unless `partial`); returns how many.
    pub(crate) fn take(&mut self, wanted: u64, partial: bool, scale: Scale) -> u64 {
        let available = self.tokens(scale);
        let granted = if wanted <= available {
            wanted
        } else if partial {
            available
        } else {
            0
        };
        self.level -= u128::from(granted) * scale.unit;
        granted
    }

    /// Milliseconds until the bucket holds one more whole token, rounded up; `None` if it
    /// never refills.
    pub(crate) fn next_token_ms(&self, scale: Scale) -> Option<u64> {
        if scale.per_ns == 0 {
            return None;
        }
        let next = (self.level / scale.unit + 1) * scale.unit;
        let nanos = (next - self.level).div_ceil(scale.per_ns);
        Some(u64::try_from(nanos.div_ceil(1_000_000)).unwrap_or(u64::MAX))
    }

    /// The bucket under another rule's scale, keeping what its user *used* (the capacity
    /// less the level, part tokens rounded up): a larger burst gives the room it adds at once,
    /// a smaller one takes what was used from the new capacity (at least nothing left).
    pub(super) fn rescale(&mut self, from: Scale, to: Scale) {
        let used = from.capacity.saturating_sub(self.level);
        let used = used
            .saturating_mul(to.unit)
            .div_ceil(from.unit.max(1))
            .min(to.capacity);
        self.level = to.capacity - used;
    }

    /// Whether the bucket is full at its last update (indistinguishable from a new bucket).
    pub(super) fn is_full(&self, scale: Scale) -> bool {
        self.level >= scale.capacity
    }
}
