//! Single flight: one lease in progress per key, serving every request that waits for it.
//!
//! A request that finds no token registers itself on the lease in flight for its bucket (or
//! starts one) with what it needs, and waits for its own [`Answer`]. When the lease ends, its
//! task unregisters the flight (under the shard's lock, so every waiter is either on it or
//! finds no flight and starts the next one) and answers the waiters in the order they came:
//! each is handed its tokens straight from the grant (requests arriving meanwhile cannot take
//! them first), only the rest goes to the bucket, and those the grant could not serve either
//! move to a successor lease (the source still had tokens) or are denied (it had not).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;

use super::decision::RuleSummary;
use super::keys::TargetKey;
use crate::sync::lock;
use crate::Error;

/// What a lease is for: a (user, rule) bucket, or a (user, target) whose rule is not known yet.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum FlightKey {
    Bucket { user: Box<str>, slot: u32 },
    Target { user: Box<str>, target: TargetKey },
}

impl FlightKey {
    pub(crate) fn user(&self) -> &str {
        match self {
            FlightKey::Bucket { user, .. } | FlightKey::Target { user, .. } => user,
        }
    }
}

/// A waiting request's answer.
#[derive(Debug)]
pub(crate) enum Answer {
    /// Its tokens, handed over from a grant of the source.
    Granted {
        rule: RuleSummary,
        /// What the source said it had left.
        source_remaining: u64,
        /// What the bucket holds after the lease.
        tokens_left: u64,
        /// Until when the lease's tokens are spendable (ms; 0: not held in a bucket): where a
        /// granted token goes back if another limit of the request refuses it.
        deadline_ms: u64,
    },
    /// The source had less than it needs.
    Denied {
        rule: RuleSummary,
        source_remaining: u64,
        retry_after: Duration,
    },
    /// The source could not answer.
    Failed(Error),
    /// Go round again (the SDKs' per-request mode, where a grant serves one request).
    Again,
}

/// A request waiting for a lease.
#[derive(Debug)]
pub(crate) struct Waiter {
    pub(crate) cost: u64,
    pub(crate) reply: oneshot::Sender<Answer>,
}

/// The leases in flight, by key (slow path only).
#[derive(Debug)]
pub(crate) struct Flights {
    hasher: foldhash::fast::RandomState,
    shards: Box<[Mutex<Shard>]>,
}

type Shard = HashMap<FlightKey, Arc<Flight>>;

const SHARDS: usize = 16;

/// What [`Flights::join`] did.
pub(crate) enum Joined {
    /// Registered on the lease already in flight.
    Waiting,
    /// Registered on a new flight, which the caller starts.
    Started(Arc<Flight>),
    /// There was no flight and the caller may not start one.
    Refused,
}

impl Flights {
    pub(crate) fn new() -> Self {
        Flights {
            hasher: foldhash::fast::RandomState::default(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    /// The shard holding `key`, locked.
    fn lock(&self, key: &FlightKey) -> MutexGuard<'_, Shard> {
        let shard = (self.hasher.hash_one(key) as usize) % SHARDS;
        lock(&self.shards[shard])
    }

    /// Registers `waiters` on the lease in flight for `key`, or, if there is none and
    /// `may_start` allows it, on a new flight that the caller starts.
    pub(crate) fn join(
        &self,
        key: &FlightKey,
        waiters: Vec<Waiter>,
        may_start: impl FnOnce() -> bool,
    ) -> Joined {
        let mut shard = self.lock(key);
        if let Some(flight) = shard.get(key) {
            lock(&flight.waiters).extend(waiters);
            return Joined::Waiting;
        }
        if !may_start() {
            return Joined::Refused;
        }
        let flight = Arc::new(Flight {
            waiters: Mutex::new(waiters),
            since_ms: AtomicU64::new(UNSET),
            counted: AtomicU64::new(0),
        });
        shard.insert(key.clone(), flight.clone());
        Joined::Started(flight)
    }

    /// Unregisters `flight` from `key` and takes its waiters: from now on nobody joins it.
    pub(crate) fn close(&self, key: &FlightKey, flight: &Arc<Flight>) -> Vec<Waiter> {
        let mut shard = self.lock(key);
        if shard.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            shard.remove(key);
        }
        std::mem::take(&mut *lock(&flight.waiters))
    }

    /// Whether a lease is in flight for `key`.
    #[cfg(test)]
    pub(crate) fn in_flight(&self, key: &FlightKey) -> bool {
        self.lock(key).contains_key(key)
    }
}

/// `since_ms` before anyone set it.
const UNSET: u64 = u64::MAX;

/// A lease in progress: the requests waiting for it, since when they have waited, and how many
/// tokens of theirs the lease was sized for.
///
/// The waiters are a demand measurement: those that gathered while a lease travelled came in
/// one round trip. A successor's waiters gathered since its predecessor started, which it
/// carries over ([`Flight::waited_since`]); waiters that join after the lease was sized
/// ([`Flight::count_waiting`]) were not in its count, and are counted into the demand when the
/// answer serves them (or into the successor's ask when it cannot).
#[derive(Debug)]
pub(crate) struct Flight {
    waiters: Mutex<Vec<Waiter>>,
    since_ms: AtomicU64,
    counted: AtomicU64,
}

impl Flight {
    /// The tokens the requests registered so far need.
    pub(crate) fn demand(&self) -> u64 {
        lock(&self.waiters).iter().map(|w| w.cost).sum()
    }

    /// The tokens the requests registered so far need, remembered as what the lease is sized
    /// for.
    pub(crate) fn count_waiting(&self) -> u64 {
        let waiting = self.demand();
        self.counted.store(waiting, Ordering::Relaxed);
        waiting
    }

    /// What [`count_waiting`](Self::count_waiting) counted (0 before).
    pub(crate) fn counted(&self) -> u64 {
        self.counted.load(Ordering::Relaxed)
    }

    /// Records that its first waiters have waited since `ms` (a successor's, since its
    /// predecessor started); the earliest time recorded wins.
    pub(crate) fn waited_since(&self, ms: u64) {
        self.since_ms.fetch_min(ms, Ordering::Relaxed);
    }

    /// Since when its first waiters have waited, if recorded.
    pub(crate) fn since_ms(&self) -> Option<u64> {
        let ms = self.since_ms.load(Ordering::Relaxed);
        (ms != UNSET).then_some(ms)
    }

    /// The cost of the first request registered, if any.
    pub(crate) fn first_cost(&self) -> Option<u64> {
        lock(&self.waiters).first().map(|w| w.cost)
    }
}

/// Unregisters a flight exactly once: when the lease dispatches its waiters, or, if the lease
/// is dropped before it ends (a cancelled task, a runtime shutting down), by dropping them, so
/// that no waiter waits forever (each sees its answer's sender dropped).
#[derive(Debug)]
pub(crate) struct FlightGuard {
    flight: Arc<Flight>,
    key: FlightKey,
    flights: Arc<Flights>,
}

impl FlightGuard {
    pub(crate) fn new(flight: Arc<Flight>, key: FlightKey, flights: Arc<Flights>) -> Self {
        FlightGuard {
            flight,
            key,
            flights,
        }
    }

    pub(crate) fn flight(&self) -> &Arc<Flight> {
        &self.flight
    }

    pub(crate) fn key(&self) -> &FlightKey {
        &self.key
    }

    /// Unregisters the flight and takes its waiters.
    pub(crate) fn close(&self) -> Vec<Waiter> {
        self.flights.close(&self.key, &self.flight)
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        // Idempotent: after a dispatch there is nothing left to close.
        drop(self.close());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn key(user: &str) -> FlightKey {
        FlightKey::Bucket {
            user: user.into(),
            slot: 0,
        }
    }

    fn waiter(cost: u64) -> (Waiter, oneshot::Receiver<Answer>) {
        let (reply, answer) = oneshot::channel();
        (Waiter { cost, reply }, answer)
    }

    #[tokio::test]
    async fn waiters_get_their_own_answers() {
        let flights = Arc::new(Flights::new());
        let (first, first_answer) = waiter(1);
        let Joined::Started(flight) = flights.join(&key("u"), vec![first], || true) else {
            panic!("nothing in flight yet");
        };
        let (second, second_answer) = waiter(2);
        assert!(matches!(
            flights.join(&key("u"), vec![second], || unreachable!()),
            Joined::Waiting
        ));
        assert_eq!(flight.demand(), 3);
        assert_eq!(flight.first_cost(), Some(1));
        // Sized for these 3; one more joins while it travels.
        assert_eq!(flight.since_ms(), None);
        flight.waited_since(50);
        flight.waited_since(70);
        assert_eq!(flight.since_ms(), Some(50));
        assert_eq!(flight.count_waiting(), 3);
        let (late, _late_answer) = waiter(4);
        assert!(matches!(
            flights.join(&key("u"), vec![late], || unreachable!()),
            Joined::Waiting
        ));
        assert_eq!(flight.demand(), 7);
        assert_eq!(flight.counted(), 3);
        let guard = FlightGuard::new(flight, key("u"), flights.clone());
        let waiters = guard.close();
        assert!(!flights.in_flight(&key("u")));
        for w in waiters {
            let error = crate::Error::new(ErrorKind::Timeout, format!("cost {}", w.cost));
            w.reply.send(Answer::Failed(error)).unwrap();
        }
        for (answer, cost) in [(first_answer, 1), (second_answer, 2)] {
            match answer.await.unwrap() {
                Answer::Failed(e) => assert_eq!(e.message(), format!("cost {cost}")),
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_dropped_lease_drops_its_waiters_and_is_unregistered() {
        let flights = Arc::new(Flights::new());
        let (first, answer) = waiter(1);
        let Joined::Started(flight) = flights.join(&key("u"), vec![first], || true) else {
            panic!("nothing in flight yet");
        };
        drop(FlightGuard::new(flight, key("u"), flights.clone()));
        assert!(answer.await.is_err());
        assert!(!flights.in_flight(&key("u")));
    }

    #[test]
    fn a_closed_flight_takes_no_one() {
        let flights = Arc::new(Flights::new());
        let Joined::Started(flight) = flights.join(&key("u"), Vec::new(), || true) else {
            panic!("nothing in flight yet");
        };
        FlightGuard::new(flight, key("u"), flights.clone()).close();
        assert!(matches!(
            flights.join(&key("u"), vec![waiter(1).0], || false),
            Joined::Refused
        ));
        assert!(matches!(
            flights.join(&key("v"), Vec::new(), || true),
            Joined::Started(_)
        ));
    }
}
