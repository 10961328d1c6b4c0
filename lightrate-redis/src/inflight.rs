//! [`RedisInFlight`]: the slots of fleet-wide in-flight caps, in Redis or Redis Cluster.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use lightrate_core::{Error, ErrorKind, InFlightStore, StoreAcquired, StoreFuture, StoreSlot};

use crate::connection::Connection;
use crate::keys;
use crate::source::{DEFAULT_APPLICATION_ID, DEFAULT_PREFIX, DEFAULT_REDIS_TIMEOUT};

/// How long a slot lives without being renewed unless [`RedisInFlightBuilder::slot_ttl`] says
/// otherwise: how long a dead process's slots go on counting.
pub const DEFAULT_SLOT_TTL: Duration = Duration::from_secs(30);

/// How many keys one renewal pass renews at once.
const RENEW_CONCURRENCY: usize = 32;

/// The slots of [`InFlight::shared`](lightrate_core::InFlight::shared) caps in Redis (or Redis
/// Cluster), counted across every process that uses the same Redis, prefix and application.
///
/// ```no_run
/// use lightrate_core::{Acquired, InFlight};
/// use lightrate_redis::RedisInFlight;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lightrate_core::Error> {
/// let store = RedisInFlight::connect("redis://127.0.0.1:6379")?;
/// let exports = InFlight::shared(2, store).named("export");
/// match exports.acquire("alice").await? {
///     Acquired::Slot(slot) => { /* serve the export, then drop `slot` */ drop(slot) }
///     Acquired::Full { .. } => { /* 429, Retry-After: 1 */ }
/// }
/// # Ok(()) }
/// ```
///
/// # Keys and scripts
///
/// One key per (cap name, identifier): `<prefix>:<application>:inflight:<name>:<identifier>`,
/// the parts after the prefix percent-encoded as the buckets' keys are (no braces: Redis
/// Cluster hashes the whole key), and with one more part than a bucket's key, so the two never
/// meet. The key is a sorted set of slot ids, each scored by the moment it expires (Redis
/// milliseconds). Every script touches that one key:
///
/// - acquire: removes the slots whose expiry has passed, then adds one if fewer than `max`
///   remain;
/// - release: removes the slot (`ZREM`);
/// - renew: moves the expiry of this process's slots of the key to now + TTL (`ZADD XX`: a slot
///   released meanwhile is not brought back).
///
/// The key itself expires with its last slot.
///
/// # Expiry and renewal
///
/// A slot expires TTL after it was taken ([`DEFAULT_SLOT_TTL`], 30 s) unless renewed. Each
/// store renews the slots its process holds in the background, every TTL/3 (one task per store,
/// started by the first acquire, ended when the last clone of the store is dropped), so a long
/// request keeps its slot. Time is Redis's `TIME`, one clock per key for the whole fleet.
///
/// **Bound**: a process that dies (killed, frozen, cut off) without releasing leaves its slots
/// counting against the cap for at most TTL after its last renewal, so at most TTL after it
/// died; measured by the clock of the Redis node holding the key (a failover to a replica adds
/// the two nodes' clock skew). The other side of the same bound: a process that cannot reach
/// Redis for longer than TTL − TTL/3 loses its slots while its requests still run, and the
/// fleet may then admit more than `max` until they end.
///
/// # When Redis is down
///
/// An acquire that gets no answer within the timeout (default 500 ms) fails with an [`Error`]
/// of kind `Timeout`; a refused or lost connection is `Network`; a cluster that is down is
/// `Unavailable`: outage kinds, for the caller's
/// [`OnUnavailable`](lightrate_core::OnUnavailable) policy. A release that fails leaves the slot
/// to expire; a renewal that fails is tried again at the next pass.
///
/// Cheap to clone: clones share the connection, the slots held and the renewal task.
#[derive(Clone)]
pub struct RedisInFlight {
    inner: Arc<Inner>,
}

struct Inner {
    connection: Connection,
    addresses: Vec<String>,
    prefix: String,
    application_id: String,
    ttl: Duration,
    renew_every: Duration,
    /// This store's slot ids are `<tag>:<id>`: the tag tells apart the processes (and stores)
    /// sharing a key.
    tag: u64,
    next_id: AtomicU64,
    /// The slots held, by key: what a renewal renews.
    held: Mutex<HashMap<Box<str>, HashSet<u64>>>,
    renewing: AtomicBool,
    renewal: Mutex<Option<tokio::task::AbortHandle>>,
    #[cfg(feature = "test-util")]
    clock: Option<Arc<dyn lightrate_core::Clock>>,
    #[cfg(feature = "test-util")]
    crashed: AtomicBool,
}

impl RedisInFlight {
    /// A store on the Redis at `url` (as [`RedisSource::connect`](crate::RedisSource::connect)
    /// takes it), with the default prefix, application id, timeout and TTL. No I/O happens
    /// here: a Redis that is down is an outage at the first acquire.
    ///
    /// Errors (kind `Configuration`): a URL that does not parse.
    pub fn connect(url: &str) -> Result<RedisInFlight, Error> {
        RedisInFlight::builder().connect(url)
    }

    /// A store on the Redis Cluster that `urls` (any of its nodes) belong to.
    pub fn connect_cluster<I, U>(urls: I) -> Result<RedisInFlight, Error>
    where
        I: IntoIterator<Item = U>,
        U: AsRef<str>,
    {
        RedisInFlight::builder().connect_cluster(urls)
    }

    /// A builder, for the key prefix, the application id, the timeout and the TTL.
    pub fn builder() -> RedisInFlightBuilder {
        RedisInFlightBuilder {
            prefix: DEFAULT_PREFIX.to_owned(),
            application_id: DEFAULT_APPLICATION_ID.to_owned(),
            timeout: DEFAULT_REDIS_TIMEOUT,
            ttl: DEFAULT_SLOT_TTL,
            renew_every: None,
            #[cfg(feature = "test-util")]
            clock: None,
        }
    }

    /// The Redis key of the slots of `identifier` under the cap `name`.
    ///
    /// ```
    /// use lightrate_redis::RedisInFlight;
    ///
    /// let store = RedisInFlight::connect("redis://127.0.0.1:6379").unwrap();
    /// assert_eq!(
    ///     store.slots_key("export", "bob:{1}"),
    ///     "lightrate:default:inflight:export:bob%3A%7B1%7D"
    /// );
    /// ```
    pub fn slots_key(&self, name: &str, identifier: &str) -> String {
        self.inner.slots_key(name, identifier)
    }

    /// How long a slot lives unless renewed.
    pub fn slot_ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// How many slots this store holds now (taken, neither released nor lost).
    pub fn held(&self) -> usize {
        lock(&self.inner.held).values().map(HashSet::len).sum()
    }

    /// `host:port` of the Redis (or of each cluster node given), never with credentials.
    pub fn addresses(&self) -> &[String] {
        &self.inner.addresses
    }

    /// Renews every slot this store holds, now: what the background task does every TTL/3.
    /// Returns how many were renewed; a slot Redis no longer has (it expired: this process
    /// could not renew it in time) is forgotten, with a warning. Errors: the first outage met
    /// (the other keys are renewed all the same).
    pub async fn renew(&self) -> Result<usize, Error> {
        renew(&self.inner).await
    }

    /// Stops renewing and forgets every slot this store holds without releasing any, and
    /// makes later releases do nothing: what a killed process leaves in Redis. Feature
    /// `test-util`.
    #[cfg(feature = "test-util")]
    pub fn crash(&self) {
        self.inner.crashed.store(true, Ordering::SeqCst);
        self.inner.stop_renewing();
        lock(&self.inner.held).clear();
    }

    /// Starts the renewal task, once, on the current runtime.
    fn start_renewing(&self) {
        let inner = &self.inner;
        if inner.renewing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            inner.renewing.store(false, Ordering::Release);
            return;
        };
        let weak = Arc::downgrade(inner);
        let every = inner.renew_every;
        let task = runtime.spawn(renew_forever(weak, every));
        *lock(&inner.renewal) = Some(task.abort_handle());
    }
}

/// Renews the slots of the store behind `weak` every `every`, until the store is dropped.
async fn renew_forever(weak: Weak<Inner>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(inner) = weak.upgrade() else { return };
        if let Err(e) = renew(&inner).await {
            tracing::warn!(
                target: "lightrate::inflight",
                error = %e,
                "in-flight slots not renewed: they expire unless a later renewal reaches Redis"
            );
        }
    }
}

/// One renewal pass over the slots `inner` holds, [`RENEW_CONCURRENCY`] keys at a time.
async fn renew(inner: &Arc<Inner>) -> Result<usize, Error> {
    let keys: Vec<(Box<str>, Vec<u64>)> = lock(&inner.held)
        .iter()
        .map(|(key, ids)| (key.clone(), ids.iter().copied().collect()))
        .collect();
    let mut renewed = 0;
    let mut first_error = None;
    let mut pending = tokio::task::JoinSet::new();
    let mut keys = keys.into_iter();
    loop {
        while pending.len() < RENEW_CONCURRENCY {
            let Some((key, ids)) = keys.next() else { break };
            let inner = inner.clone();
            pending.spawn(async move { inner.renew_key(&key, &ids).await });
        }
        let Some(done) = pending.join_next().await else {
            break;
        };
        match done {
            Ok(Ok(n)) => renewed += n,
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(Error::new(
                    ErrorKind::Internal,
                    format!("a renewal task failed: {e}"),
                ));
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(renewed),
    }
}

impl Inner {
    fn slots_key(&self, name: &str, identifier: &str) -> String {
        let mut key = keys::rule_prefix(&self.prefix, &self.application_id, "inflight");
        keys::push_encoded(&mut key, name);
        key.push(':');
        keys::push_encoded(&mut key, identifier);
        key
    }

    /// The member of slot `id` in its key.
    fn member(&self, id: u64) -> String {
        format!("{:016x}:{id}", self.tag)
    }

    /// The time the scripts take: empty for Redis `TIME`, else the injected clock's ms.
    fn now_arg(&self) -> String {
        #[cfg(feature = "test-util")]
        if let Some(clock) = &self.clock {
            return (clock.now().as_nanos() / 1_000_000).to_string();
        }
        String::new()
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }

    async fn acquire(
        &self,
        name: &str,
        identifier: &str,
        max: u32,
    ) -> Result<StoreAcquired, Error> {
        let key = self.slots_key(name, identifier);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut invocation = scripts().acquire.key(&key);
        invocation
            .arg(self.now_arg())
            .arg(max)
            .arg(self.ttl_ms())
            .arg(self.member(id));
        let (taken, in_flight): (i64, i64) = self.connection.invoke(&key, &invocation).await?;
        let in_flight = u32::try_from(in_flight.max(0)).unwrap_or(u32::MAX);
        if taken != 1 {
            return Ok(StoreAcquired::Full { in_flight });
        }
        lock(&self.held)
            .entry(key.as_str().into())
            .or_default()
            .insert(id);
        Ok(StoreAcquired::Slot(StoreSlot::new(key, id)))
    }

    /// Renews the slots `ids` of `key`; forgets those Redis no longer has. How many it renewed.
    async fn renew_key(&self, key: &str, ids: &[u64]) -> Result<usize, Error> {
        let mut invocation = scripts().renew.key(key);
        invocation.arg(self.now_arg()).arg(self.ttl_ms());
        for id in ids {
            invocation.arg(self.member(*id));
        }
        let lost: Vec<String> = self.connection.invoke(key, &invocation).await?;
        if !lost.is_empty() {
            tracing::warn!(
                target: "lightrate::inflight",
                key,
                lost = lost.len(),
                "in-flight slots expired before they were renewed: they no longer count"
            );
            let mut held = lock(&self.held);
            if let Some(set) = held.get_mut(key) {
                for member in &lost {
                    let id = member.rsplit(':').next().and_then(|id| id.parse().ok());
                    if let Some(id) = id {
                        set.remove(&id);
                    }
                }
                if set.is_empty() {
                    held.remove(key);
                }
            }
        }
        Ok(ids.len() - lost.len().min(ids.len()))
    }

    /// Forgets `slot` (no renewal); whether it was held.
    fn forget(&self, slot: &StoreSlot) -> bool {
        let mut held = lock(&self.held);
        let Some(ids) = held.get_mut(slot.key()) else {
            return false;
        };
        let was = ids.remove(&slot.id());
        if ids.is_empty() {
            held.remove(slot.key());
        }
        was
    }

    fn stop_renewing(&self) {
        if let Some(task) = lock(&self.renewal).take() {
            task.abort();
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop_renewing();
    }
}

impl InFlightStore for RedisInFlight {
    fn acquire<'a>(
        &'a self,
        name: &'a str,
        key: &'a str,
        max: u32,
    ) -> StoreFuture<'a, StoreAcquired> {
        Box::pin(async move {
            #[cfg(feature = "test-util")]
            if self.inner.crashed.load(Ordering::SeqCst) {
                return Err(Error::new(ErrorKind::Unavailable, "the store has crashed"));
            }
            let answer = self.inner.acquire(name, key, max).await?;
            if matches!(answer, StoreAcquired::Slot(_)) {
                self.start_renewing();
            }
            Ok(answer)
        })
    }

    fn release(&self, slot: StoreSlot) -> StoreFuture<'static, ()> {
        if !self.inner.forget(&slot) {
            // Not held: released already, lost, or the store crashed.
            return Box::pin(async { Ok(()) });
        }
        let inner = self.inner.clone();
        Box::pin(async move {
            let member = inner.member(slot.id());
            let mut invocation = scripts().release.key(slot.key());
            invocation.arg(member);
            inner
                .connection
                .invoke::<i64>(slot.key(), &invocation)
                .await
                .map(drop)
        })
    }
}

impl fmt::Debug for RedisInFlight {
    /// The addresses, prefix, application, TTL and slots held; never a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        f.debug_struct("RedisInFlight")
            .field("addresses", &inner.addresses)
            .field("connection", &inner.connection)
            .field("prefix", &inner.prefix)
            .field("application_id", &inner.application_id)
            .field("slot_ttl", &inner.ttl)
            .field("held", &self.held())
            .finish()
    }
}

/// Builds a [`RedisInFlight`]. See [`RedisInFlight::builder`].
///
/// ```
/// use std::time::Duration;
/// use lightrate_redis::RedisInFlight;
///
/// let store = RedisInFlight::builder()
///     .application_id("shop")
///     .slot_ttl(Duration::from_secs(60))
///     .timeout(Duration::from_millis(200))
///     .connect("redis://:secret@127.0.0.1:6379/0")
///     .unwrap();
/// assert_eq!(store.slot_ttl(), Duration::from_secs(60));
/// assert!(!format!("{store:?}").contains("secret"));
/// ```
pub struct RedisInFlightBuilder {
    prefix: String,
    application_id: String,
    timeout: Duration,
    ttl: Duration,
    renew_every: Option<Duration>,
    #[cfg(feature = "test-util")]
    clock: Option<Arc<dyn lightrate_core::Clock>>,
}

impl fmt::Debug for RedisInFlightBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisInFlightBuilder")
            .field("prefix", &self.prefix)
            .field("application_id", &self.application_id)
            .field("timeout", &self.timeout)
            .field("slot_ttl", &self.ttl)
            .field("renew_every", &self.renew_every)
            .finish_non_exhaustive()
    }
}

impl RedisInFlightBuilder {
    /// The first part of every key (default `lightrate`): visible ASCII, no braces.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The application whose caps these are, the second part of every key (default
    /// `default`): stores of different applications never share a count.
    pub fn application_id(mut self, application_id: impl Into<String>) -> Self {
        self.application_id = application_id.into();
        self
    }

    /// How long one call to Redis (connecting included) may take before it fails with an
    /// `Error` of kind `Timeout` (default 500 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long a slot lives unless renewed (default [`DEFAULT_SLOT_TTL`], 30 s; at least
    /// 3 ms): the longest a dead process's slots go on counting.
    pub fn slot_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How often the slots held are renewed (default TTL/3; shorter than the TTL).
    pub fn renew_every(mut self, every: Duration) -> Self {
        self.renew_every = Some(every);
        self
    }

    /// Reads time from `clock` (whole milliseconds) instead of Redis `TIME`, so that tests
    /// can make slots expire. Feature `test-util`; never in production, where only Redis's
    /// clock is shared by the whole fleet.
    #[cfg(feature = "test-util")]
    pub fn clock(mut self, clock: impl lightrate_core::Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// The store, on the Redis at `url` (see [`RedisInFlight::connect`]).
    pub fn connect(self, url: &str) -> Result<RedisInFlight, Error> {
        let (connection, address) = Connection::single(url, self.timeout)?;
        self.build(connection, vec![address])
    }

    /// The store, on the Redis Cluster that `urls` belong to.
    pub fn connect_cluster<I, U>(self, urls: I) -> Result<RedisInFlight, Error>
    where
        I: IntoIterator<Item = U>,
        U: AsRef<str>,
    {
        let urls: Vec<U> = urls.into_iter().collect();
        let urls: Vec<&str> = urls.iter().map(AsRef::as_ref).collect();
        let (connection, addresses) = Connection::cluster(&urls, self.timeout)?;
        self.build(connection, addresses)
    }

    fn build(self, connection: Connection, addresses: Vec<String>) -> Result<RedisInFlight, Error> {
        keys::check_prefix(&self.prefix)?;
        let configuration = |message: &str| Err(Error::new(ErrorKind::Configuration, message));
        if self.application_id.trim().is_empty() {
            return configuration("the application id is empty");
        }
        if self.timeout.is_zero() {
            return configuration("the Redis timeout must be positive");
        }
        if self.ttl < Duration::from_millis(3) {
            return configuration("the in-flight slot TTL must be at least 3 ms");
        }
        let renew_every = self.renew_every.unwrap_or(self.ttl / 3);
        if renew_every.is_zero() || renew_every >= self.ttl {
            return configuration("in-flight slots must be renewed more often than their TTL");
        }
        Ok(RedisInFlight {
            inner: Arc::new(Inner {
                connection,
                addresses,
                prefix: self.prefix,
                application_id: self.application_id,
                ttl: self.ttl,
                renew_every,
                tag: random_tag(),
                next_id: AtomicU64::new(0),
                held: Mutex::new(HashMap::new()),
                renewing: AtomicBool::new(false),
                renewal: Mutex::new(None),
                #[cfg(feature = "test-util")]
                clock: self.clock,
                #[cfg(feature = "test-util")]
                crashed: AtomicBool::new(false),
            }),
        })
    }
}

/// A tag for one store's slot ids: random (std's per-process hash keys), mixed with the process
/// id and the time, so that processes and stores sharing a key never share an id.
fn random_tag() -> u64 {
    static STORES: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u64(STORES.fetch_add(1, Ordering::Relaxed));
    if let Ok(since) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(since.as_nanos());
    }
    hasher.finish()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The three scripts, hashed once per process.
struct Scripts {
    acquire: redis::Script,
    release: redis::Script,
    renew: redis::Script,
}

fn scripts() -> &'static Scripts {
    static SCRIPTS: OnceLock<Scripts> = OnceLock::new();
    SCRIPTS.get_or_init(|| Scripts {
        acquire: redis::Script::new(&format!("{NOW_LUA}{ACQUIRE_LUA}")),
        release: redis::Script::new(RELEASE_LUA),
        renew: redis::Script::new(&format!("{NOW_LUA}{RENEW_LUA}")),
    })
}

/// The start of the acquire and renew scripts: `now`, the time in ms (ARGV[1] when not
/// empty, for tests; else Redis `TIME`), and `keep_key(ttl)`, which makes the key live at least
/// `ttl` ms more (the longest any of its slots can).
const NOW_LUA: &str = r#"
local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end
local function keep_key(ttl)
  if redis.call('PTTL', KEYS[1]) < ttl then
    redis.call('PEXPIRE', KEYS[1], string.format('%d', ttl))
  end
end
"#;

/// KEYS[1]: the slots. ARGV: now (ms, or empty), max, TTL (ms), the new slot's id.
/// Returns `{1, slots held}` when it took the slot, `{0, slots held}` when full.
const ACQUIRE_LUA: &str = r#"
local max = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now))
local held = redis.call('ZCARD', KEYS[1])
if held >= max then
  return {0, held}
end
redis.call('ZADD', KEYS[1], string.format('%d', now + ttl), ARGV[4])
keep_key(ttl)
return {1, held + 1}
"#;

/// KEYS[1]: the slots. ARGV[1]: the slot's id. Returns 1 if it was there.
const RELEASE_LUA: &str = r#"
return redis.call('ZREM', KEYS[1], ARGV[1])
"#;

/// KEYS[1]: the slots. ARGV: now (ms, or empty), TTL (ms), the ids to renew. Moves their
/// expiry to now + TTL; returns the ids that are no longer there.
const RENEW_LUA: &str = r#"
local ttl = tonumber(ARGV[2])
local expiry = string.format('%d', now + ttl)
local lost = {}
local renewed = 0
for i = 3, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], 'XX', expiry, ARGV[i])
    renewed = renewed + 1
  else
    lost[#lost + 1] = ARGV[i]
  end
end
if renewed > 0 then
  keep_key(ttl)
end
return lost
"#;
