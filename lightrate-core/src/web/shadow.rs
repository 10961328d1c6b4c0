//! [`Mode`]: enforce the limiter's refusals, or only count them (shadow mode), and the
//! rate-limited log of shadow mode.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, ErrorKind};

/// Whether a middleware enforces the limiter's refusals.
///
/// In [`Shadow`](Mode::Shadow) mode every request is decided and counted as usual (tokens are
/// consumed, so the figures are the ones enforcement would see), but none is refused: a
/// request that would have got 429 (or 503, or 400) reaches its handler. A request the limiter
/// decided carries its [`Decision`](crate::Decision), which says it would have been denied
/// (`is_allowed()` is false); one refused for its user identifier (a 400) was never decided
/// and carries none.
/// Such requests are counted as `shadow_denied` by the `metrics` feature, and logged at most
/// once per ten seconds (how many, and the last rule), not once per request.
///
/// ```
/// use lightrate::tower::Mode;
///
/// assert_eq!("shadow".parse::<Mode>().unwrap(), Mode::Shadow);
/// assert_eq!(Mode::default(), Mode::Enforce);
/// assert!("dry".parse::<Mode>().is_err());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Mode {
    /// Refuse what the limiter refuses. The default.
    #[default]
    Enforce,
    /// Decide and count, but let every request through.
    Shadow,
}

impl Mode {
    /// `LIGHTRATE_MODE` (`enforce` or `shadow`, any case), [`Enforce`](Mode::Enforce) when
    /// unset or blank; an error (of kind `Configuration`) for any other value.
    pub fn from_env() -> Result<Mode, Error> {
        match crate::env_vars::process_var(crate::env_vars::MODE) {
            Some(value) if !value.trim().is_empty() => Mode::from_env_value(&value),
            _ => Ok(Mode::Enforce),
        }
    }
}

impl Mode {
    /// `LIGHTRATE_MODE`'s value, with an error that names the variable.
    fn from_env_value(value: &str) -> Result<Mode, Error> {
        crate::env_vars::parse(crate::env_vars::MODE, "enforce or shadow", value)
    }
}

impl FromStr for Mode {
    type Err = Error;

    /// `enforce` or `shadow`, in any case.
    fn from_str(s: &str) -> Result<Mode, Error> {
        match s.trim().to_ascii_lowercase().as_str() {
            "enforce" => Ok(Mode::Enforce),
            "shadow" => Ok(Mode::Shadow),
            _ => Err(Error::new(
                ErrorKind::Configuration,
                format!("the mode must be enforce or shadow, not {s:?}"),
            )),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
        })
    }
}

/// How often shadow mode logs at most.
pub(crate) const SHADOW_LOG_EVERY_MS: u64 = 10_000;

/// The log of shadow mode: the first request let through is logged, then at most one line
/// per [`SHADOW_LOG_EVERY_MS`], saying how many were let through since the last line.
#[derive(Debug, Default)]
pub(crate) struct ShadowLog {
    /// When the next line may be written (milliseconds on the limiter's clock).
    next_ms: AtomicU64,
    /// Requests let through since the last line.
    pending: AtomicU64,
}

impl ShadowLog {
    /// Notes a request let through that would have got `status`, charged to `rule`.
    pub(crate) fn let_through(&self, now_ms: u64, status: u16, rule: Option<&str>) {
        self.pending.fetch_add(1, Ordering::Relaxed);
        let next = self.next_ms.load(Ordering::Relaxed);
        if now_ms < next {
            return;
        }
        let until = now_ms.saturating_add(SHADOW_LOG_EVERY_MS);
        if self
            .next_ms
            .compare_exchange(next, until, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let requests = self.pending.swap(0, Ordering::Relaxed);
        tracing::info!(
            target: "lightrate::web",
            requests,
            status,
            rule = rule.unwrap_or(""),
            "shadow mode: requests the limiter would have refused were let through"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_from_the_environment_are_enforce_or_shadow() {
        assert_eq!(Mode::from_env_value(" Shadow ").unwrap(), Mode::Shadow);
        assert_eq!(Mode::from_env_value("enforce").unwrap(), Mode::Enforce);
        assert_eq!(
            Mode::from_env_value("dry-run").unwrap_err().message(),
            "LIGHTRATE_MODE must be enforce or shadow, not \"dry-run\""
        );
    }
}
