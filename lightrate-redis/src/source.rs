//! [`RedisSource`] and its builder.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use lightrate_core::{
    ConsumeRequest, ConsumeTokensResponse, Error, ErrorKind, RuleSet, Target, TokenSource,
};

use crate::connection::Connection;
use crate::keys;
use crate::script::{BucketShape, CONSUME_LUA};

/// The key prefix unless [`RedisSourceBuilder::prefix`] says otherwise.
pub const DEFAULT_PREFIX: &str = "lightrate";

/// The application id in keys unless [`RedisSourceBuilder::application_id`] says otherwise.
pub const DEFAULT_APPLICATION_ID: &str = "default";

/// How long one call to Redis may take unless [`RedisSourceBuilder::timeout`] says otherwise.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(500);

/// A [`TokenSource`] whose buckets live in Redis (or Redis Cluster), so that every process of a
/// fleet shares them: the rules are a [`RuleSet`] matched in the process, exactly as the
/// [`EmbeddedSource`](lightrate_core::EmbeddedSource) does, and the bucket of each
/// (application, rule, user) is one Redis key, refilled and taken from by one Lua script.
///
/// - **One clock**: refills use Redis `TIME` (whole milliseconds), so processes whose clocks
///   disagree still agree on every bucket.
/// - **Exact**: the same integer arithmetic as the embedded source (tokens per period in
///   milliseconds), partial grants, and `tokensRequestedForDefaultBucketMatch`.
/// - **Bounded memory**: a key expires when its bucket would be full again; a full bucket is
///   no key at all.
/// - **Outages**: no answer within the timeout (default 500 ms) is an [`Error`] of kind
///   `Timeout`; a connection that cannot be made or is lost is `Network`; a cluster that is down
///   or a server that is loading is `Unavailable`: outage kinds, so the limiter's
///   [`OnUnavailable`](lightrate_core::OnUnavailable) policy and circuit breaker apply. The
///   connection is made on first use and remade after a failure, so a Redis that restarts is
///   served again without restarting the process.
///
/// Cheap to clone: clones share the connection.
///
/// ```no_run
/// use lightrate_core::{Limiter, RuleSet, Target};
/// use lightrate_redis::RedisSource;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lightrate_core::Error> {
/// let source = RedisSource::builder(RuleSet::demo())
///     .application_id("shop")
///     .connect("redis://127.0.0.1:6379")?;
/// let limiter = Limiter::new(source);
/// let decision = limiter.check("alice", &Target::operation("send_email")).await?;
/// assert!(decision.is_allowed());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisSource {
    inner: Arc<Inner>,
}

struct Inner {
    /// The rules and their bucket shapes, swapped whole by [`RedisSource::replace_rules`].
    rules: RwLock<Arc<Rules>>,
    connection: Connection,
    addresses: Vec<String>,
    partial_grants: bool,
    prefix: String,
    application_id: String,
    script: redis::Script,
    #[cfg(feature = "test-util")]
    clock: Option<Arc<dyn lightrate_core::Clock>>,
}

/// A rule set with the bucket shape of each of its rules.
struct Rules {
    set: Arc<RuleSet>,
    /// Rule id → key prefix and bucket shape.
    shapes: HashMap<String, RuleBuckets>,
}

impl Rules {
    /// Errors (kind `Configuration`) when a rule's capacity is past what Lua holds exactly.
    fn new(set: RuleSet, prefix: &str, application_id: &str) -> Result<Rules, Error> {
        let mut shapes = HashMap::new();
        for rule in set.rules() {
            shapes.insert(
                rule.id.clone(),
                RuleBuckets {
                    key_prefix: keys::rule_prefix(prefix, application_id, &rule.id),
                    shape: BucketShape::of(rule)?,
                },
            );
        }
        Ok(Rules {
            set: Arc::new(set),
            shapes,
        })
    }
}

struct RuleBuckets {
    key_prefix: String,
    shape: BucketShape,
}

impl RedisSource {
    /// A source serving `rules` from the Redis at `url` (`redis://[user:password@]host[:port][/db]`,
    /// `rediss://` for TLS, `unix:///path`), with the default prefix, application id and timeout.
    ///
    /// No I/O happens here: the connection is made by the first consume (or [`ping`](Self::ping)),
    /// so a Redis that is down at start is an outage then, not a failure now.
    ///
    /// Errors (kind `Configuration`): a URL that does not parse (the message does not repeat
    /// it: it may hold a password), or a rule whose capacity Lua cannot hold exactly
    /// (`burst_rate × refill period in ms ≥ 2⁵³`).
    pub fn connect(url: &str, rules: RuleSet) -> Result<RedisSource, Error> {
        RedisSource::builder(rules).connect(url)
    }

    /// A source serving `rules` from the Redis Cluster that `urls` (any of its nodes) belong to.
    /// Every script touches one key, so no command crosses slots. Errors as
    /// [`connect`](Self::connect).
    pub fn connect_cluster<I, U>(urls: I, rules: RuleSet) -> Result<RedisSource, Error>
    where
        I: IntoIterator<Item = U>,
        U: AsRef<str>,
    {
        RedisSource::builder(rules).connect_cluster(urls)
    }

    /// A builder, for the key prefix, the application id, the timeout and partial grants.
    pub fn builder(rules: RuleSet) -> RedisSourceBuilder {
        RedisSourceBuilder {
            rules,
            prefix: DEFAULT_PREFIX.to_owned(),
            application_id: DEFAULT_APPLICATION_ID.to_owned(),
            timeout: DEFAULT_REDIS_TIMEOUT,
            partial_grants: true,
            #[cfg(feature = "test-util")]
            clock: None,
        }
    }

    /// The rules this source serves.
    pub fn rules(&self) -> Arc<RuleSet> {
        self.current().set.clone()
    }

    /// Serves `rules` from now on. The buckets stay in Redis, keyed by rule id: a rule still
    /// there (by id) keeps every bucket with what its user used (a larger burst gives its new
    /// room at once; a smaller one leaves `new burst − used`, never less than nothing), which
    /// refills at the new rate from the next consume on; buckets of rules that are gone are
    /// no longer read and expire on their own. Each consume sees either the old rules or the
    /// new ones, never a mix. Shared by every clone of this source.
    ///
    /// Errors (kind `Configuration`), keeping the rules in force: a rule whose capacity Lua
    /// cannot hold exactly (`burst_rate × refill period in ms ≥ 2⁵³`), as at construction.
    ///
    /// ```
    /// use lightrate_core::{RefillRate, RuleSet, Target};
    /// use lightrate_redis::RedisSource;
    ///
    /// let source = RedisSource::connect("redis://127.0.0.1:6379", RuleSet::demo()).unwrap();
    /// let stricter = RuleSet::builder()
    ///     .default_rule(RefillRate::per_second(1), 2)
    ///     .build()
    ///     .unwrap();
    /// source.replace_rules(stricter).unwrap();
    /// assert_eq!(source.rules().default_rule().burst_rate, 2);
    ///
    /// let too_big = RuleSet::builder()
    ///     .default_rule(RefillRate::per_day(1), u64::MAX / 2)
    ///     .build()
    ///     .unwrap();
    /// assert!(source.replace_rules(too_big).is_err());
    /// assert_eq!(source.rules().default_rule().burst_rate, 2);
    /// ```
    pub fn replace_rules(&self, rules: RuleSet) -> Result<(), Error> {
        let inner = &*self.inner;
        let rules = Rules::new(rules, &inner.prefix, &inner.application_id)?;
        *inner.rules.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(rules);
        Ok(())
    }

    /// The rules in force (one read of a pointer).
    fn current(&self) -> Arc<Rules> {
        self.inner
            .rules
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// `host:port` of the Redis (or of each cluster node given), never with credentials.
    pub fn addresses(&self) -> &[String] {
        &self.inner.addresses
    }

    /// The Redis key of `user`'s bucket under the rule `target` falls to:
    /// `<prefix>:<application>:<rule id>:<user>`, each part after the prefix percent-encoded
    /// (see the crate's documentation).
    ///
    /// ```
    /// use lightrate_core::{RuleSet, Target};
    /// use lightrate_redis::RedisSource;
    ///
    /// let source = RedisSource::builder(RuleSet::demo())
    ///     .application_id("shop")
    ///     .connect("redis://127.0.0.1:6379")
    ///     .unwrap();
    /// assert_eq!(
    ///     source.bucket_key("bob:{1}", &Target::operation("send_email")),
    ///     "lightrate:shop:rule_send_email:bob%3A%7B1%7D"
    /// );
    /// ```
    pub fn bucket_key(&self, user: &str, target: &Target<'_>) -> String {
        let rules = self.current();
        let rule = rules.set.resolve(target);
        match rules.shapes.get(&rule.id) {
            Some(buckets) => keys::bucket_key(&buckets.key_prefix, user),
            None => keys::bucket_key(
                &keys::rule_prefix(&self.inner.prefix, &self.inner.application_id, &rule.id),
                user,
            ),
        }
    }

    /// Whether Redis answers (`PING`, within the timeout): what a health check asks. For a
    /// cluster, `Ok` while any primary answers (the keys of its slots are served).
    pub async fn ping(&self) -> Result<(), Error> {
        self.inner.connection.ping().await
    }

    /// Consumes tokens: resolves the rule in the process, then runs the script on its bucket.
    async fn consume(&self, request: ConsumeRequest<'_>) -> Result<ConsumeTokensResponse, Error> {
        request.validate()?;
        let rules = self.current();
        let rule = rules.set.resolve(request.target);
        let buckets = rules.shapes.get(&rule.id).ok_or_else(|| {
            Error::new(
                ErrorKind::Internal,
                format!("rule {:?} has no bucket shape", rule.id),
            )
        })?;
        let wanted = match request.tokens_requested_for_default_bucket_match {
            Some(n) if rule.is_default => n,
            _ => request.tokens_requested,
        };
        let key = keys::bucket_key(&buckets.key_prefix, request.user_identifier);
        let (granted, remaining, next_token_ms) = self.take(key, buckets.shape, wanted).await?;
        if granted > wanted {
            return Err(Error::new(
                ErrorKind::Decode,
                format!("the consume script granted {granted} of {wanted} tokens"),
            ));
        }
        Ok(ConsumeTokensResponse {
            tokens_remaining: remaining,
            tokens_consumed: granted,
            throttles: u64::from(granted < wanted),
            rule: rule.clone(),
            // As the embedded source: when short, the wait for the next whole token.
            retry_after_ms: (granted < wanted || remaining == 0)
                .then(|| u64::try_from(next_token_ms).ok())
                .flatten(),
        })
    }
}

impl RedisSource {
    /// Runs the script on `key`: refill, take up to `wanted` tokens; (granted, remaining, ms
    /// until one more whole token or -1 for never).
    async fn take(
        &self,
        key: String,
        shape: BucketShape,
        wanted: u64,
    ) -> Result<(u64, u64, i64), Error> {
        let inner = &*self.inner;
        let mut invocation = inner.script.key(&key);
        invocation
            .arg(shape.units_per_token)
            .arg(shape.units_per_ms)
            .arg(shape.capacity)
            .arg(wanted)
            .arg(if inner.partial_grants { "1" } else { "0" });
        #[cfg(feature = "test-util")]
        if let Some(clock) = &inner.clock {
            invocation.arg(clock.now().as_nanos() / 1_000_000);
        }
        inner.connection.invoke(&key, &invocation).await
    }
}

impl TokenSource for RedisSource {
    async fn consume_tokens(
        &self,
        request: ConsumeRequest<'_>,
    ) -> Result<ConsumeTokensResponse, Error> {
        self.consume(request).await
    }
}

impl fmt::Debug for RedisSource {
    /// The addresses, prefix, application and timeout; never a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        f.debug_struct("RedisSource")
            .field("addresses", &inner.addresses)
            .field("connection", &inner.connection)
            .field("prefix", &inner.prefix)
            .field("application_id", &inner.application_id)
            .field("partial_grants", &inner.partial_grants)
            .field("rules", &self.current().shapes.len())
            .finish()
    }
}

/// Builds a [`RedisSource`]. See [`RedisSource::builder`].
///
/// ```
/// use std::time::Duration;
/// use lightrate_core::RuleSet;
/// use lightrate_redis::RedisSource;
///
/// let source = RedisSource::builder(RuleSet::demo())
///     .prefix("limits")
///     .application_id("checkout")
///     .timeout(Duration::from_millis(200))
///     .connect("redis://:secret@127.0.0.1:6379/0")
///     .unwrap();
/// assert_eq!(source.addresses(), ["127.0.0.1:6379"]);
/// assert!(!format!("{source:?}").contains("secret"));
/// ```
pub struct RedisSourceBuilder {
    rules: RuleSet,
    prefix: String,
    application_id: String,
    timeout: Duration,
    partial_grants: bool,
    #[cfg(feature = "test-util")]
    clock: Option<Arc<dyn lightrate_core::Clock>>,
}

impl fmt::Debug for RedisSourceBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSourceBuilder")
            .field("prefix", &self.prefix)
            .field("application_id", &self.application_id)
            .field("timeout", &self.timeout)
            .field("partial_grants", &self.partial_grants)
            .finish_non_exhaustive()
    }
}

impl RedisSourceBuilder {
    /// The first part of every key (default `lightrate`): visible ASCII, no braces.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The application whose buckets these are, the second part of every key (default
    /// `default`). Sources with different application ids never share a bucket.
    pub fn application_id(mut self, application_id: impl Into<String>) -> Self {
        self.application_id = application_id.into();
        self
    }

    /// How long one consume (connecting included) may take before it fails with an `Error` of
    /// kind `Timeout` (default 500 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// With `false`, a request gets all it asked for or nothing (default `true`: partial
    /// grants, as the embedded source and the LightRate API).
    pub fn partial_grants(mut self, partial: bool) -> Self {
        self.partial_grants = partial;
        self
    }

    /// Reads time from `clock` (whole milliseconds) instead of Redis `TIME`, so that tests can
    /// drive refills. Feature `test-util`; never in production, where only Redis's clock is
    /// shared by the whole fleet.
    #[cfg(feature = "test-util")]
    pub fn clock(mut self, clock: impl lightrate_core::Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// The source, on the Redis at `url` (see [`RedisSource::connect`]).
    pub fn connect(self, url: &str) -> Result<RedisSource, Error> {
        let (connection, address) = Connection::single(url, self.timeout)?;
        self.build(connection, vec![address])
    }

    /// The source, on the Redis Cluster that `urls` belong to (see
    /// [`RedisSource::connect_cluster`]).
    pub fn connect_cluster<I, U>(self, urls: I) -> Result<RedisSource, Error>
    where
        I: IntoIterator<Item = U>,
        U: AsRef<str>,
    {
        let urls: Vec<U> = urls.into_iter().collect();
        let urls: Vec<&str> = urls.iter().map(AsRef::as_ref).collect();
        let (connection, addresses) = Connection::cluster(&urls, self.timeout)?;
        self.build(connection, addresses)
    }

    fn build(self, connection: Connection, addresses: Vec<String>) -> Result<RedisSource, Error> {
        keys::check_prefix(&self.prefix)?;
        if self.application_id.trim().is_empty() {
            return Err(Error::new(
                ErrorKind::Configuration,
                "the application id is empty",
            ));
        }
        if self.timeout.is_zero() {
            return Err(Error::new(
                ErrorKind::Configuration,
                "the Redis timeout must be positive",
            ));
        }
        let rules = Rules::new(self.rules, &self.prefix, &self.application_id)?;
        Ok(RedisSource {
            inner: Arc::new(Inner {
                rules: RwLock::new(Arc::new(rules)),
                connection,
                addresses,
                partial_grants: self.partial_grants,
                prefix: self.prefix,
                application_id: self.application_id,
                script: script(),
                #[cfg(feature = "test-util")]
                clock: self.clock,
            }),
        })
    }
}

/// The consume script, hashed once per process.
fn script() -> redis::Script {
    static SCRIPT: OnceLock<redis::Script> = OnceLock::new();
    SCRIPT
        .get_or_init(|| redis::Script::new(CONSUME_LUA))
        .clone()
}
