//! In-flight caps: at most N requests of one identifier in flight at once (Stripe's
//! concurrent-requests limiter, nginx `limit_conn`).
//!
//! An [`InFlight`] hands out [`InFlightSlot`]s, one per request, and refuses once `max` of one
//! identifier are held. A slot is released when it is dropped, whatever drops it: the response
//! sent, the request's future dropped (client gone, timeout), a panic unwinding.
//!
//! - [`InFlight::new`]: a cap per process, in a lock-free map. Taking a slot of an identifier
//!   that has an entry is one lookup and one CAS, allocates nothing, and takes no lock; an
//!   identifier a thread meets twice in a row is remembered there, and its next slots are one
//!   compare and one CAS. Releasing a slot is one decrement, without a lookup.
//! - [`InFlight::shared`]: a cap across a fleet, kept by an [`InFlightStore`]
//!   (`lightrate_redis::RedisInFlight`: slots in Redis that expire when their process dies).

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use papaya::{Compute, Operation};

use crate::limiter::same_bytes;
use crate::Error;

/// How long a refused request is told to wait (`Retry-After: 1`): slots are freed by requests
/// finishing, which no clock predicts.
pub const IN_FLIGHT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The name of an [`InFlight`] not given one with [`InFlight::named`].
pub const DEFAULT_IN_FLIGHT_NAME: &str = "default";

/// A counter's value once a sweep has taken it out of the map: an acquire that finds it goes
/// to the map again. Never reached by counting: `max` is below it.
const DEAD: u32 = u32::MAX;

/// The fewest entries at which the local map is swept.
const MIN_SWEEP_LEN: usize = 1024;

/// The future an [`InFlightStore`] returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'a>>;

/// Where a fleet-wide cap keeps its slots: implemented by `lightrate_redis::RedisInFlight`.
///
/// A store counts slots per (name, identifier) across every process that shares it, and
/// releases a process's slots by itself when that process dies (after a TTL, say).
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use lightrate_core::{InFlightStore, StoreAcquired, StoreFuture, StoreSlot};
///
/// /// Slots in this process only: a store shared by several `InFlight`s.
/// #[derive(Debug, Default)]
/// struct Counts(Mutex<HashMap<String, u32>>);
///
/// impl InFlightStore for Counts {
///     fn acquire<'a>(&'a self, name: &'a str, key: &'a str, max: u32) -> StoreFuture<'a, StoreAcquired> {
///         Box::pin(async move {
///             let slot = format!("{name}/{key}");
///             let mut counts = self.0.lock().unwrap();
///             let n = counts.entry(slot.clone()).or_default();
///             if *n >= max {
///                 return Ok(StoreAcquired::Full { in_flight: *n });
///             }
///             *n += 1;
///             Ok(StoreAcquired::Slot(StoreSlot::new(slot, 0)))
///         })
///     }
///
///     fn release(&self, slot: StoreSlot) -> StoreFuture<'static, ()> {
///         if let Some(n) = self.0.lock().unwrap().get_mut(slot.key()) {
///             *n -= 1;
///         }
///         Box::pin(async { Ok(()) })
///     }
/// }
/// ```
pub trait InFlightStore: Send + Sync + fmt::Debug + 'static {
    /// Takes a slot of `key` under the cap `name` if fewer than `max` are held, counting the
    /// slots of every process. Errors are outages (kinds `Timeout`, `Network`, `Unavailable`)
    /// when the store could not answer, for the caller's
    /// [`OnUnavailable`](crate::OnUnavailable) policy.
    fn acquire<'a>(
        &'a self,
        name: &'a str,
        key: &'a str,
        max: u32,
    ) -> StoreFuture<'a, StoreAcquired>;

    /// Releases `slot`. Called from the slot's `Drop`, so it must not block: what is synchronous
    /// (stop renewing the slot, say) is done before returning; the future, run on the tokio
    /// runtime when there is one, removes the slot from the store. A future never run must
    /// leave the slot to expire by itself.
    fn release(&self, slot: StoreSlot) -> StoreFuture<'static, ()>;
}

/// What an [`InFlightStore`] answers to an acquire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreAcquired {
    /// A slot was taken.
    Slot(StoreSlot),
    /// `in_flight` slots are held (at least `max`): none was taken.
    Full {
        /// How many slots of the identifier the store counts.
        in_flight: u32,
    },
}

/// A slot held in an [`InFlightStore`], as the store names it: a key of its own (a Redis key,
/// say) and an id unique under that key.
///
/// ```
/// use lightrate_core::StoreSlot;
///
/// let slot = StoreSlot::new("lightrate:default:inflight:export:alice", 7);
/// assert_eq!((slot.key(), slot.id()), ("lightrate:default:inflight:export:alice", 7));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoreSlot {
    key: Box<str>,
    id: u64,
}

impl StoreSlot {
    /// The slot `id` under `key`.
    pub fn new(key: impl Into<Box<str>>, id: u64) -> StoreSlot {
        StoreSlot {
            key: key.into(),
            id,
        }
    }

    /// The store's key of the slot.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The slot's id under its key.
    pub fn id(&self) -> u64 {
        self.id
    }
}

/// A cap on the requests of one identifier in flight at once: per process
/// ([`new`](Self::new)) or across a fleet ([`shared`](Self::shared)).
///
/// Cheap to clone: clones share the counts. Several caps may share one store; give each a
/// [`name`](Self::named) so that their counts do not mix.
///
/// ```
/// use lightrate_core::{Acquired, InFlight};
///
/// let exports = InFlight::new(2).named("export");
/// let a = exports.try_acquire_local("alice").unwrap().into_slot().unwrap();
/// let b = exports.try_acquire_local("alice").unwrap().into_slot().unwrap();
/// // A third export of alice's is refused, with a hint to retry in a second...
/// let third = exports.try_acquire_local("alice").unwrap();
/// assert!(matches!(third, Acquired::Full { in_flight: 2, max: 2 }));
/// assert_eq!(third.retry_after(), Some(std::time::Duration::from_secs(1)));
/// // ...while bob has slots of his own.
/// assert!(exports.try_acquire_local("bob").unwrap().is_slot());
/// // A response sent (or a request dropped) drops its slot, which frees it.
/// drop(a);
/// assert!(exports.try_acquire_local("alice").unwrap().is_slot());
/// # drop(b);
/// ```
#[derive(Clone)]
pub struct InFlight {
    inner: Arc<Inner>,
}

struct Inner {
    /// Tells this cap's count in a thread's [`Memo`] from another cap's: from [`NEXT_ID`],
    /// never reused, never 0.
    id: u64,
    max: u32,
    name: Box<str>,
    /// The fleet's store; `None` for a cap per process.
    store: Option<Arc<dyn InFlightStore>>,
    local: Counts,
}

/// The counts of a cap per process: identifier → slots held.
struct Counts {
    /// Keyed with foldhash's per-map random seeds: identifiers are the clients' to choose, so
    /// the hash must be unpredictable (HashDoS).
    map: papaya::HashMap<Id, Arc<AtomicU32>, foldhash::fast::RandomState>,
    /// The map's length at which the next insert sweeps it.
    next_sweep: AtomicUsize,
    sweeping: AtomicBool,
}

impl InFlight {
    /// A cap of `max` requests in flight per identifier, in this process. `max` is at most
    /// `u32::MAX - 1`; 0 refuses everything.
    pub fn new(max: u32) -> InFlight {
        InFlight::build(max, DEFAULT_IN_FLIGHT_NAME.into(), None)
    }

    /// A cap of `max` requests in flight per identifier across every process whose `InFlight`
    /// of the same [`name`](Self::named) uses `store`: [`acquire`](Self::acquire) asks the
    /// store, and [`try_acquire_local`](Self::try_acquire_local) answers `None`.
    pub fn shared(max: u32, store: impl InFlightStore) -> InFlight {
        InFlight::build(max, DEFAULT_IN_FLIGHT_NAME.into(), Some(Arc::new(store)))
    }

    /// This cap under the name `name` (default `default`): caps of different names on one
    /// store count apart. A new cap: slots held under the old name stay held there.
    pub fn named(self, name: impl Into<String>) -> InFlight {
        let inner = &*self.inner;
        InFlight::build(inner.max, name.into().into(), inner.store.clone())
    }

    fn build(max: u32, name: Box<str>, store: Option<Arc<dyn InFlightStore>>) -> InFlight {
        InFlight {
            inner: Arc::new(Inner {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                max: max.min(DEAD - 1),
                name,
                store,
                local: Counts {
                    map: papaya::HashMap::builder()
                        .hasher(foldhash::fast::RandomState::default())
                        // Resized by increments, not blocking: with blocking resizes, this
                        // map's churn (new identifiers, sweeps by `retain`) could make papaya
                        // 0.2.5 abort and reallocate its next table without end while every
                        // thread helped copy: 24 GB in a minute in CI. Under two busy loops,
                        // `inflight_memoized_hot_identifier_under_sweeps_never_exceeds_max`
                        // passed 800 MB (caught with gdb) in 3 runs of 70 with blocking
                        // resizes, in none of 150 with incremental ones.
                        .resize_mode(papaya::ResizeMode::Incremental(1024))
                        .build(),
                    next_sweep: AtomicUsize::new(MIN_SWEEP_LEN),
                    sweeping: AtomicBool::new(false),
                },
            }),
        }
    }

    /// The most slots one identifier may hold.
    pub fn max(&self) -> u32 {
        self.inner.max
    }

    /// The cap's name (see [`named`](Self::named)).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Whether the cap is kept by a store, across a fleet.
    pub fn is_shared(&self) -> bool {
        self.inner.store.is_some()
    }

    /// Takes a slot of `key` without waiting: `Some` for a cap per process (a slot, or
    /// [`Acquired::Full`]), `None` for a shared cap, whose store must be asked with
    /// [`acquire`](Self::acquire).
    ///
    /// On an identifier that has an entry: one lookup and one CAS (on the identifier this thread
    /// met twice in a row, one compare and one CAS), no allocation, no lock.
    #[inline]
    pub fn try_acquire_local(&self, key: &str) -> Option<Acquired> {
        if self.inner.store.is_some() {
            return None;
        }
        Some(self.inner.acquire_local(key))
    }

    /// Takes a slot of `key`: at once for a cap per process, from the store for a shared one.
    ///
    /// Errors only from a store (outage kinds when it could not answer: see
    /// [`InFlightStore::acquire`]). A future dropped while the store is asked takes no slot
    /// it keeps: a slot the store took meanwhile is never renewed, and expires.
    pub async fn acquire(&self, key: &str) -> Result<Acquired, Error> {
        let inner = &*self.inner;
        let Some(store) = &inner.store else {
            return Ok(inner.acquire_local(key));
        };
        if inner.max == 0 {
            return Ok(Acquired::Full {
                in_flight: 0,
                max: 0,
            });
        }
        Ok(match store.acquire(&inner.name, key, inner.max).await? {
            StoreAcquired::Slot(slot) => Acquired::Slot(InFlightSlot {
                held: Held::Fleet(Arc::new(FleetSlot {
                    store: store.clone(),
                    slot: Some(slot),
                })),
            }),
            StoreAcquired::Full { in_flight } => Acquired::Full {
                in_flight,
                max: inner.max,
            },
        })
    }

    /// The slots of `key` held now, for a cap per process; `None` for a shared cap.
    pub fn in_flight(&self, key: &str) -> Option<u32> {
        if self.inner.store.is_some() {
            return None;
        }
        let map = self.inner.local.map.pin();
        let held = map.get(&Lookup(key)).map(|c| c.load(Ordering::Acquire));
        Some(held.filter(|n| *n != DEAD).unwrap_or(0))
    }

    /// How many identifiers the local map holds (some perhaps at 0, until a sweep).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.inner.local.map.len()
    }
}

/// The ids of caps ([`Inner::id`]), from 1.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The longest identifier a [`Memo`] keeps: inline, so that filling the memo never allocates,
/// and in a room longer than any length it can hold, so that reading it checks no bound.
const MEMO_KEY_BYTES: usize = u8::MAX as usize;

/// The identifier this thread found in a cap's map twice in a row, and its count: the next
/// acquires of it on this thread (a client with requests in flight, sending more) take their
/// slot on that count directly, without entering the map's epoch, hashing or probing.
///
/// The map stays the truth: a count is taken out of its map only once a sweep has made it
/// [`DEAD`], and a count that is not dead is the one its map holds for the identifier (a sweep
/// removes no other, and a new entry replaces only a dead one), so counting a slot on the
/// memo's count is counting it on the map's; a dead one sends the acquire to the map, as a
/// dead count found in the map does. A memo holds one count alive at most per thread.
struct Memo {
    /// The [`Inner::id`] of the cap whose count this is; 0 (no cap's) at first.
    cap: u64,
    len: u8,
    key: [u8; MEMO_KEY_BYTES + 1],
    /// At first a dead count of no cap's (so that there is always one to look at).
    count: Arc<AtomicU32>,
    /// The address of the count this thread last found in a map: a stream of different
    /// identifiers costs a compare and a store of it, never a copy of the identifier. (An
    /// address reused by another count makes that one memoized a lookup early: harmless.)
    seen: usize,
}

thread_local! {
    static MEMO: RefCell<Memo> = RefCell::new(Memo {
        cap: 0,
        len: 0,
        key: [0; MEMO_KEY_BYTES + 1],
        count: Arc::new(AtomicU32::new(DEAD)),
        seen: 0,
    });
}

impl Memo {
    /// The memoized count if it is `key`'s under the cap `cap`.
    #[inline]
    fn count(&self, cap: u64, key: &str) -> Option<&Arc<AtomicU32>> {
        let memoized = &self.key[..usize::from(self.len)];
        (self.cap == cap && same_bytes(memoized, key.as_bytes())).then_some(&self.count)
    }

    /// Notes that this thread found `count` (`key`'s under the cap `cap`) in the map, and
    /// memoizes it if it did the time before too.
    #[inline]
    fn found(&mut self, cap: u64, key: &str, count: &Arc<AtomicU32>) {
        let at = Arc::as_ptr(count) as usize;
        if self.seen != at {
            self.seen = at;
        } else {
            self.remember(cap, key, count);
        }
    }

    #[cold]
    fn remember(&mut self, cap: u64, key: &str, count: &Arc<AtomicU32>) {
        let (Ok(len), Some(room)) = (u8::try_from(key.len()), self.key.get_mut(..key.len())) else {
            return;
        };
        room.copy_from_slice(key.as_bytes());
        self.len = len;
        self.cap = cap;
        self.count = count.clone();
    }
}

impl Inner {
    #[inline]
    fn acquire_local(&self, key: &str) -> Acquired {
        // One look at this thread's memo: the count there if it is key's, else the map (whose
        // find is noted in the memo, still borrowed).
        let memoized = MEMO.try_with(|memo| match memo.try_borrow_mut() {
            Ok(mut memo) => {
                if let Some(count) = memo.count(self.id, key) {
                    if let Some(acquired) = self.answer(take(count, self.max), count) {
                        return acquired;
                    }
                }
                self.acquire_mapped(key, Some(&mut memo))
            }
            // Only were the map's code to acquire again from inside (it does not).
            Err(_) => self.acquire_unmemoized(key),
        });
        match memoized {
            Ok(acquired) => acquired,
            // This thread's memo is gone (its thread-locals being destroyed).
            Err(_) => self.acquire_unmemoized(key),
        }
    }

    #[cold]
    #[inline(never)]
    fn acquire_unmemoized(&self, key: &str) -> Acquired {
        self.acquire_mapped(key, None)
    }

    /// Takes a slot of `key` through the map, noting the count found in `memo`.
    #[inline(always)]
    fn acquire_mapped(&self, key: &str, memo: Option<&mut Memo>) -> Acquired {
        let map = self.local.map.pin();
        if let Some(count) = map.get(&Lookup(key)) {
            if let Some(acquired) = self.answer(take(count, self.max), count) {
                if let Some(memo) = memo {
                    memo.found(self.id, key, count);
                }
                return acquired;
            }
        }
        self.acquire_new(key, &map)
    }

    /// The answer for what [`take`] did on `count`: `None` if it was dead.
    #[inline]
    fn answer(&self, taken: Taken, count: &Arc<AtomicU32>) -> Option<Acquired> {
        match taken {
            Taken::Slot => Some(Acquired::Slot(InFlightSlot::local(count.clone()))),
            Taken::Full(in_flight) => Some(Acquired::Full {
                in_flight,
                max: self.max,
            }),
            Taken::Dead => None,
        }
    }

    /// The slow path: `key` has no entry (or only one a sweep took out).
    #[cold]
    fn acquire_new(&self, key: &str, map: &CountsRef<'_>) -> Acquired {
        if self.max == 0 {
            return Acquired::Full {
                in_flight: 0,
                max: 0,
            };
        }
        loop {
            // A new entry is made holding this slot, so no sweep can take it out first.
            let computed = map.compute(Id(key.into()), |existing| match existing {
                Some((_, count)) if count.load(Ordering::Acquire) != DEAD => {
                    Operation::Abort(count.clone())
                }
                _ => Operation::Insert(Arc::new(AtomicU32::new(1))),
            });
            let count = match computed {
                Compute::Inserted(_, count)
                | Compute::Updated {
                    new: (_, count), ..
                } => {
                    let slot = InFlightSlot::local(count.clone());
                    self.local.maybe_sweep();
                    return Acquired::Slot(slot);
                }
                Compute::Aborted(count) => count,
                Compute::Removed(..) => unreachable!("the computation never removes"),
            };
            match take(&count, self.max) {
                Taken::Slot => return Acquired::Slot(InFlightSlot::local(count)),
                Taken::Full(in_flight) => {
                    return Acquired::Full {
                        in_flight,
                        max: self.max,
                    }
                }
                // Swept in between: make a new entry.
                Taken::Dead => continue,
            }
        }
    }
}

/// The local map pinned (its epoch entered) for one acquire.
type CountsRef<'m> =
    papaya::HashMapRef<'m, Id, Arc<AtomicU32>, foldhash::fast::RandomState, papaya::LocalGuard<'m>>;

/// An identifier as the local map keeps it: hashed as its bytes alone (one pass of foldhash,
/// which mixes in the length; a `str` adds a terminator byte, which a key made of one string
/// does not need), and compared with [`same_bytes`].
struct Id(Box<str>);

/// An identifier looked up in the local map (hashed and compared as an [`Id`]).
struct Lookup<'a>(&'a str);

impl Hash for Id {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.0.as_bytes());
    }
}

impl PartialEq for Id {
    #[inline]
    fn eq(&self, other: &Id) -> bool {
        same_bytes(self.0.as_bytes(), other.0.as_bytes())
    }
}

impl Eq for Id {}

impl Hash for Lookup<'_> {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.0.as_bytes());
    }
}

impl papaya::Equivalent<Id> for Lookup<'_> {
    #[inline]
    fn equivalent(&self, key: &Id) -> bool {
        same_bytes(self.0.as_bytes(), key.0.as_bytes())
    }
}

/// What one CAS on a count came to.
enum Taken {
    Slot,
    Full(u32),
    Dead,
}

/// Counts one more slot on `count` if fewer than `max` are held.
#[inline]
fn take(count: &AtomicU32, max: u32) -> Taken {
    let mut held = count.load(Ordering::Relaxed);
    loop {
        if held == DEAD {
            return Taken::Dead;
        }
        if held >= max {
            return Taken::Full(held);
        }
        match count.compare_exchange_weak(held, held + 1, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => return Taken::Slot,
            Err(now) => held = now,
        }
    }
}

impl Counts {
    /// Sweeps when the map holds twice the identifiers in flight at the last sweep (and at
    /// least [`MIN_SWEEP_LEN`]): memory follows the identifiers in flight, at an amortised cost
    /// of one visit per insert.
    fn maybe_sweep(&self) {
        if self.map.len() < self.next_sweep.load(Ordering::Relaxed)
            || self.sweeping.swap(true, Ordering::Acquire)
        {
            return;
        }
        // Entries inserted while the sweep runs are not counted: they would raise the next
        // threshold at every sweep under a stream of new identifiers.
        let in_flight = self.sweep();
        self.next_sweep
            .store((in_flight * 2).max(MIN_SWEEP_LEN), Ordering::Relaxed);
        self.sweeping.store(false, Ordering::Release);
    }

    /// Takes out every entry at 0, and says how many it kept: each is marked dead first, so an
    /// acquire that still sees it makes a new entry rather than count on it.
    fn sweep(&self) -> usize {
        let guard = self.map.guard();
        let mut kept = 0;
        self.map.retain(
            |_, count| {
                // Dead already: killed by a sweep whose removal met a resize.
                let keep = !matches!(
                    count.compare_exchange(0, DEAD, Ordering::AcqRel, Ordering::Relaxed),
                    Ok(_) | Err(DEAD)
                );
                kept += usize::from(keep);
                keep
            },
            &guard,
        );
        kept
    }
}

impl fmt::Debug for InFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        let mut d = f.debug_struct("InFlight");
        d.field("name", &inner.name).field("max", &inner.max);
        match &inner.store {
            Some(store) => d.field("store", store),
            None => d.field("identifiers", &inner.local.map.len()),
        };
        d.finish()
    }
}

/// What [`InFlight::acquire`] and [`InFlight::try_acquire_local`] answer: a slot, or a
/// refusal (a value, not an error: the caller answers 429 with `Retry-After`).
#[must_use = "a slot is released as soon as it is dropped"]
#[derive(Debug)]
pub enum Acquired {
    /// A slot, held until dropped.
    Slot(InFlightSlot),
    /// `max` slots of the identifier are held already.
    Full {
        /// How many slots the cap counts (for a fleet, the store's count).
        in_flight: u32,
        /// The cap.
        max: u32,
    },
}

impl Acquired {
    /// Whether a slot was taken.
    pub fn is_slot(&self) -> bool {
        matches!(self, Acquired::Slot(_))
    }

    /// The slot, if one was taken.
    pub fn into_slot(self) -> Option<InFlightSlot> {
        match self {
            Acquired::Slot(slot) => Some(slot),
            Acquired::Full { .. } => None,
        }
    }

    /// How long a refused request should wait before retrying ([`IN_FLIGHT_RETRY_AFTER`]);
    /// `None` for a slot.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Acquired::Slot(_) => None,
            Acquired::Full { .. } => Some(IN_FLIGHT_RETRY_AFTER),
        }
    }
}

/// A request's place under an [`InFlight`] cap, released when dropped (RAII): hold it in the
/// response's future, and whatever ends that future (the response sent, the client gone, a
/// timeout, a panic) frees the slot. `Send` and `'static`.
///
/// A fleet slot's release is spawned on the tokio runtime of the thread that drops it; with no
/// runtime there, the store lets the slot expire.
#[must_use = "a slot is released as soon as it is dropped"]
pub struct InFlightSlot {
    held: Held,
}

enum Held {
    /// The count of its identifier.
    Local(Arc<AtomicU32>),
    /// The store's slot, behind a pointer so that a slot (and an [`Acquired`]) stays two words,
    /// moved in registers; an `Arc` (never shared) so that dropping either kind is the same
    /// small code, inlined.
    Fleet(Arc<FleetSlot>),
}

struct FleetSlot {
    store: Arc<dyn InFlightStore>,
    /// `None` once released.
    slot: Option<StoreSlot>,
}

impl InFlightSlot {
    #[inline]
    fn local(count: Arc<AtomicU32>) -> InFlightSlot {
        InFlightSlot {
            held: Held::Local(count),
        }
    }

    /// Releases the slot now and waits until the store has (a local slot: at once). Dropping
    /// the slot does the same without waiting.
    pub async fn release(mut self) -> Result<(), Error> {
        match &mut self.held {
            Held::Local(_) => Ok(()),
            Held::Fleet(fleet) => match Arc::get_mut(fleet).and_then(|f| f.slot.take()) {
                Some(slot) => fleet.store.release(slot).await,
                None => Ok(()),
            },
        }
    }
}

impl Drop for InFlightSlot {
    #[inline]
    fn drop(&mut self) {
        match &mut self.held {
            Held::Local(count) => {
                count.fetch_sub(1, Ordering::Release);
            }
            Held::Fleet(fleet) => FleetSlot::release_in_background(fleet),
        }
    }
}

impl FleetSlot {
    /// Spawns the slot's release on this thread's tokio runtime, if any (else the store lets
    /// it expire).
    #[cold]
    #[inline(never)]
    fn release_in_background(this: &mut Arc<FleetSlot>) {
        // Never shared: always this slot's alone.
        let Some(fleet) = Arc::get_mut(this) else {
            return;
        };
        if let Some(slot) = fleet.slot.take() {
            let release = fleet.store.release(slot);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    if let Err(e) = release.await {
                        tracing::debug!(
                            target: "lightrate::inflight",
                            error = %e,
                            "an in-flight slot was not released: it expires"
                        );
                    }
                });
            }
        }
    }
}

impl fmt::Debug for InFlightSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.held {
            Held::Local(count) => f
                .debug_struct("InFlightSlot")
                .field("in_flight", &count.load(Ordering::Relaxed))
                .finish(),
            Held::Fleet(fleet) => f
                .debug_struct("InFlightSlot")
                .field("slot", &fleet.slot)
                .finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    fn slot(cap: &InFlight, key: &str) -> Option<InFlightSlot> {
        cap.try_acquire_local(key).unwrap().into_slot()
    }

    #[test]
    fn inflight_cap_of_two_refuses_the_third() {
        let cap = InFlight::new(2);
        let a = slot(&cap, "alice").unwrap();
        let b = slot(&cap, "alice").unwrap();
        let third = cap.try_acquire_local("alice").unwrap();
        assert!(matches!(
            third,
            Acquired::Full {
                in_flight: 2,
                max: 2
            }
        ));
        assert_eq!(third.retry_after(), Some(IN_FLIGHT_RETRY_AFTER));
        assert_eq!(cap.in_flight("alice"), Some(2));
        drop((a, b));
    }

    #[test]
    fn inflight_drop_releases() {
        let cap = InFlight::new(1);
        let a = slot(&cap, "alice").unwrap();
        assert!(slot(&cap, "alice").is_none());
        drop(a);
        assert_eq!(cap.in_flight("alice"), Some(0));
        let b = slot(&cap, "alice").unwrap();
        assert_eq!(cap.in_flight("alice"), Some(1));
        // Clones share the counts.
        assert!(slot(&cap.clone(), "alice").is_none());
        drop(b);
    }

    #[test]
    fn inflight_panic_unwinding_releases() {
        let cap = InFlight::new(1);
        let held = cap.clone();
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _slot = slot(&held, "alice").unwrap();
            panic!("the handler failed");
        }));
        assert!(unwound.is_err());
        assert_eq!(cap.in_flight("alice"), Some(0));
    }

    #[tokio::test]
    async fn inflight_dropped_future_releases() {
        let cap = InFlight::new(1);
        let held = slot(&cap, "alice").unwrap();
        // A response future holding its slot, dropped before it finished (client gone).
        let response = async move {
            let _held = held;
            std::future::pending::<()>().await;
        };
        let task = tokio::spawn(response);
        tokio::task::yield_now().await;
        assert_eq!(cap.in_flight("alice"), Some(1));
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        assert_eq!(cap.in_flight("alice"), Some(0));
    }

    #[test]
    fn inflight_identifiers_and_names_are_independent() {
        let cap = InFlight::new(1);
        let a = slot(&cap, "alice").unwrap();
        let b = slot(&cap, "bob").unwrap();
        assert!(slot(&cap, "alice").is_none());
        assert!(slot(&cap, "bob").is_none());
        // Another name is another cap.
        let other = cap.clone().named("export");
        assert_eq!(other.name(), "export");
        assert_eq!(cap.name(), DEFAULT_IN_FLIGHT_NAME);
        assert!(slot(&other, "alice").is_some());
        drop((a, b));
    }

    #[test]
    fn inflight_memo_of_a_swept_identifier_goes_to_the_map() {
        let cap = InFlight::new(2);
        // Found in the map twice in a row: this thread's memo; then taken from the memo.
        for _ in 0..4 {
            drop(slot(&cap, "memoized-user").unwrap());
        }
        // Swept out at 0: the memo's count is dead.
        cap.inner.local.sweep();
        assert_eq!(cap.tracked(), 0);
        // The slots are counted on a new entry, which the map holds, and the cap holds.
        let a = slot(&cap, "memoized-user").unwrap();
        let b = slot(&cap, "memoized-user").unwrap();
        assert_eq!(cap.tracked(), 1);
        assert_eq!(cap.in_flight("memoized-user"), Some(2));
        assert!(slot(&cap, "memoized-user").is_none());
        drop(a);
        // Memoized again (found twice in a row), and still counted where the map counts.
        let c = slot(&cap, "memoized-user").unwrap();
        assert_eq!(cap.in_flight("memoized-user"), Some(2));
        assert!(slot(&cap, "memoized-user").is_none());
        drop((b, c));
        assert_eq!(cap.in_flight("memoized-user"), Some(0));
    }

    #[test]
    fn inflight_memo_tells_identifiers_and_caps_apart() {
        let cap = InFlight::new(1);
        for _ in 0..3 {
            drop(slot(&cap, "memoized-user").unwrap());
        }
        let held = slot(&cap, "memoized-user").unwrap();
        // Same length, same first bytes, one byte apart: not the memo's identifier.
        assert!(slot(&cap, "memoized-usex").is_some());
        assert!(slot(&cap, "xemoized-user").is_some());
        assert!(slot(&cap, "memoized-user").is_none());
        // Another cap (and a renamed one) counts the same identifier apart.
        let other = InFlight::new(1);
        let other_held = slot(&other, "memoized-user").unwrap();
        let renamed = cap.clone().named("export");
        assert!(slot(&renamed, "memoized-user").is_some());
        assert!(slot(&other, "memoized-user").is_none());
        assert!(slot(&cap, "memoized-user").is_none());
        drop((held, other_held));
        assert!(slot(&cap, "memoized-user").is_some());
        assert!(slot(&other, "memoized-user").is_some());
        // Identifiers too long for a memo are counted in the map alone.
        let long = "l".repeat(300);
        for _ in 0..3 {
            drop(slot(&cap, &long).unwrap());
        }
        let long_held = slot(&cap, &long).unwrap();
        assert!(slot(&cap, &long).is_none());
        drop(long_held);
        assert_eq!(cap.in_flight(&long), Some(0));
    }

    #[test]
    fn inflight_memoized_hot_identifier_under_sweeps_never_exceeds_max() {
        // Every thread takes its slots of one hot identifier from its memo, or from the map
        // when another identifier took the memo, while fresh identifiers make the map sweep
        // throughout: a sweep kills the hot count whenever it finds it at 0, and a slot counted
        // on a count no longer in the map (by a memo that kept it) would let a second holder in
        // beside one counted on the map's new entry.
        const MAX: u32 = 1;
        let cap = InFlight::new(MAX);
        let holding = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (cap, holding) = (cap.clone(), holding.clone());
                std::thread::spawn(move || {
                    let mut granted = 0u32;
                    for i in 0..60_000u32 {
                        if i % 8 == 0 {
                            // Another identifier, twice in a row, takes this thread's memo:
                            // the hot one is then found in the map (or made anew) again.
                            for _ in 0..2 {
                                drop(slot(&cap, &format!("own-{t}")));
                            }
                        }
                        let hot = slot(&cap, "hot");
                        if hot.is_some() {
                            let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                            assert!(now <= MAX, "{now} slots held at once");
                            granted += 1;
                        }
                        // Held across the churn's insert (and its sweep, at times).
                        drop(slot(&cap, &format!("churn-{t}-{i}")));
                        if hot.is_some() {
                            holding.fetch_sub(1, Ordering::SeqCst);
                        }
                        drop(hot);
                    }
                    granted
                })
            })
            .collect();
        let granted: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(granted > 0);
        assert_eq!(cap.in_flight("hot"), Some(0));
        assert!(cap.tracked() <= 4 * MIN_SWEEP_LEN, "{}", cap.tracked());
    }

    #[test]
    fn identifiers_of_every_length_are_found_under_their_own_key() {
        // (`same_bytes` itself is tested byte by byte in `limiter::keys`.)
        let cap = InFlight::new(1);
        let ids: Vec<String> = (0..40).map(|n| "x".repeat(n)).collect();
        let held: Vec<_> = ids.iter().map(|id| slot(&cap, id).unwrap()).collect();
        for id in &ids {
            assert_eq!(cap.in_flight(id), Some(1), "{id:?}");
            assert!(slot(&cap, id).is_none(), "{id:?}");
        }
        drop(held);
    }

    #[test]
    fn inflight_zero_refuses_everything() {
        let cap = InFlight::new(0);
        assert!(matches!(
            cap.try_acquire_local("alice").unwrap(),
            Acquired::Full {
                in_flight: 0,
                max: 0
            }
        ));
        assert_eq!(cap.tracked(), 0);
    }

    #[test]
    fn inflight_concurrent_threads_never_exceed_max_and_end_at_zero() {
        const MAX: u32 = 3;
        let cap = InFlight::new(MAX);
        // What the holders see, counted apart from the cap.
        let holding = Arc::new(AtomicU32::new(0));
        let granted = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let (cap, holding, granted) = (cap.clone(), holding.clone(), granted.clone());
                std::thread::spawn(move || {
                    for i in 0..20_000 {
                        // Most on one hot identifier, some on identifiers of their own.
                        let key = if i % 8 == 0 {
                            format!("t{t}")
                        } else {
                            "hot".into()
                        };
                        if let Some(slot) = slot(&cap, &key) {
                            if key == "hot" {
                                let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                                assert!(now <= MAX, "{now} slots held at once");
                                granted.fetch_add(1, Ordering::Relaxed);
                                std::hint::spin_loop();
                                holding.fetch_sub(1, Ordering::SeqCst);
                            }
                            drop(slot);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(granted.load(Ordering::Relaxed) > 0);
        assert_eq!(cap.in_flight("hot"), Some(0));
        for t in 0..8 {
            assert_eq!(cap.in_flight(&format!("t{t}")), Some(0));
        }
    }

    #[test]
    fn inflight_concurrent_sweeps_never_lose_a_slot() {
        // Threads acquire on a few identifiers while others churn new ones, so that sweeps run
        // throughout: a slot counted on an entry a sweep took out would let a fourth in.
        const MAX: u32 = 2;
        let cap = InFlight::new(MAX);
        let holders: Vec<_> = (0..4)
            .map(|t| {
                let cap = cap.clone();
                std::thread::spawn(move || {
                    let mut held = 0u32;
                    for i in 0..30_000u32 {
                        let key = format!("k{}", (i + t) % 4);
                        let a = slot(&cap, &key);
                        let b = slot(&cap, &key);
                        if let (Some(_), Some(_)) = (&a, &b) {
                            held += 1;
                        }
                        assert!(cap.in_flight(&key).unwrap() <= MAX);
                        let churn = format!("churn-{t}-{i}");
                        drop(slot(&cap, &churn));
                    }
                    held
                })
            })
            .collect();
        let held: u32 = holders.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(held > 0);
        for k in 0..4 {
            assert_eq!(cap.in_flight(&format!("k{k}")), Some(0));
        }
        assert!(cap.tracked() <= 4 * MIN_SWEEP_LEN, "{}", cap.tracked());
    }

    #[test]
    fn inflight_memory_stays_flat_under_new_identifiers() {
        let cap = InFlight::new(2);
        let long_lived = slot(&cap, "long-lived").unwrap();
        let mut most = 0;
        for i in 0..100_000 {
            let s = slot(&cap, &format!("user-{i}")).unwrap();
            drop(s);
            most = most.max(cap.tracked());
        }
        // Swept whenever the map doubles past MIN_SWEEP_LEN: never more than that many entries.
        assert!(most <= MIN_SWEEP_LEN, "{most} entries at most");
        cap.inner.local.sweep();
        assert_eq!(cap.tracked(), 1, "only the identifier in flight stays");
        assert_eq!(cap.in_flight("long-lived"), Some(1));
        // A swept identifier comes back as a new entry.
        assert!(slot(&cap, "user-7").is_some());
        drop(long_lived);
    }

    proptest! {
        /// Any sequence of acquires and drops over a few identifiers: the count of each is the
        /// number of its slots held, never more than the cap; a sweep anywhere changes nothing.
        #[test]
        fn inflight_count_is_the_slots_held(
            max in 0u32..4,
            steps in proptest::collection::vec((0u8..4, 0u8..3, any::<u16>()), 1..200),
        ) {
            let cap = InFlight::new(max);
            let mut held: HashMap<u8, Vec<InFlightSlot>> = HashMap::new();
            for (key, action, pick) in steps {
                let name = format!("id{key}");
                let slots = held.entry(key).or_default();
                match action {
                    0 | 1 => match cap.try_acquire_local(&name).unwrap() {
                        Acquired::Slot(slot) => {
                            prop_assert!((slots.len() as u32) < max);
                            slots.push(slot);
                        }
                        Acquired::Full { in_flight, max: m } => {
                            prop_assert_eq!(m, max);
                            prop_assert_eq!(in_flight as usize, slots.len());
                            prop_assert_eq!(slots.len() as u32, max);
                        }
                    },
                    _ => {
                        if !slots.is_empty() {
                            let i = usize::from(pick) % slots.len();
                            drop(slots.swap_remove(i));
                        } else {
                            cap.inner.local.sweep();
                        }
                    }
                }
                for (k, slots) in &held {
                    prop_assert_eq!(cap.in_flight(&format!("id{k}")), Some(slots.len() as u32));
                }
            }
        }
    }

    /// A store in memory, counting what it was asked.
    #[derive(Debug, Default)]
    struct MemoryStore {
        counts: Mutex<HashMap<String, u32>>,
        released: AtomicUsize,
        fail: AtomicBool,
    }

    impl InFlightStore for Arc<MemoryStore> {
        fn acquire<'a>(
            &'a self,
            name: &'a str,
            key: &'a str,
            max: u32,
        ) -> StoreFuture<'a, StoreAcquired> {
            Box::pin(async move {
                if self.fail.load(Ordering::SeqCst) {
                    return Err(Error::new(crate::ErrorKind::Timeout, "down"));
                }
                let key = format!("{name}:{key}");
                let mut counts = self.counts.lock().unwrap();
                let n = counts.entry(key.clone()).or_default();
                if *n >= max {
                    return Ok(StoreAcquired::Full { in_flight: *n });
                }
                *n += 1;
                Ok(StoreAcquired::Slot(StoreSlot::new(key, u64::from(*n))))
            })
        }

        fn release(&self, slot: StoreSlot) -> StoreFuture<'static, ()> {
            let store = self.clone();
            Box::pin(async move {
                *store.counts.lock().unwrap().get_mut(slot.key()).unwrap() -= 1;
                store.released.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
        }
    }

    #[tokio::test]
    async fn inflight_shared_caps_count_in_the_store() {
        let store = Arc::new(MemoryStore::default());
        // Two processes' caps on one store.
        let one = InFlight::shared(2, store.clone()).named("export");
        let two = InFlight::shared(2, store.clone()).named("export");
        assert!(one.is_shared());
        assert!(one.try_acquire_local("alice").is_none());
        assert_eq!(one.in_flight("alice"), None);
        let a = one.acquire("alice").await.unwrap().into_slot().unwrap();
        let b = two.acquire("alice").await.unwrap().into_slot().unwrap();
        let third = two.acquire("alice").await.unwrap();
        assert!(matches!(
            third,
            Acquired::Full {
                in_flight: 2,
                max: 2
            }
        ));
        // Another name counts apart.
        let other = InFlight::shared(2, store.clone());
        assert!(other.acquire("alice").await.unwrap().is_slot());
        // An explicit release waits for the store; a drop spawns it.
        a.release().await.unwrap();
        assert_eq!(store.released.load(Ordering::SeqCst), 1);
        let c = one.acquire("alice").await.unwrap().into_slot().unwrap();
        drop((b, c));
        for _ in 0..100 {
            if store.released.load(Ordering::SeqCst) == 4 {
                break;
            }
            tokio::task::yield_now().await;
        }
        // Released: a, the other name's slot (dropped at once), b and c.
        assert_eq!(store.released.load(Ordering::SeqCst), 4);
        assert_eq!(store.counts.lock().unwrap()["export:alice"], 0);
        assert_eq!(store.counts.lock().unwrap()["default:alice"], 0);
    }

    #[tokio::test]
    async fn inflight_shared_outage_is_an_error() {
        let store = Arc::new(MemoryStore::default());
        store.fail.store(true, Ordering::SeqCst);
        let e = InFlight::shared(2, store)
            .acquire("alice")
            .await
            .unwrap_err();
        assert!(e.is_outage(), "{e:?}");
    }

    #[test]
    fn inflight_fleet_slot_dropped_without_a_runtime_is_left_to_expire() {
        let store = Arc::new(MemoryStore::default());
        let cap = InFlight::shared(1, store.clone());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let slot = rt
            .block_on(cap.acquire("alice"))
            .unwrap()
            .into_slot()
            .unwrap();
        // Dropped on a thread with no runtime: nothing is run, the slot is left to the store.
        drop(slot);
        drop(rt);
        assert_eq!(store.released.load(Ordering::SeqCst), 0);
        assert_eq!(store.counts.lock().unwrap()["default:alice"], 1);
    }

    #[test]
    fn inflight_slots_are_send_static_and_small() {
        fn send_static<T: Send + 'static>() {}
        send_static::<InFlightSlot>();
        send_static::<Acquired>();
        fn sync_send<T: Send + Sync + Clone>() {}
        sync_send::<InFlight>();
        // Two words: returned and dropped in registers.
        assert!(std::mem::size_of::<InFlightSlot>() <= 2 * std::mem::size_of::<usize>());
        assert!(std::mem::size_of::<Acquired>() <= 2 * std::mem::size_of::<usize>());
        let cap = InFlight::new(1);
        let s = slot(&cap, "a").unwrap();
        assert!(format!("{s:?}").contains("in_flight: 1"));
        assert!(format!("{cap:?}").contains("max: 1"));
    }
}
