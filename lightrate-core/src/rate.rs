//! [`RefillRate`]: tokens per period, held as an exact fraction.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Error, ErrorKind};

/// The longest period a rate may have: 10¹² ms, about 31.7 years. A positive rate slower than
/// one token per this period cannot be expressed. Every rate written as `N/<unit>` (with a
/// period up to this) or as a decimal with up to 9 places is held exactly; any other rate from
/// one token per 30 days up is held within one part in 10¹¹. Written to the wire and read
/// back, a rate is the same rate when it is `N/<unit>` (up to a million per day) or a decimal
/// of up to 15 significant digits, and within a few parts in 10¹⁵ otherwise.
const MAX_PERIOD_MS: u64 = 1_000_000_000_000;

/// The fastest rate: 10¹⁵ tokens per millisecond (10¹⁸ per second), so that every rate, written
/// as a float on the wire, reads back.
const MAX_TOKENS_PER_MS: u64 = 1_000_000_000_000_000;

const NANOS_PER_MS: u128 = 1_000_000;

/// The units a rate can be written in, with their length in milliseconds (the first name is
/// the one [`Display`](fmt::Display) writes).
const UNITS: [(&[&str], u64); 5] = [
    (&["ms", "millisecond", "milliseconds"], 1),
    (&["s", "second", "seconds", "sec", "secs"], 1_000),
    (&["min", "minute", "minutes", "m"], 60_000),
    (&["hour", "hours", "h", "hr"], 3_600_000),
    (&["day", "days", "d"], 86_400_000),
];

/// A refill rate: `tokens` tokens every `period` milliseconds, held as a reduced fraction, so
/// that slow rates are exact: `10/hour` is 1 token per 360 000 ms, not a rounded number of
/// tokens per second.
///
/// Written as `"10/hour"`, `"100/day"`, `"5/minute"`, `"2/second"`, `"1/30days"`, or as a
/// decimal number of tokens per second (`"0.5"`). On the wire (the LightRate protocol's
/// `refillRate`) it is a JSON number of tokens per second: whole rates as integers (`10`),
/// others as the shortest decimal that reads back as the same rate.
///
/// ```
/// use lightrate_core::RefillRate;
/// use std::time::Duration;
///
/// let hourly: RefillRate = "10/hour".parse().unwrap();
/// assert_eq!(hourly, RefillRate::per_hour(10));
/// assert_eq!(hourly.time_per_token(), Some(Duration::from_secs(360)));
/// assert_eq!(hourly.to_string(), "10/hour");
/// assert_eq!(RefillRate::per_second(10).time_per_token(), Some(Duration::from_millis(100)));
/// assert_eq!("0.5".parse::<RefillRate>().unwrap().time_per_token(), Some(Duration::from_secs(2)));
/// assert_eq!(RefillRate::per_second(0).time_per_token(), None);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RefillRate {
    /// Tokens per period; 0 for a rate that never refills.
    tokens: u64,
    /// The period in milliseconds, 1..=MAX_PERIOD_MS; 1 when `tokens` is 0.
    period_ms: u64,
}

const fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        let t = a % b;
        a = b;
        b = t;
    }
    a
}

impl RefillRate {
    /// The longest period a rate may have: 10¹² ms, about 31.7 years (see the module notes:
    /// rates written as `N/<unit>` or as decimals with up to 9 places are exact).
    pub const MAX_PERIOD_MS: u64 = MAX_PERIOD_MS;

    /// A rate that never refills.
    pub const ZERO: RefillRate = RefillRate {
        tokens: 0,
        period_ms: 1,
    };

    /// The fastest rate held: 10¹⁸ tokens per second.
    pub const MAX: RefillRate = RefillRate {
        tokens: MAX_TOKENS_PER_MS,
        period_ms: 1,
    };

    /// `tokens` tokens every `period_ms` milliseconds, reduced; `None` if the period is 0, the
    /// reduced period is longer than [`MAX_PERIOD_MS`](Self::MAX_PERIOD_MS), or the rate is
    /// faster than [`MAX`](Self::MAX).
    pub const fn new(tokens: u64, period_ms: u64) -> Option<Self> {
        if period_ms == 0 {
            return None;
        }
        if tokens == 0 {
            return Some(RefillRate::ZERO);
        }
        let g = gcd(tokens as u128, period_ms as u128) as u64;
        let period_ms = period_ms / g;
        if period_ms > MAX_PERIOD_MS || tokens / g / period_ms > MAX_TOKENS_PER_MS {
            return None;
        }
        Some(RefillRate {
            tokens: tokens / g,
            period_ms,
        })
    }

    /// `tokens` per unit, saturating at [`MAX`](Self::MAX) (units are far shorter than the
    /// longest period, so that is the only way `new` can refuse).
    const fn per_unit(tokens: u64, unit_ms: u64) -> Self {
        match RefillRate::new(tokens, unit_ms) {
            Some(rate) => rate,
            None => RefillRate::MAX,
        }
    }

    /// `tokens` tokens per second.
    pub const fn per_second(tokens: u64) -> Self {
        RefillRate::per_unit(tokens, 1_000)
    }

    /// `tokens` tokens per minute.
    pub const fn per_minute(tokens: u64) -> Self {
        RefillRate::per_unit(tokens, 60_000)
    }

    /// `tokens` tokens per hour.
    pub const fn per_hour(tokens: u64) -> Self {
        RefillRate::per_unit(tokens, 3_600_000)
    }

    /// `tokens` tokens per day.
    pub const fn per_day(tokens: u64) -> Self {
        RefillRate::per_unit(tokens, 86_400_000)
    }

    /// `tokens` tokens per `period` (whole milliseconds); `None` if the period is under a
    /// millisecond or longer than [`MAX_PERIOD_MS`](Self::MAX_PERIOD_MS) once reduced.
    pub fn per(tokens: u64, period: Duration) -> Option<Self> {
        RefillRate::new(tokens, u64::try_from(period.as_millis()).ok()?)
    }

    /// `millitokens` thousandths of a token per second.
    pub const fn from_millitokens_per_second(millitokens: u64) -> Self {
        RefillRate::per_unit(millitokens, 1_000_000)
    }

    /// The exact rate: `(tokens, period_ms)`, a reduced fraction (`(0, 1)` for no refill).
    pub const fn tokens_per_period(self) -> (u64, u64) {
        (self.tokens, self.period_ms)
    }

    /// The rate in thousandths of a token per second, rounded to the nearest.
    pub fn millitokens_per_second(self) -> u64 {
        let scaled = u128::from(self.tokens) * 1_000_000;
        let period = u128::from(self.period_ms);
        u64::try_from((scaled + period / 2) / period).unwrap_or(u64::MAX)
    }

    /// Tokens per second as a float, for display and metrics.
    pub fn as_f64(self) -> f64 {
        self.tokens as f64 * 1000.0 / self.period_ms as f64
    }

    /// Whether tokens are never added.
    pub const fn is_zero(self) -> bool {
        self.tokens == 0
    }

    /// How long one token takes to accrue, rounded up to the nanosecond; `None` if never.
    pub fn time_per_token(self) -> Option<Duration> {
        self.time_for(1)
    }

    /// How long `tokens` tokens take to accrue, rounded up to the nanosecond; `None` if never.
    pub fn time_for(self, tokens: u64) -> Option<Duration> {
        if self.tokens == 0 {
            return None;
        }
        let nanos = (u128::from(tokens) * u128::from(self.period_ms) * NANOS_PER_MS)
            .div_ceil(u128::from(self.tokens));
        Some(Duration::from_nanos(
            u64::try_from(nanos).unwrap_or(u64::MAX),
        ))
    }

    /// Whole tokens that accrue in `time` (rounded down).
    pub fn tokens_in(self, time: Duration) -> u64 {
        let (per_ns, unit) = self.units();
        u64::try_from(time.as_nanos().saturating_mul(per_ns) / unit).unwrap_or(u64::MAX)
    }

    /// Tokens added per nanosecond and the size of a token, in the same units: a bucket's
    /// level in these units grows by exactly `per_nanosecond` every nanosecond (integer
    /// arithmetic, no rounding, no drift).
    pub(crate) fn units(self) -> (u128, u128) {
        (
            u128::from(self.tokens),
            u128::from(self.period_ms) * NANOS_PER_MS,
        )
    }

    /// Converts a rate in tokens per second; `None` if negative, not finite, too fast (over
    /// 2⁶⁴ tokens per millisecond) or positive but slower than one token per
    /// [`MAX_PERIOD_MS`](Self::MAX_PERIOD_MS). Exact for decimals of up to 9 places; others are held within one
    /// part in 10¹¹.
    pub fn from_f64(per_second: f64) -> Option<Self> {
        if !per_second.is_finite() || per_second < 0.0 {
            return None;
        }
        // The shortest decimal that reads back as this float is what the writer meant when it
        // is short (a person's `0.000277778`); a long one is a fraction's rounding (`1/3600` is
        // `0.0002777777777777778`): then the simplest fraction within that rounding.
        let text = format!("{per_second}");
        let significant = text
            .bytes()
            .filter(u8::is_ascii_digit)
            .skip_while(|b| *b == b'0')
            .count();
        let fit = if significant <= 15 {
            Fit::Exact
        } else {
            Fit::Simplest
        };
        parse_decimal(&text, 1_000, fit)
    }

    /// The rate as a number for the wire: an integer when it is a whole number of tokens per
    /// second, else a float that [`from_f64`](Self::from_f64) reads back as the same rate.
    fn to_wire(self) -> WireNumber {
        let scaled = u128::from(self.tokens) * 1_000;
        let period = u128::from(self.period_ms);
        match u64::try_from(scaled / period) {
            Ok(whole) if scaled % period == 0 => WireNumber::Integer(whole),
            _ => WireNumber::Float(self.as_f64()),
        }
    }
}

enum WireNumber {
    Integer(u64),
    Float(f64),
}

/// How a decimal becomes a fraction.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fit {
    /// Exactly, when the period allows (text a person wrote).
    Exact,
    /// The simplest fraction within a float's rounding of it (a float read from JSON or TOML).
    Simplest,
}

/// Parses a non-negative decimal (`12`, `0.25`, `1.5e-3`) as tokens per `unit_ms`.
fn parse_decimal(text: &str, unit_ms: u64, fit: Fit) -> Option<RefillRate> {
    let text = text.trim();
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(at) => (&text[..at], text[at + 1..].parse::<i32>().ok()?),
        None => (text, 0),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((w, f)) => (w, f),
        None => (mantissa, ""),
    };
    let whole = whole.strip_prefix('+').unwrap_or(whole);
    if whole.is_empty() && fraction.is_empty()
        || !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    // Significant digits as an integer, and the power of ten they are scaled by.
    let digits = format!("{whole}{fraction}");
    let digits = digits.trim_start_matches('0');
    let mut scale = i64::from(exponent) - fraction.len() as i64;
    let digits = {
        let kept = digits.trim_end_matches('0');
        scale += (digits.len() - kept.len()) as i64;
        kept
    };
    if digits.is_empty() {
        return Some(RefillRate::ZERO);
    }
    if digits.len() > 36 {
        return None;
    }
    let value: u128 = digits.parse().ok()?;
    // tokens per ms = value · 10^scale / unit_ms
    let (num, den) = if scale >= 0 {
        (
            value.checked_mul(10u128.checked_pow(u32::try_from(scale).ok()?)?)?,
            u128::from(unit_ms),
        )
    } else {
        let pow = 10u128.checked_pow(u32::try_from(-scale).ok()?)?;
        (value, pow.checked_mul(u128::from(unit_ms))?)
    };
    from_ratio(num, den, fit)
}

/// The rate of `num / den` tokens per millisecond: exact when it fits, else the closest
/// fraction with a period of at most `MAX_PERIOD_MS`: the first convergent of its continued
/// fraction within 10⁻¹⁵ (what a float's rounding leaves), else the last that fits.
fn from_ratio(num: u128, den: u128, fit: Fit) -> Option<RefillRate> {
    if num == 0 {
        return Some(RefillRate::ZERO);
    }
    let g = gcd(num, den);
    let (num, den) = (num / g, den / g);
    if fit == Fit::Exact && den <= u128::from(MAX_PERIOD_MS) {
        return RefillRate::new(u64::try_from(num).ok()?, u64::try_from(den).ok()?);
    }
    // Continued fraction convergents h/k of num/den, until one is close enough or the next
    // period would be too long.
    let (mut h0, mut h1): (u128, u128) = (0, 1);
    let (mut k0, mut k1): (u128, u128) = (1, 0);
    let (mut n, mut d) = (num, den);
    let mut best: Option<(u128, u128)> = None;
    while d != 0 {
        let a = n / d;
        let h2 = a.checked_mul(h1)?.checked_add(h0)?;
        let k2 = a.checked_mul(k1).and_then(|x| x.checked_add(k0));
        let Some(k2) = k2.filter(|k| *k <= u128::from(MAX_PERIOD_MS)) else {
            // The next convergent's period is too long. The best fraction under the longest
            // period is then this convergent or the semiconvergent with the largest period
            // that fits (a rate whose own period is near the longest comes back as itself).
            let m = (u128::from(MAX_PERIOD_MS) - k0) / k1;
            if m >= 1 && h1 > 0 {
                let (h, k) = (m * h1 + h0, m * k1 + k0);
                if closer((h, k), (h1, k1), num, den) {
                    best = Some((h, k));
                }
            }
            break;
        };
        (h0, h1, k0, k1) = (h1, h2, k1, k2);
        (n, d) = (d, n - a * d);
        best = Some((h1, k1));
        // |x - h/k| = d / (k·(k·n + k'·d)), with n/d the complete quotient now and k' the
        // previous denominator; relative to x ≈ h/k that is d / (h·(k·n + k'·d)).
        let relative_error = d as f64 / (h1 as f64 * (k1 as f64 * n as f64 + k0 as f64 * d as f64));
        if h1 > 0 && relative_error <= 1e-15 {
            break;
        }
    }
    let (tokens, period) = best?;
    if tokens == 0 {
        // Slower than one token per MAX_PERIOD_MS.
        return None;
    }
    RefillRate::new(u64::try_from(tokens).ok()?, u64::try_from(period).ok()?)
}

/// Whether `a` is closer than `b` to `num / den` (exact while the products fit in 128 bits).
fn closer(a: (u128, u128), b: (u128, u128), num: u128, den: u128) -> bool {
    // |num/den - h/k| = |num·k - h·den| / (den·k): compare the numerators over k.
    let off = |(h, k): (u128, u128)| Some(num.checked_mul(k)?.abs_diff(h.checked_mul(den)?));
    match (off(a), off(b)) {
        (Some(ea), Some(eb)) => match (ea.checked_mul(b.1), eb.checked_mul(a.1)) {
            (Some(x), Some(y)) => x < y,
            _ => (ea as f64) * (b.1 as f64) < (eb as f64) * (a.1 as f64),
        },
        _ => false,
    }
}

impl Default for RefillRate {
    fn default() -> Self {
        RefillRate::ZERO
    }
}

impl PartialOrd for RefillRate {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for RefillRate {
    /// Slower rates first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (u128::from(self.tokens) * u128::from(other.period_ms))
            .cmp(&(u128::from(other.tokens) * u128::from(self.period_ms)))
    }
}

impl fmt::Debug for RefillRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RefillRate({self})")
    }
}

impl fmt::Display for RefillRate {
    /// `N/<unit>` in the shortest unit (second, minute, hour, day) where the rate is a whole
    /// number, else `N/<k><unit>` when one token takes a whole number of days, hours or
    /// minutes, else the shortest decimal per second that reads back as this rate, else the
    /// exact fraction `N/<k>ms`. What it writes always parses back as the same rate.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.tokens == 0 {
            return f.write_str("0/s");
        }
        for (names, unit_ms) in &UNITS[1..] {
            let scaled = u128::from(self.tokens) * u128::from(*unit_ms);
            if scaled % u128::from(self.period_ms) == 0 {
                return write!(f, "{}/{}", scaled / u128::from(self.period_ms), names[0]);
            }
        }
        for (names, unit_ms) in UNITS[2..].iter().rev() {
            if self.period_ms.is_multiple_of(*unit_ms) {
                let count = self.period_ms / unit_ms;
                return write!(f, "{}/{count}{}", self.tokens, names[0]);
            }
        }
        let per_second = self.as_f64();
        for digits in 1..=17 {
            let text = format!("{:.*e}", digits - 1, per_second);
            if parse_decimal(&text, 1_000, Fit::Exact) == Some(*self) {
                // The same digits, written without an exponent.
                let plain = text.parse::<f64>().map_or(text.clone(), |x| format!("{x}"));
                if parse_decimal(&plain, 1_000, Fit::Exact) == Some(*self) {
                    return write!(f, "{plain}/s");
                }
                return write!(f, "{text}/s");
            }
        }
        write!(f, "{}/{}ms", self.tokens, self.period_ms)
    }
}

impl FromStr for RefillRate {
    type Err = Error;

    /// `"10/hour"`, `"100/day"`, `"5/minute"`, `"2/second"`, `"1/30days"`, `"2.5/s"`, or a
    /// bare decimal (tokens per second). Units: `ms`, `s`/`sec`/`second`, `m`/`min`/`minute`,
    /// `h`/`hr`/`hour`, `d`/`day`, singular or plural, optionally with a whole count before
    /// them (`1/30days`, `3/2h`).
    fn from_str(text: &str) -> Result<Self, Error> {
        let invalid = |why: &str| {
            Error::new(
                ErrorKind::Configuration,
                format!(
                    "invalid refill rate {text:?}: {why} (write it as tokens per unit, e.g. \
                     \"10/hour\", \"100/day\", \"5/minute\", \"2/second\", or a number of tokens \
                     per second)"
                ),
            )
        };
        let (amount, unit_ms) = match text.split_once('/') {
            None => (text, 1_000),
            Some((amount, unit)) => {
                let unit = unit.trim();
                let split = unit
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(unit.len());
                let (count, name) = unit.split_at(split);
                let count: u64 = if count.is_empty() {
                    1
                } else {
                    count
                        .parse()
                        .ok()
                        .filter(|c| *c > 0)
                        .ok_or_else(|| invalid("the unit's count must be a positive integer"))?
                };
                let name = name.trim().to_ascii_lowercase();
                let unit_ms = UNITS
                    .iter()
                    .find(|(names, _)| names.contains(&name.as_str()))
                    .map(|(_, ms)| *ms)
                    .ok_or_else(|| invalid("unknown unit"))?;
                let period = count
                    .checked_mul(unit_ms)
                    .ok_or_else(|| invalid("the period is too long"))?;
                (amount, period)
            }
        };
        let amount = amount.trim();
        if amount.starts_with('-') {
            return Err(invalid("a rate cannot be negative"));
        }
        parse_decimal(amount, unit_ms, Fit::Exact).ok_or_else(|| {
            invalid("not a number, or positive but slower than one token per 31 years, or too fast")
        })
    }
}

impl Serialize for RefillRate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.to_wire() {
            WireNumber::Integer(n) => serializer.serialize_u64(n),
            WireNumber::Float(x) => serializer.serialize_f64(x),
        }
    }
}

impl<'de> Deserialize<'de> for RefillRate {
    /// A number of tokens per second, or a string (`"10/hour"`, see [`FromStr`]).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RefillRate;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a non-negative number of tokens per second, or a rate like \"10/hour\"",
                )
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RefillRate, E> {
                Ok(RefillRate::per_second(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RefillRate, E> {
                u64::try_from(v)
                    .map(RefillRate::per_second)
                    .map_err(|_| E::custom("a refill rate must not be negative"))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<RefillRate, E> {
                RefillRate::from_f64(v).ok_or_else(|| {
                    E::custom(
                        "a refill rate must be finite, non-negative, and 0 or at least one \
                         token per 31 years",
                    )
                })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RefillRate, E> {
                v.parse().map_err(|e: Error| E::custom(e.message()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rates_with_periods_near_the_longest_survive_the_wire() {
        // Found by fuzzing: 27143 tokens per 31.7 years went out as a float whose nearest
        // convergent under the longest period was 2·10⁻¹⁴ off; the best fraction under it is
        // the rate itself.
        for rate in [
            RefillRate::new(27_143, 999_999_491_699).unwrap(),
            RefillRate::new(1, MAX_PERIOD_MS).unwrap(),
            RefillRate::new(999_999_999_989, MAX_PERIOD_MS - 1).unwrap(),
        ] {
            let json = serde_json::to_string(&rate).unwrap();
            let back: RefillRate = serde_json::from_str(&json).unwrap();
            let (x, y) = (back.as_f64(), rate.as_f64());
            assert!(
                (x - y).abs() <= y * 4e-15,
                "{rate:?} went out as {json}, came back {back:?}"
            );
        }
    }

    fn rate(text: &str) -> RefillRate {
        text.parse().unwrap()
    }

    #[test]
    fn readable_forms() {
        assert_eq!(rate("10/hour"), RefillRate::per_hour(10));
        assert_eq!(rate("10/hour").tokens_per_period(), (1, 360_000));
        assert_eq!(rate("100/day"), RefillRate::per_day(100));
        assert_eq!(rate("5/minute"), RefillRate::per_minute(5));
        assert_eq!(rate("2/second"), RefillRate::per_second(2));
        assert_eq!(rate("2/s"), RefillRate::per_second(2));
        assert_eq!(rate(" 3 / 2h "), RefillRate::new(3, 7_200_000).unwrap());
        assert_eq!(rate("1/30days").tokens_per_period(), (1, 2_592_000_000));
        assert_eq!(rate("0.5"), RefillRate::new(1, 2_000).unwrap());
        assert_eq!(rate("2.5/min"), RefillRate::new(1, 24_000).unwrap());
        assert_eq!(rate("0"), RefillRate::ZERO);
        assert_eq!(rate("1e3"), RefillRate::per_second(1000));
        assert_eq!(rate("1000000000"), RefillRate::per_second(1_000_000_000));
        // Found by fuzzing: near u64::MAX per millisecond a rate could not survive the wire.
        assert!("18446744073709551610000".parse::<RefillRate>().is_err());
        assert_eq!(RefillRate::per_second(u64::MAX), RefillRate::MAX);
        let fastest: RefillRate = "999999999999999999".parse().unwrap();
        let wire: RefillRate =
            serde_json::from_str(&serde_json::to_string(&fastest).unwrap()).unwrap();
        assert!((wire.as_f64() - fastest.as_f64()).abs() <= fastest.as_f64() * 4e-15);
    }

    #[test]
    fn bad_forms_say_what_is_wrong() {
        for bad in [
            "",
            "ten",
            "-1",
            "1/fortnight",
            "1/0days",
            "1/",
            "1.2.3",
            "/s",
            "1e400",
        ] {
            let e = bad.parse::<RefillRate>().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Configuration, "{bad}");
            assert!(e.message().contains("refill rate"), "{bad}: {e}");
        }
        // Slower than one token per 31 years.
        assert!("1/20000days".parse::<RefillRate>().is_err());
    }

    #[test]
    fn display_reads_back() {
        for text in [
            "10/hour", "100/day", "5/min", "2/s", "1/30day", "1/s", "7/2h", "1/3s", "0/s",
        ] {
            let r = rate(text);
            assert_eq!(rate(&r.to_string()), r, "{text} → {r}");
        }
        assert_eq!(RefillRate::per_hour(10).to_string(), "10/hour");
        assert_eq!(RefillRate::per_hour(1).to_string(), "1/hour");
        assert_eq!(RefillRate::per_second(3).to_string(), "3/s");
        assert_eq!(rate("1/30days").to_string(), "1/30day");
        assert_eq!(rate("1.25").to_string(), "75/min");
        assert_eq!(rate("90/min").to_string(), "90/min");
        assert_eq!(rate("0.000277778").to_string(), "0.000277778/s");
        // Found by fuzzing: a rate held by approximation prints as text that reads back as it.
        for text in ["0.0002777782", "0.000000123456789012", "3.0000000000000004"] {
            let r = RefillRate::from_f64(text.parse().unwrap()).unwrap();
            assert_eq!(rate(&r.to_string()), r, "{text} → {r}");
        }
    }

    #[test]
    fn slow_rates_are_exact() {
        let hourly = RefillRate::per_hour(1);
        assert_eq!(hourly.time_per_token(), Some(Duration::from_secs(3600)));
        let daily = RefillRate::per_day(1);
        assert_eq!(daily.time_per_token(), Some(Duration::from_secs(86_400)));
        let hundred = RefillRate::per_day(100);
        assert_eq!(hundred.time_per_token(), Some(Duration::from_secs(864)));
        let monthly = rate("1/30days");
        assert_eq!(
            monthly.time_per_token(),
            Some(Duration::from_secs(30 * 86_400))
        );
        // The issue's decimal for one per hour.
        let approx = rate("0.000277778");
        let secs = approx.time_per_token().unwrap().as_secs_f64();
        assert!((secs - 3600.0).abs() / 3600.0 < 1e-3, "{secs}");
        assert_eq!(
            RefillRate::per_second(10).time_for(3),
            Some(Duration::from_millis(300))
        );
        assert_eq!(
            RefillRate::per_hour(10).tokens_in(Duration::from_secs(719)),
            1
        );
        assert_eq!(
            RefillRate::per_hour(10).tokens_in(Duration::from_secs(720)),
            2
        );
        assert_eq!(RefillRate::ZERO.tokens_in(Duration::from_secs(720)), 0);
    }

    #[test]
    fn the_wire_carries_the_exact_rate() {
        for r in [
            RefillRate::per_hour(10),
            RefillRate::per_day(1),
            RefillRate::per_day(100),
            rate("1/30days"),
            RefillRate::per_second(7),
            rate("1/3s"),
            rate("0.000277778"),
            RefillRate::per_second(1_000_000_000),
        ] {
            let json = serde_json::to_string(&r).unwrap();
            let back: RefillRate = serde_json::from_str(&json).unwrap();
            assert_eq!(back, r, "{r} as {json}");
        }
        assert_eq!(
            serde_json::to_string(&RefillRate::per_second(10)).unwrap(),
            "10"
        );
        assert_eq!(serde_json::to_string(&rate("0.5")).unwrap(), "0.5");
        let hourly: RefillRate = serde_json::from_str("0.000277777777777778").unwrap();
        assert_eq!(hourly, RefillRate::per_hour(1));
        let text: RefillRate = serde_json::from_str("\"10/hour\"").unwrap();
        assert_eq!(text, RefillRate::per_hour(10));
    }

    #[test]
    fn millitokens_round_to_nearest() {
        assert_eq!(RefillRate::per_second(3).millitokens_per_second(), 3000);
        assert_eq!(RefillRate::per_hour(10).millitokens_per_second(), 3);
        assert_eq!(RefillRate::from_millitokens_per_second(1250), rate("1.25"));
    }

    #[test]
    fn order_is_by_speed() {
        assert!(RefillRate::per_hour(100) < RefillRate::per_second(1));
        assert!(RefillRate::ZERO < RefillRate::per_day(1));
        assert!(rate("0.5") > rate("29/minute"));
    }

    proptest! {
        /// Any float rate from one token per 30 days to 10⁹ per second is held closely.
        #[test]
        fn floats_are_held_closely(exp in -6.4f64..9.0, mantissa in 1.0f64..10.0) {
            let per_second = mantissa * 10f64.powf(exp);
            let r = RefillRate::from_f64(per_second).unwrap();
            let error = (r.as_f64() - per_second).abs() / per_second;
            prop_assert!(error < 1e-9, "{per_second} → {r:?} ({error})");
            // And the wire keeps it within a few parts in 10¹⁵.
            let back: RefillRate = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
            prop_assert!((back.as_f64() - r.as_f64()).abs() <= r.as_f64() * 4e-15);
        }

        /// Whatever a float becomes prints as text that reads back as the same rate.
        #[test]
        fn display_always_reads_back(exp in -6.4f64..9.0, mantissa in 1.0f64..10.0) {
            let r = RefillRate::from_f64(mantissa * 10f64.powf(exp)).unwrap();
            prop_assert_eq!(rate(&r.to_string()), r);
        }

        /// N per unit is exact, as text and on the wire.
        #[test]
        fn whole_rates_are_exact(n in 1u64..1_000_000, unit in 0usize..5) {
            let (names, ms) = UNITS[unit];
            let r = rate(&format!("{n}/{}", names[0]));
            let (tokens, period) = r.tokens_per_period();
            prop_assert_eq!(u128::from(tokens) * u128::from(ms), u128::from(n) * u128::from(period));
            prop_assert_eq!(rate(&r.to_string()), r);
            let back: RefillRate = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
            prop_assert_eq!(back, r);
        }
    }
}
