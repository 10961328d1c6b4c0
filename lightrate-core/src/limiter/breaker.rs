//! The circuit breaker, and the hold after a configuration error.
//!
//! After `threshold` consecutive outage failures the source is not called for `cooldown`;
//! then one probe decides: success closes the circuit, failure opens it again. A configuration
//! error (401/403/404) is not an outage and does not count towards the breaker; it holds calls
//! off for `config_backoff` instead (so a rejected key does not cost a call per request) and is
//! logged as a configuration error at most once per `config_backoff`.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::clock::Timestamp;
use crate::Error;

/// The state of the circuit breaker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BreakerState {
    /// The source is called normally.
    #[default]
    Closed,
    /// The source is not called until the cool-down ends.
    Open,
    /// The cool-down ended; one probe call is deciding.
    HalfOpen,
}

/// What a caller may do now.
#[derive(Debug)]
pub(crate) enum Gate {
    /// Call the source (when the breaker is half-open, this call is the probe).
    Call,
    /// Do not call; apply the outage policy with this error, for this long at most.
    Blocked { error: Error, retry_after: Duration },
}

#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    cooldown: Duration,
    config_backoff: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    consecutive_failures: u32,
    open_until: Option<Timestamp>,
    probing: bool,
    last_error: Option<Error>,
    config_until: Option<Timestamp>,
    config_error: Option<Error>,
    config_logged_at: Option<Timestamp>,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration, config_backoff: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            config_backoff,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }

    pub(crate) fn gate(&self, now: Timestamp) -> Gate {
        let mut s = self.lock();
        if let (Some(until), Some(error)) = (s.config_until, &s.config_error) {
            if now < until {
                return Gate::Blocked {
                    error: error.clone(),
                    retry_after: until.saturating_duration_since(now),
                };
            }
        }
        match s.open_until {
            None => Gate::Call,
            Some(until) if now < until => Gate::Blocked {
                error: s.last_error.clone().unwrap_or_else(|| {
                    Error::new(crate::ErrorKind::Unavailable, "circuit breaker open")
                }),
                retry_after: until.saturating_duration_since(now),
            },
            Some(_) if s.probing => Gate::Blocked {
                error: s.last_error.clone().unwrap_or_else(|| {
                    Error::new(crate::ErrorKind::Unavailable, "circuit breaker open")
                }),
                retry_after: self.cooldown.min(Duration::from_secs(1)),
            },
            Some(_) => {
                s.probing = true;
                Gate::Call
            }
        }
    }

    pub(crate) fn success(&self) {
        let mut s = self.lock();
        if s.open_until.is_some() {
            tracing::info!(target: "lightrate::limiter", "token source answered again; circuit closed");
        }
        s.consecutive_failures = 0;
        s.open_until = None;
        s.probing = false;
        s.config_until = None;
        s.config_error = None;
    }

    /// Records a failed call. Returns whether it was logged (configuration errors are logged
    /// once per `config_backoff`).
    pub(crate) fn failure(&self, error: &Error, now: Timestamp) {
        let mut s = self.lock();
        if error.is_configuration() {
            s.probing = false;
            s.config_until = Some(now + self.config_backoff);
            s.config_error = Some(error.clone());
            let due = s
                .config_logged_at
                .is_none_or(|at| now.saturating_duration_since(at) >= self.config_backoff);
            if due {
                s.config_logged_at = Some(now);
                tracing::error!(
                    target: "lightrate::limiter",
                    error = %error,
                    "token source configuration error (check the API key and application id); \
                     requests follow the outage policy"
                );
            }
            return;
        }
        // A failure of one part of the source (one Redis Cluster node) while the rest answers
        // is the outage of that part's keys only: it must not open the circuit for every key.
        if !error.is_outage() || error.is_partial() {
            s.probing = false;
            return;
        }
        s.last_error = Some(error.clone());
        s.consecutive_failures = s.consecutive_failures.saturating_add(1);
        if s.probing || s.consecutive_failures >= self.threshold {
            if s.open_until.is_none() || s.probing {
                tracing::warn!(
                    target: "lightrate::limiter",
                    error = %error,
                    failures = s.consecutive_failures,
                    cooldown_ms = self.cooldown.as_millis() as u64,
                    "token source unavailable; circuit open"
                );
            }
            s.open_until = Some(now + self.cooldown);
            s.probing = false;
        }
    }

    pub(crate) fn state(&self, now: Timestamp) -> BreakerState {
        let s = self.lock();
        match s.open_until {
            None => BreakerState::Closed,
            Some(until) if now < until => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use http::StatusCode;

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_nanos(secs * 1_000_000_000)
    }

    fn outage() -> Error {
        Error::new(ErrorKind::Timeout, "slow")
    }

    #[test]
    fn opens_after_threshold_then_one_probe_decides() {
        let b = Breaker::new(3, Duration::from_secs(10), Duration::from_secs(30));
        for _ in 0..2 {
            assert!(matches!(b.gate(at(0)), Gate::Call));
            b.failure(&outage(), at(0));
        }
        assert_eq!(b.state(at(0)), BreakerState::Closed);
        b.failure(&outage(), at(0));
        assert_eq!(b.state(at(1)), BreakerState::Open);
        match b.gate(at(4)) {
            Gate::Blocked { retry_after, error } => {
                assert_eq!(retry_after, Duration::from_secs(6));
                assert_eq!(error.kind(), ErrorKind::Timeout);
            }
            g => panic!("{g:?}"),
        }
        // Cool-down over: exactly one probe.
        assert!(matches!(b.gate(at(10)), Gate::Call));
        assert!(matches!(b.gate(at(10)), Gate::Blocked { .. }));
        // The probe fails: open again for a full cool-down.
        b.failure(&outage(), at(11));
        assert_eq!(b.state(at(20)), BreakerState::Open);
        assert!(matches!(b.gate(at(21)), Gate::Call));
        b.success();
        assert_eq!(b.state(at(21)), BreakerState::Closed);
        assert!(matches!(b.gate(at(21)), Gate::Call));
    }

    #[test]
    fn success_resets_the_count() {
        let b = Breaker::new(2, Duration::from_secs(10), Duration::from_secs(30));
        b.failure(&outage(), at(0));
        b.success();
        b.failure(&outage(), at(0));
        assert_eq!(b.state(at(0)), BreakerState::Closed);
    }

    #[test]
    fn configuration_errors_hold_calls_but_never_open_the_circuit() {
        let b = Breaker::new(1, Duration::from_secs(10), Duration::from_secs(30));
        let unauthorized = Error::from_status(StatusCode::UNAUTHORIZED, "bad key");
        b.failure(&unauthorized, at(0));
        assert_eq!(b.state(at(0)), BreakerState::Closed);
        match b.gate(at(5)) {
            Gate::Blocked { error, retry_after } => {
                assert!(error.is_configuration());
                assert_eq!(retry_after, Duration::from_secs(25));
            }
            g => panic!("{g:?}"),
        }
        assert!(matches!(b.gate(at(30)), Gate::Call));
    }

    #[test]
    fn partial_outages_do_not_open_the_circuit() {
        let b = Breaker::new(2, Duration::from_secs(10), Duration::from_secs(30));
        for _ in 0..10 {
            b.failure(&outage().partial(), at(0));
        }
        assert_eq!(b.state(at(0)), BreakerState::Closed);
        assert!(matches!(b.gate(at(0)), Gate::Call));
        b.failure(&outage(), at(0));
        b.failure(&outage(), at(0));
        assert_eq!(b.state(at(0)), BreakerState::Open);
    }

    #[test]
    fn other_errors_do_not_count() {
        let b = Breaker::new(1, Duration::from_secs(10), Duration::from_secs(30));
        b.failure(&Error::from_status(StatusCode::BAD_REQUEST, "x"), at(0));
        assert!(matches!(b.gate(at(0)), Gate::Call));
    }
}
