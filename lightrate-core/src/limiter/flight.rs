//! Single flight: one lease in progress per key, shared by every request that waits for it.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

use super::decision::RuleSummary;
use super::keys::TargetKey;
use crate::{Error, ErrorKind};

/// What a lease is for: a (user, rule) bucket, or a (user, target) whose rule is not known yet.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum FlightKey {
    Bucket { user: Box<str>, slot: u32 },
    Target { user: Box<str>, target: TargetKey },
}

const SHARDS: usize = 16;

type Shard = HashMap<FlightKey, Arc<Flight>>;

/// The leases in flight, by key (slow path only).
#[derive(Debug)]
pub(crate) struct Flights {
    hasher: foldhash::fast::RandomState,
    shards: Box<[Mutex<Shard>]>,
}

impl Flights {
    pub(crate) fn new() -> Self {
        Flights {
            hasher: foldhash::fast::RandomState::default(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    /// The shard holding `key`, locked.
    pub(crate) fn lock(&self, key: &FlightKey) -> MutexGuard<'_, Shard> {
        let shard = (self.hasher.hash_one(key) as usize) % SHARDS;
        self.shards[shard].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Unregisters `flight` if it is still the one registered for `key`.
    pub(crate) fn remove(&self, key: &FlightKey, flight: &Arc<Flight>) {
        let mut shard = self.lock(key);
        if shard.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            shard.remove(key);
        }
    }
}

/// What a finished lease brought.
#[derive(Clone, Debug)]
pub(crate) enum Outcome {
    /// `granted` tokens were filed into the bucket of (user, `rule`) (possibly none).
    Leased {
        rule: RuleSummary,
        granted: u64,
        /// What the source said it had left.
        source_remaining: u64,
        /// When none was granted: how long until one can exist.
        retry_after: Duration,
    },
    /// The default rule, charged per request (the SDKs' behaviour): the grant is for one
    /// request, the first to claim it; the others ask again themselves.
    PerRequest {
        rule: RuleSummary,
        granted: u64,
        source_remaining: u64,
        retry_after: Duration,
    },
    /// The source could not answer.
    Failed(Error),
}

/// A lease in progress.
#[derive(Debug)]
pub(crate) struct Flight {
    outcome: watch::Sender<Option<Outcome>>,
    claimed: AtomicBool,
}

impl Flight {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Flight {
            outcome: watch::Sender::new(None),
            claimed: AtomicBool::new(false),
        })
    }

    /// Waits for the lease to finish.
    pub(crate) async fn wait(&self) -> Outcome {
        let mut receiver = self.outcome.subscribe();
        let outcome = match receiver.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone().unwrap_or_else(abandoned),
            Err(_) => abandoned(),
        };
        outcome
    }

    pub(crate) fn is_done(&self) -> bool {
        self.outcome.borrow().is_some()
    }

    fn finish(&self, outcome: Outcome) {
        self.outcome.send_replace(Some(outcome));
    }

    /// Claims a per-request grant; true for the first caller only.
    pub(crate) fn claim(&self) -> bool {
        !self.claimed.swap(true, Ordering::AcqRel)
    }
}

fn abandoned() -> Outcome {
    Outcome::Failed(Error::new(
        ErrorKind::Network,
        "the lease was abandoned before the source answered",
    ))
}

/// Finishes a flight exactly once: with the lease's outcome, or, if the lease is dropped
/// before it ends (a cancelled task, a runtime shutting down), as failed, so that no waiter
/// waits forever.
#[derive(Debug)]
pub(crate) struct FlightGuard {
    flight: Arc<Flight>,
    finished: bool,
}

impl FlightGuard {
    pub(crate) fn new(flight: Arc<Flight>) -> Self {
        FlightGuard {
            flight,
            finished: false,
        }
    }

    pub(crate) fn flight(&self) -> &Arc<Flight> {
        &self.flight
    }

    pub(crate) fn finish(mut self, outcome: Outcome) {
        self.flight.finish(outcome);
        self.finished = true;
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.flight.finish(abandoned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_see_the_outcome_even_if_they_arrive_late() {
        let flight = Flight::new();
        let early = tokio::spawn({
            let flight = flight.clone();
            async move { flight.wait().await }
        });
        FlightGuard::new(flight.clone())
            .finish(Outcome::Failed(Error::new(ErrorKind::Timeout, "t")));
        assert!(
            matches!(early.await.unwrap(), Outcome::Failed(e) if e.kind() == ErrorKind::Timeout)
        );
        assert!(matches!(flight.wait().await, Outcome::Failed(_)));
        assert!(flight.is_done());
    }

    #[tokio::test]
    async fn a_dropped_lease_fails_its_waiters() {
        let flight = Flight::new();
        drop(FlightGuard::new(flight.clone()));
        match flight.wait().await {
            Outcome::Failed(e) => assert!(e.is_outage()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_one_claim() {
        let flight = Flight::new();
        assert!(flight.claim());
        assert!(!flight.claim());
    }
}
