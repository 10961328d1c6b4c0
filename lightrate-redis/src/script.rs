//! The consume script: refill and take in one atomic step, in the embedded source's exact units.

use lightrate_core::{Error, ErrorKind, Rule};

/// Lua in Redis computes in doubles, exact for integers below 2⁵³: a bucket's capacity in units
/// (`burst_rate × period_ms`) must stay below this.
pub const MAX_BUCKET_UNITS: u64 = 1 << 53;

/// A rule's bucket in the script's integer units: one token is `units_per_token` units (the
/// rate's period in ms) and `units_per_ms` units (the rate's tokens per period) accrue every
/// millisecond, so refills are exact for whole milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BucketShape {
    pub(crate) units_per_token: u64,
    pub(crate) units_per_ms: u64,
    pub(crate) capacity: u64,
}

impl BucketShape {
    /// The shape of `rule`'s buckets; a configuration error when its capacity in units is not
    /// below [`MAX_BUCKET_UNITS`].
    pub(crate) fn of(rule: &Rule) -> Result<BucketShape, Error> {
        let (tokens, period_ms) = rule.refill_rate.tokens_per_period();
        BucketShape::new(tokens, period_ms, rule.burst_rate).ok_or_else(|| {
            Error::new(
                ErrorKind::Configuration,
                format!(
                    "rule {:?}: burst_rate {} × refill period {period_ms} ms must be below 2^53 \
                     for Redis (Lua numbers are doubles); lower the burst or use a faster rate",
                    rule.id, rule.burst_rate
                ),
            )
        })
    }

    /// `tokens` per `period_ms` ms, capacity `burst` tokens; `None` past [`MAX_BUCKET_UNITS`].
    pub(crate) fn new(tokens: u64, period_ms: u64, burst: u64) -> Option<BucketShape> {
        let period_ms = period_ms.max(1);
        let capacity = burst
            .checked_mul(period_ms)
            .filter(|c| *c < MAX_BUCKET_UNITS)?;
        Some(BucketShape {
            units_per_token: period_ms,
            units_per_ms: tokens,
            capacity,
        })
    }
}

/// KEYS[1]: the bucket. ARGV: units per token, units per ms, capacity in units, tokens wanted,
/// partial grants (`1`/`0`), and optionally the time in ms (tests; Redis `TIME` otherwise).
/// Returns `{granted, tokens remaining, ms until one more whole token (-1: never)}`.
///
/// The stored value is `"<level>:<time ms>:<units per token>:<capacity>"` (values written
/// before the capacity was stored have three fields). A missing key is a full bucket. A value
/// written under another burst or rate keeps what the user used: `capacity − level`.
/// A bucket that is full after the take is deleted; any other is written with an expiry at
/// the moment it would be full again, so Redis holds only the buckets in use. Every value is an
/// integer below 2⁵³ (checked at construction), where doubles are exact; a product that
/// exceeds 2⁵³ is only compared with smaller integers, which rounding cannot reverse.
/// Numbers are written with `%d`, never `tostring` (14 significant digits).
pub(crate) const CONSUME_LUA: &str = r#"
local unit = tonumber(ARGV[1])
local per_ms = tonumber(ARGV[2])
local cap = tonumber(ARGV[3])
local wanted = tonumber(ARGV[4])
local partial = ARGV[5] == '1'
local now
if ARGV[6] then
  now = tonumber(ARGV[6])
else
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

local level, t = cap, now
local stored = redis.call('GET', KEYS[1])
if stored then
  local l, st, su, sc = string.match(stored, '^(%d+):(%d+):(%d+):?(%d*)$')
  if l then
    level, t = tonumber(l), tonumber(st)
    su = tonumber(su)
    if sc ~= '' then
      -- Written under a rule of another burst or rate: keep what the user used (whole tokens,
      -- rounded up), so that a larger burst gives its room at once.
      local used = tonumber(sc) - level
      if used < 0 then used = 0 end
      if su ~= unit then
        local tokens = math.floor(used / su)
        if tokens * su < used then tokens = tokens + 1 end
        used = tokens * unit
      end
      if used > cap then used = cap end
      level = cap - used
    elseif su ~= unit then
      -- Written without its capacity (before it was stored): keep the whole tokens.
      level = math.floor(level / su) * unit
    end
    if level > cap then level = cap end
  end
end

local elapsed = now - t
if elapsed > 0 and per_ms > 0 then
  local added = per_ms * elapsed
  if added >= cap - level then level = cap else level = level + added end
end
if now > t then t = now end

local available = math.floor(level / unit)
local granted = 0
if wanted <= available then
  granted = wanted
elseif partial then
  granted = available
end
level = level - granted * unit

if level >= cap then
  redis.call('DEL', KEYS[1])
else
  local value = string.format('%d:%d:%d:%d', level, t, unit, cap)
  if per_ms > 0 then
    local missing = cap - level
    local ms = math.floor(missing / per_ms)
    if ms * per_ms < missing then ms = ms + 1 end
    redis.call('SET', KEYS[1], value, 'PX', string.format('%d', ms))
  else
    redis.call('SET', KEYS[1], value)
  end
end

-- Milliseconds until one more whole token, rounded up (-1: never).
local retry = -1
if per_ms > 0 then
  local short = (math.floor(level / unit) + 1) * unit - level
  retry = math.floor(short / per_ms)
  if retry * per_ms < short then retry = retry + 1 end
end
return {granted, math.floor(level / unit), retry}
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use lightrate_core::{RefillRate, RuleSet};

    #[test]
    fn a_rule_has_the_units_of_its_exact_rate() {
        let shape = |rate: RefillRate, burst| {
            let rules = RuleSet::builder()
                .default_rule(rate, burst)
                .build()
                .unwrap();
            BucketShape::of(rules.default_rule()).unwrap()
        };
        let per = |tokens, period_ms, capacity| BucketShape {
            units_per_token: period_ms,
            units_per_ms: tokens,
            capacity,
        };
        assert_eq!(shape(RefillRate::per_second(1), 20), per(1, 1000, 20_000));
        assert_eq!(shape(RefillRate::per_second(10), 5), per(1, 100, 500));
        assert_eq!(shape(RefillRate::per_second(5000), 5), per(5, 1, 5));
        assert_eq!(shape(RefillRate::per_hour(10), 2), per(1, 360_000, 720_000));
        assert_eq!(
            shape(RefillRate::per_day(1), 3),
            per(1, 86_400_000, 259_200_000)
        );
        assert_eq!(shape(RefillRate::per_second(0), 5), per(0, 1, 5));
    }

    #[test]
    fn capacities_past_two_to_the_53_are_refused() {
        let shape = BucketShape::new(1, 1000, 20).unwrap();
        assert_eq!(
            shape,
            BucketShape {
                units_per_token: 1000,
                units_per_ms: 1,
                capacity: 20_000
            }
        );
        assert!(BucketShape::new(1, 1 << 20, (1 << 33) - 1).is_some());
        assert!(BucketShape::new(1, 1 << 20, 1 << 33).is_none());
        assert!(BucketShape::new(1, 2, u64::MAX).is_none());
        assert_eq!(BucketShape::new(0, 0, 5).unwrap().units_per_token, 1);
    }
}
