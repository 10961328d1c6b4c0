//! Injected time.
//!
//! Everything in lightrate that depends on time (token refill, bucket expiry, the denial cache,
//! the circuit breaker) reads it from a [`Clock`], so tests drive time with a [`ManualClock`]
//! instead of sleeping.

use std::fmt;
use std::future::Future;
use std::ops::{Add, Sub};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// A point in time: nanoseconds since the epoch of the [`Clock`] that produced it.
///
/// Timestamps of different clocks are not comparable.
///
/// ```
/// use lightrate_core::Timestamp;
/// use std::time::Duration;
///
/// let t = Timestamp::from_nanos(1_000);
/// assert_eq!((t + Duration::from_nanos(500)).as_nanos(), 1_500);
/// assert_eq!(t.saturating_duration_since(Timestamp::from_nanos(5_000)), Duration::ZERO);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The clock's epoch.
    pub const ZERO: Timestamp = Timestamp(0);

    /// A timestamp `nanos` nanoseconds after the clock's epoch.
    pub const fn from_nanos(nanos: u64) -> Self {
        Timestamp(nanos)
    }

    /// Nanoseconds since the clock's epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Whole milliseconds since the clock's epoch: the unit of the coarse deadlines a local
    /// bucket packs beside its tokens.
    #[inline]
    pub const fn as_millis(self) -> u64 {
        self.0 / 1_000_000
    }

    /// The time from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Timestamp) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;

    /// Saturates instead of overflowing.
    fn add(self, rhs: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(duration_to_nanos(rhs)))
    }
}

impl Sub<Duration> for Timestamp {
    type Output = Timestamp;

    /// Saturates at the epoch.
    fn sub(self, rhs: Duration) -> Timestamp {
        Timestamp(self.0.saturating_sub(duration_to_nanos(rhs)))
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({:?})", Duration::from_nanos(self.0))
    }
}

/// A `Duration` in whole seconds, rounded up (what `Retry-After` and the IETF fields carry).
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// A `Duration` as whole nanoseconds, saturating at `u64::MAX` (584 years).
pub(crate) fn duration_to_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A monotonic source of [`Timestamp`]s.
///
/// [`now`](Clock::now) is precise. [`coarse_now`](Clock::coarse_now) may lag behind it by a
/// bounded amount (about a millisecond for [`SystemClock`]) and is what the per-request hot path
/// reads, because it costs one atomic load instead of a clock call. Test clocks return the same
/// value from both.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time, precisely.
    fn now(&self) -> Timestamp;

    /// The current time, possibly up to the clock's resolution behind [`now`](Clock::now);
    /// never ahead of it.
    fn coarse_now(&self) -> Timestamp {
        self.now()
    }

    /// A future that is ready once `duration` has passed on this clock: what a request that
    /// waits for its tokens ([`Limiter::acquire`](crate::Limiter::acquire)) awaits. The default
    /// is tokio's timer (real time); [`ManualClock`] wakes its sleepers as it is advanced.
    fn sleep(&self, duration: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// What [`Clock::sleep`] returns.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Timestamp {
        (**self).now()
    }

    fn coarse_now(&self) -> Timestamp {
        (**self).coarse_now()
    }

    fn sleep(&self, duration: Duration) -> Sleep {
        (**self).sleep(duration)
    }
}

/// The real, monotonic clock (`std::time::Instant`), with a cached coarse reading.
///
/// All `SystemClock`s in a process share one epoch (the first use) and one coarse reading,
/// refreshed every millisecond by a background thread started on first use, and brought
/// forward by every precise reading.
///
/// ```
/// use lightrate_core::{Clock, SystemClock};
///
/// let clock = SystemClock::new();
/// let a = clock.now();
/// assert!(clock.coarse_now() <= clock.now());
/// assert!(clock.now() >= a);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock {
    _private: (),
}

/// How often the coarse reading of [`SystemClock`] is refreshed.
const COARSE_RESOLUTION: Duration = Duration::from_millis(1);

struct SystemClockState {
    epoch: std::time::Instant,
    coarse: AtomicU64,
}

fn system_clock_state() -> &'static SystemClockState {
    static STATE: OnceLock<SystemClockState> = OnceLock::new();
    STATE.get_or_init(|| {
        let state = SystemClockState {
            epoch: std::time::Instant::now(),
            coarse: AtomicU64::new(0),
        };
        // The ticker lives as long as the process; if the thread cannot be spawned the coarse
        // reading still advances with every precise reading.
        let _ = std::thread::Builder::new()
            .name("lightrate-clock".into())
            .spawn(|| loop {
                std::thread::sleep(COARSE_RESOLUTION);
                let _ = SystemClock::new().now();
            });
        state
    })
}

impl SystemClock {
    /// The system clock.
    pub const fn new() -> Self {
        SystemClock { _private: () }
    }

    /// The coarse reading itself (nanoseconds since the epoch), for a hot path that keeps
    /// the reference instead of finding it on every read.
    pub(crate) fn coarse_reading() -> &'static AtomicU64 {
        &system_clock_state().coarse
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let state = system_clock_state();
        let nanos = duration_to_nanos(state.epoch.elapsed());
        state.coarse.fetch_max(nanos, Ordering::Relaxed);
        Timestamp(nanos)
    }

    #[inline]
    fn coarse_now(&self) -> Timestamp {
        Timestamp(system_clock_state().coarse.load(Ordering::Relaxed))
    }
}

/// A clock that only moves when told to: for tests and simulations.
///
/// Clones share the same time.
///
/// ```
/// use lightrate_core::{Clock, ManualClock};
/// use std::time::Duration;
///
/// let clock = ManualClock::new();
/// let shared = clock.clone();
/// clock.advance(Duration::from_secs(2));
/// assert_eq!(shared.now().as_nanos(), 2_000_000_000);
/// ```
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
    /// Who sleeps until when (ns): woken when the clock passes it.
    sleepers: Arc<Mutex<Vec<Sleeper>>>,
}

/// A sleeping future of a [`ManualClock`]: its id, until when (ns), its waker.
type Sleeper = (u64, u64, Waker);

/// The ids of [`ManualClock`] sleeps.
static SLEEP_IDS: AtomicU64 = AtomicU64::new(0);

impl ManualClock {
    /// A clock at its epoch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.nanos
            .fetch_add(duration_to_nanos(by), Ordering::SeqCst);
        self.wake_due();
    }

    /// How many futures of [`Clock::sleep`] wait on this clock (registered when last polled,
    /// and not yet woken).
    pub fn sleepers(&self) -> usize {
        self.sleepers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Wakes the sleepers whose time has come.
    fn wake_due(&self) {
        let now = self.nanos.load(Ordering::SeqCst);
        let due: Vec<Waker> = {
            let mut sleepers = self.sleepers.lock().unwrap_or_else(|e| e.into_inner());
            let (due, waiting) = sleepers.drain(..).partition(|(_, until, _)| *until <= now);
            *sleepers = waiting;
            due.into_iter().map(|(_, _, waker)| waker).collect()
        };
        due.into_iter().for_each(Waker::wake);
    }

    /// Sets the clock to `to`. Setting it backwards is allowed (to test clocks that misbehave);
    /// lightrate treats time that goes backwards as time that stood still.
    pub fn set(&self, to: Timestamp) {
        self.nanos.store(to.as_nanos(), Ordering::SeqCst);
        self.wake_due();
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.nanos.load(Ordering::SeqCst))
    }

    /// Ready once the clock has been advanced past `duration` from now.
    fn sleep(&self, duration: Duration) -> Sleep {
        let until = self
            .now()
            .as_nanos()
            .saturating_add(duration_to_nanos(duration));
        Box::pin(ManualSleep {
            clock: self.clone(),
            id: SLEEP_IDS.fetch_add(1, Ordering::Relaxed),
            until,
        })
    }
}

/// A [`ManualClock`]'s sleep.
struct ManualSleep {
    clock: ManualClock,
    id: u64,
    until: u64,
}

impl Drop for ManualSleep {
    fn drop(&mut self) {
        let mut sleepers = self
            .clock
            .sleepers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        sleepers.retain(|(id, _, _)| *id != self.id);
    }
}

impl Future for ManualSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.clock.nanos.load(Ordering::SeqCst) >= self.until {
            return Poll::Ready(());
        }
        let mut sleepers = self
            .clock
            .sleepers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Checked again under the lock: an advance in between has woken no one for us.
        if self.clock.nanos.load(Ordering::SeqCst) >= self.until {
            return Poll::Ready(());
        }
        match sleepers.iter_mut().find(|(id, _, _)| *id == self.id) {
            Some(entry) => entry.2.clone_from(cx.waker()),
            None => sleepers.push((self.id, self.until, cx.waker().clone())),
        }
        Poll::Pending
    }
}

/// The limiter's clock: the system clock's cached reading is read inline on the hot path (one
/// load, the reference kept); any other clock through a pointer.
#[derive(Clone, Debug)]
pub(crate) enum ClockHandle {
    System(&'static AtomicU64),
    Other(Arc<dyn Clock>),
}

impl ClockHandle {
    pub(crate) fn system() -> Self {
        ClockHandle::System(SystemClock::coarse_reading())
    }

    #[inline]
    pub(crate) fn coarse_now(&self) -> Timestamp {
        match self {
            ClockHandle::System(coarse) => Timestamp::from_nanos(coarse.load(Ordering::Relaxed)),
            ClockHandle::Other(clock) => clock.coarse_now(),
        }
    }

    pub(crate) fn now(&self) -> Timestamp {
        match self {
            ClockHandle::System(_) => SystemClock::new().now(),
            ClockHandle::Other(clock) => clock.now(),
        }
    }

    pub(crate) fn sleep(&self, duration: Duration) -> Sleep {
        match self {
            ClockHandle::System(_) => Box::pin(tokio::time::sleep(duration)),
            ClockHandle::Other(clock) => clock.sleep(duration),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new();
        assert_eq!(clock.now(), Timestamp::ZERO);
        clock.advance(Duration::from_millis(1500));
        assert_eq!(clock.now().as_nanos(), 1_500_000_000);
        assert_eq!(clock.coarse_now(), clock.now());
        clock.set(Timestamp::from_nanos(7));
        assert_eq!(clock.now().as_nanos(), 7);
    }

    #[test]
    fn system_clock_coarse_never_ahead_of_precise() {
        let clock = SystemClock::new();
        for _ in 0..1000 {
            let coarse = clock.coarse_now();
            assert!(coarse <= clock.now());
        }
    }

    #[test]
    fn timestamp_arithmetic_saturates() {
        let max = Timestamp::from_nanos(u64::MAX);
        assert_eq!(max + Duration::from_secs(1), max);
        assert_eq!(Timestamp::ZERO - Duration::from_secs(1), Timestamp::ZERO);
        assert_eq!(
            Timestamp::from_nanos(10).saturating_duration_since(Timestamp::from_nanos(4)),
            Duration::from_nanos(6)
        );
    }
}
