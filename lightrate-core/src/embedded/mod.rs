//! The embedded token source: LightRate's rules engine and token buckets, in-process.

use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

mod bucket;

use crate::clock::{Clock, SystemClock, Timestamp};
use crate::sync::{lock, read, write};
use crate::{ConsumeRequest, ConsumeTokensResponse, Error, ErrorKind, RuleSet, TokenSource};
pub(crate) use bucket::{Bucket, Scale};

/// The default cap on the (user, rule) buckets an embedded source holds: a couple of hundred
/// megabytes with short identifiers (the size of a bucket is measured in BENCHMARKS.md and
/// bounded by the flood test of `tests/allocations.rs`).
pub const DEFAULT_MAX_SOURCE_BUCKETS: usize = 1_000_000;

const SHARDS: usize = 16;

/// How often each shard drops the buckets that have refilled (they are the same as none).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// At the cap, how often a shard may sweep early to make room (a flood of new users must not
/// turn every request into a sweep).
const SWEEP_AT_CAP_EVERY: Duration = Duration::from_millis(10);

/// The rules engine and token buckets of a LightRate application, in-process, no network.
///
/// One bucket per (rule, user) holding at most `burstRate` tokens, refilled at `refillRate`
/// tokens per second, starting full. A request for more tokens than the bucket holds gets what
/// it holds (a partial grant) unless partial grants are turned off. A request that falls to the
/// default rule is charged `tokens_requested_for_default_bucket_match` tokens when set.
///
/// Memory is bounded by the buckets that are not full: a bucket that has refilled to capacity
/// is the same as no bucket, and each shard drops those every second. There is also a hard cap
/// ([`with_max_buckets`](Self::with_max_buckets), default [`DEFAULT_MAX_SOURCE_BUCKETS`]): at the
/// cap a full bucket is the only one that can be forgotten (forgetting any other would grant
/// past its limit), so when none is, a request that needs a new bucket gets an
/// [`ErrorKind::Unavailable`] error (the server answers 503; a limiter applies its outage
/// policy), counted in [`stats`](Self::stats).
///
/// ```
/// use lightrate_core::{ConsumeRequest, EmbeddedSource, ManualClock, RuleSet, Target};
/// use std::time::Duration;
///
/// let clock = ManualClock::new();
/// let source = EmbeddedSource::new(RuleSet::demo()).with_clock(clock.clone());
/// let email = Target::operation("send_email"); // burst 10, 1 token/s
///
/// let answer = source.consume_now(ConsumeRequest::new("alice", &email, 8)).unwrap();
/// assert_eq!((answer.tokens_consumed, answer.tokens_remaining), (8, 2));
/// let answer = source.consume_now(ConsumeRequest::new("alice", &email, 5)).unwrap();
/// assert_eq!(answer.tokens_consumed, 2); // partial grant
/// clock.advance(Duration::from_secs(3));
/// let answer = source.consume_now(ConsumeRequest::new("alice", &email, 5)).unwrap();
/// assert_eq!(answer.tokens_consumed, 3);
/// ```
#[derive(Debug)]
pub struct EmbeddedSource {
    /// Read under a shard's lock, replaced with every shard locked.
    rules: RwLock<Arc<RuleSet>>,
    clock: Arc<dyn Clock>,
    partial_grants: bool,
    hasher: foldhash::fast::FixedState,
    shards: Box<[Mutex<Shard>]>,
    /// The cap per shard.
    max_per_shard: usize,
    swept: AtomicU64,
    refused: AtomicU64,
}

/// What an [`EmbeddedSource`] holds and has done about memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EmbeddedStats {
    /// (user, rule) buckets held: those not full.
    pub buckets: u64,
    /// Buckets dropped because they had refilled.
    pub swept: u64,
    /// Requests refused because they needed a new bucket while the source was at its cap and
    /// no bucket was full.
    pub refused_at_capacity: u64,
}

#[derive(Debug, Default)]
struct Shard {
    /// user → (rule index, bucket) for each rule the user has a non-full bucket under.
    users: HashMap<Box<str>, Vec<(usize, Bucket)>, foldhash::fast::RandomState>,
    /// Buckets held in `users`.
    buckets: usize,
    /// When this shard was last swept.
    last_sweep: Timestamp,
}

impl EmbeddedSource {
    /// A source serving `rules`, on the system clock, with partial grants.
    pub fn new(rules: RuleSet) -> Self {
        EmbeddedSource {
            rules: RwLock::new(Arc::new(rules)),
            clock: Arc::new(SystemClock::new()),
            partial_grants: true,
            hasher: foldhash::fast::FixedState::with_seed(fastrand::u64(..)),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            max_per_shard: DEFAULT_MAX_SOURCE_BUCKETS.div_ceil(SHARDS),
            swept: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// The most (user, rule) buckets this source holds (default [`DEFAULT_MAX_SOURCE_BUCKETS`];
    /// rounded up to a multiple of 16, at least 16). See the type's notes on what happens at
    /// the cap.
    pub fn with_max_buckets(mut self, max: usize) -> Self {
        self.max_per_shard = max.div_ceil(SHARDS).max(1);
        self
    }

    /// Uses `clock` for refills (a [`ManualClock`](crate::ManualClock) in tests).
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// With `false`, a request gets all it asked for or nothing, as some servers do (the
    /// default is `true`: partial grants).
    pub fn with_partial_grants(mut self, partial: bool) -> Self {
        self.partial_grants = partial;
        self
    }

    /// The rules this source serves.
    pub fn rules(&self) -> Arc<RuleSet> {
        read(&self.rules).clone()
    }

    /// Serves `rules` from now on, keeping every bucket whose rule (by id) is still there: what
    /// its user used is kept, so a larger burst gives its new room at once (a user who used 3
    /// of 3 has 97 of a new burst of 100) and a smaller one leaves `new burst − used` (never
    /// less than nothing), refilled at the new rate. Buckets
    /// of rules that are gone are dropped. Requests see either the old rules or the new ones,
    /// never a mix.
    pub fn replace_rules(&self, rules: RuleSet) {
        let now = self.clock.now();
        // Every shard locked, in order: no request runs while buckets change scale.
        let mut shards: Vec<MutexGuard<'_, Shard>> = self.shards.iter().map(lock).collect();
        let old = self.rules();
        let by_id: HashMap<&str, usize> = (0..=rules.len())
            .map(|i| (rules.rule_at(i).id.as_str(), i))
            .collect();
        for shard in &mut shards {
            shard.users.retain(|_, buckets| {
                buckets.retain_mut(|(index, bucket)| {
                    let before = old.rule_at(*index);
                    let Some(&now_at) = by_id.get(before.id.as_str()) else {
                        return false;
                    };
                    let from = Scale::of(before);
                    bucket.refill(now, from);
                    bucket.rescale(from, Scale::of(rules.rule_at(now_at)));
                    *index = now_at;
                    true
                });
                !buckets.is_empty()
            });
            shard.buckets = shard.users.values().map(Vec::len).sum();
        }
        *write(&self.rules) = Arc::new(rules);
    }

    /// Consumes tokens synchronously (the [`TokenSource`] implementation calls this).
    ///
    /// Errors (kind [`ErrorKind::InvalidInput`]): a blank or over-long user identifier, zero
    /// tokens requested, or a zero `tokens_requested_for_default_bucket_match`.
    pub fn consume_now(&self, request: ConsumeRequest<'_>) -> Result<ConsumeTokensResponse, Error> {
        request.validate()?;
        let now = self.clock.now();
        let mut shard = self.shard(request.user_identifier);
        // Under the shard's lock: a replacement of the rules waits for it.
        let rules = self.rules();
        let index = rules.resolve_index(request.target);
        let rule = rules.rule_at(index);
        let wanted = match request.tokens_requested_for_default_bucket_match {
            Some(n) if rule.is_default => n,
            _ => request.tokens_requested,
        };
        let scale = Scale::of(rule);
        if now.saturating_duration_since(shard.last_sweep) >= SWEEP_EVERY {
            shard.sweep(&rules, now, &self.swept);
        }
        let held = shard
            .users
            .get(request.user_identifier)
            .and_then(|buckets| buckets.iter().position(|(i, _)| *i == index));
        if held.is_none() && shard.buckets >= self.max_per_shard {
            // At the cap: only full buckets may go (forgetting another would grant past its
            // limit), and a flood of new users must not make every request a sweep.
            if now.saturating_duration_since(shard.last_sweep) >= SWEEP_AT_CAP_EVERY {
                shard.sweep(&rules, now, &self.swept);
            }
            if shard.buckets >= self.max_per_shard {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    "the token source holds as many buckets as it may and none of them is \
                     full; try again shortly",
                )
                .with_retry_after(Duration::from_secs(1)));
            }
        }
        let shard = &mut *shard;
        let buckets = match shard.users.get_mut(request.user_identifier) {
            Some(buckets) => buckets,
            None => shard
                .users
                .entry(request.user_identifier.into())
                // Room for one bucket: most users meet one rule, and a Vec's first push
                // would make room for four (140 bytes a user for nothing).
                .or_insert_with(|| Vec::with_capacity(1)),
        };
        let bucket = match held {
            Some(at) => &mut buckets[at].1,
            None => {
                shard.buckets += 1;
                buckets.reserve_exact(1);
                buckets.push((index, Bucket::full(scale, now)));
                let last = buckets.len() - 1;
                &mut buckets[last].1
            }
        };
        bucket.refill(now, scale);
        let granted = bucket.take(wanted, self.partial_grants, scale);
        Ok(ConsumeTokensResponse {
            tokens_remaining: bucket.tokens(scale),
            tokens_consumed: granted,
            throttles: u64::from(granted < wanted),
            rule: rule.clone(),
            retry_after_ms: (granted < wanted || bucket.tokens(scale) == 0)
                .then(|| bucket.next_token_ms(scale))
                .flatten(),
        })
    }

    /// How many whole tokens `user` has now under the rule `target` falls to, without
    /// consuming any.
    pub fn available(&self, user: &str, target: &crate::Target<'_>) -> u64 {
        let now = self.clock.now();
        let shard = self.shard(user);
        let rules = self.rules();
        let index = rules.resolve_index(target);
        let rule = rules.rule_at(index);
        let bucket = shard
            .users
            .get(user)
            .and_then(|buckets| buckets.iter().find(|(i, _)| *i == index))
            .map(|(_, b)| *b);
        match bucket {
            Some(mut b) => {
                let scale = Scale::of(rule);
                b.refill(now, scale);
                b.tokens(scale)
            }
            None => rule.burst_rate,
        }
    }

    /// How many (user, rule) buckets are held (full buckets are dropped by periodic sweeps).
    pub fn bucket_count(&self) -> usize {
        self.shards.iter().map(|s| lock(s).buckets).sum()
    }

    /// What this source holds and has done about memory.
    pub fn stats(&self) -> EmbeddedStats {
        EmbeddedStats {
            buckets: self.bucket_count() as u64,
            swept: self.swept.load(Ordering::Relaxed),
            refused_at_capacity: self.refused.load(Ordering::Relaxed),
        }
    }

    /// Removes every bucket that has refilled to capacity now. Runs on its own every second;
    /// call it to release memory at once.
    pub fn sweep(&self) {
        let now = self.clock.now();
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            shard.sweep(&self.rules(), now, &self.swept);
        }
    }

    fn shard(&self, user: &str) -> MutexGuard<'_, Shard> {
        lock(&self.shards[(self.hasher.hash_one(user) as usize) % SHARDS])
    }
}

impl Shard {
    /// Drops the buckets that have refilled, counting them in `swept`.
    fn sweep(&mut self, rules: &RuleSet, now: Timestamp, swept: &AtomicU64) {
        self.last_sweep = now;
        let before = self.buckets;
        self.users.retain(|_, buckets| {
            buckets.retain_mut(|(index, bucket)| {
                let scale = Scale::of(rules.rule_at(*index));
                bucket.refill(now, scale);
                !bucket.is_full(scale)
            });
            !buckets.is_empty()
        });
        self.buckets = self.users.values().map(Vec::len).sum();
        swept.fetch_add((before - self.buckets) as u64, Ordering::Relaxed);
    }
}

impl TokenSource for EmbeddedSource {
    fn consume_tokens(
        &self,
        request: ConsumeRequest<'_>,
    ) -> impl Future<Output = Result<ConsumeTokensResponse, Error>> + Send {
        std::future::ready(self.consume_now(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ManualClock, RefillRate, Target};
    use http::Method;
    use proptest::prelude::*;
    use std::time::Duration;

    fn source(clock: &ManualClock) -> EmbeddedSource {
        EmbeddedSource::new(RuleSet::demo()).with_clock(clock.clone())
    }

    fn take(s: &EmbeddedSource, user: &str, target: &Target<'_>, n: u64) -> ConsumeTokensResponse {
        s.consume_now(ConsumeRequest::new(user, target, n)).unwrap()
    }

    #[test]
    fn buckets_start_full_and_cap_at_burst() {
        let clock = ManualClock::new();
        let s = source(&clock);
        let hello = Target::path(Method::GET, "/hello");
        let r = take(&s, "u", &hello, 1);
        assert_eq!((r.tokens_consumed, r.tokens_remaining), (1, 19));
        assert_eq!(r.rule.id, "rule_hello");
        // A long idle time refills only to the burst.
        clock.advance(Duration::from_secs(3600));
        let r = take(&s, "u", &hello, 100);
        assert_eq!((r.tokens_consumed, r.tokens_remaining), (20, 0));
        assert_eq!(r.throttles, 1);
    }

    #[test]
    fn refill_is_exact_for_fractional_rates() {
        let clock = ManualClock::new();
        let rules = RuleSet::builder()
            .default_rule(RefillRate::from_millitokens_per_second(333), 3)
            .build()
            .unwrap();
        let s = EmbeddedSource::new(rules).with_clock(clock.clone());
        assert_eq!(take(&s, "u", &Target::Default, 3).tokens_consumed, 3);
        // 1 token needs 1000/333 s = 3.003003... s.
        clock.advance(Duration::from_nanos(3_003_003_003));
        assert_eq!(take(&s, "u", &Target::Default, 1).tokens_consumed, 0);
        clock.advance(Duration::from_nanos(1));
        assert_eq!(take(&s, "u", &Target::Default, 1).tokens_consumed, 1);
        // Many small steps add up to exactly the same as one big one.
        for _ in 0..3_003 {
            clock.advance(Duration::from_millis(1));
        }
        clock.advance(Duration::from_nanos(3_004));
        assert_eq!(take(&s, "u", &Target::Default, 5).tokens_consumed, 1);
    }

    #[test]
    fn users_and_rules_have_separate_buckets() {
        let clock = ManualClock::new();
        let s = source(&clock);
        let email = Target::operation("send_email");
        assert_eq!(take(&s, "a", &email, 10).tokens_consumed, 10);
        assert_eq!(take(&s, "a", &email, 1).tokens_consumed, 0);
        assert_eq!(take(&s, "b", &email, 1).tokens_consumed, 1);
        assert_eq!(take(&s, "a", &Target::Default, 1).tokens_consumed, 1);
        assert_eq!(s.available("a", &email), 0);
        assert_eq!(s.available("b", &email), 9);
        assert_eq!(s.available("nobody", &email), 10);
        clock.advance(Duration::from_millis(2500));
        assert_eq!(s.available("a", &email), 2);
        assert_eq!(s.bucket_count(), 3);
    }

    #[test]
    fn default_rule_is_charged_the_default_bucket_match() {
        let clock = ManualClock::new();
        let s = source(&clock);
        let items = Target::path(Method::GET, "/items/1");
        let lease = ConsumeRequest::new("u", &items, 5).with_default_bucket_match(1);
        let r = s.consume_now(lease).unwrap();
        assert!(r.rule.is_default);
        assert_eq!((r.tokens_consumed, r.tokens_remaining), (1, 4));
        // A non-default rule is charged the full request.
        let email = Target::operation("send_email");
        let r = s
            .consume_now(ConsumeRequest::new("u", &email, 5).with_default_bucket_match(1))
            .unwrap();
        assert_eq!((r.tokens_consumed, r.tokens_remaining), (5, 5));
    }

    #[test]
    fn without_partial_grants_it_is_all_or_nothing() {
        let clock = ManualClock::new();
        let s = source(&clock).with_partial_grants(false);
        let email = Target::operation("send_email");
        assert_eq!(take(&s, "u", &email, 8).tokens_consumed, 8);
        let r = take(&s, "u", &email, 5);
        assert_eq!((r.tokens_consumed, r.tokens_remaining), (0, 2));
        assert_eq!(take(&s, "u", &email, 2).tokens_consumed, 2);
    }

    #[test]
    fn clock_going_backwards_adds_nothing() {
        let clock = ManualClock::new();
        clock.advance(Duration::from_secs(100));
        let s = source(&clock);
        let email = Target::operation("send_email");
        assert_eq!(take(&s, "u", &email, 10).tokens_consumed, 10);
        clock.set(Timestamp::from_nanos(0));
        assert_eq!(take(&s, "u", &email, 1).tokens_consumed, 0);
        clock.set(Timestamp::from_nanos(100_000_000_000));
        assert_eq!(take(&s, "u", &email, 1).tokens_consumed, 0);
        clock.advance(Duration::from_secs(1));
        assert_eq!(take(&s, "u", &email, 1).tokens_consumed, 1);
    }

    #[test]
    fn invalid_requests_are_rejected() {
        let s = source(&ManualClock::new());
        let t = Target::Default;
        for req in [
            ConsumeRequest::new("", &t, 1),
            ConsumeRequest::new("  ", &t, 1),
            ConsumeRequest::new("u", &t, 0),
            ConsumeRequest::new("u", &t, 1).with_default_bucket_match(0),
        ] {
            assert_eq!(
                s.consume_now(req).unwrap_err().kind(),
                ErrorKind::InvalidInput
            );
        }
        let long = "x".repeat(crate::MAX_USER_IDENTIFIER_BYTES + 1);
        assert!(s.consume_now(ConsumeRequest::new(&long, &t, 1)).is_err());
        assert_eq!(s.bucket_count(), 0);
    }

    #[test]
    fn refilled_buckets_are_swept_every_second() {
        let clock = ManualClock::new();
        let s = source(&clock);
        let t = Target::Default; // refill 1/s, burst 5
        for round in 0..20 {
            for u in 0..1000 {
                take(&s, &format!("user-{round}-{u}"), &t, 1);
            }
            // Each bucket is one token short, full again after 1 s: a shard sweeps when it is
            // next used a second after its last sweep.
            clock.advance(Duration::from_secs(1));
            assert!(s.bucket_count() <= 2 * 1000, "{}", s.bucket_count());
        }
        s.sweep();
        assert_eq!(s.bucket_count(), 0);
        assert_eq!(s.stats().swept, 20 * 1000);
    }

    #[test]
    fn at_the_cap_only_full_buckets_make_room() {
        let clock = ManualClock::new();
        let s = source(&clock).with_max_buckets(16 * 4);
        let t = Target::Default; // refill 1/s, burst 5
        let mut held = 0;
        let mut refused = 0;
        for u in 0..200 {
            match s.consume_now(ConsumeRequest::new(&format!("u{u}"), &t, 5)) {
                Ok(r) => {
                    assert_eq!(r.tokens_consumed, 5);
                    held += 1;
                }
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::Unavailable);
                    assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
                    refused += 1;
                }
            }
        }
        assert!(s.bucket_count() <= 64);
        assert_eq!(held + refused, 200);
        assert_eq!(s.stats().refused_at_capacity, refused);
        // Users who hold a bucket keep it, empty: the cap never grants past a limit.
        for u in 0..200 {
            if let Ok(r) = s.consume_now(ConsumeRequest::new(&format!("u{u}"), &t, 1)) {
                assert_eq!(r.tokens_consumed, 0, "u{u} was granted past its limit");
            }
        }
        // Five seconds on every bucket is full again: swept, and new users get room (four of
        // them fit whatever shards they fall in).
        clock.advance(Duration::from_secs(5));
        for u in 200..204 {
            assert!(s
                .consume_now(ConsumeRequest::new(&format!("u{u}"), &t, 1))
                .is_ok());
        }
    }

    #[test]
    fn replacing_the_rules_keeps_the_buckets_of_rules_still_there() {
        let clock = ManualClock::new();
        let s = source(&clock);
        let email = Target::operation("send_email"); // 1/s, burst 10
        let hello = Target::path(Method::GET, "/hello"); // 1/s, burst 20
        assert_eq!(take(&s, "u", &email, 7).tokens_remaining, 3);
        assert_eq!(take(&s, "u", &hello, 5).tokens_remaining, 15);
        clock.advance(Duration::from_millis(500));
        // send_email now refills 10/hour with a burst of 8; hello is gone (to the default).
        let rules = RuleSet::builder()
            .default_rule(RefillRate::per_second(1), 5)
            .rule(
                crate::RuleSpec::operation(
                    "Send Email",
                    "^send_email$",
                    RefillRate::per_hour(10),
                    8,
                )
                .with_id("rule_send_email"),
            )
            .build()
            .unwrap();
        s.replace_rules(rules);
        assert_eq!(s.rules().rules().count(), 2);
        // u had used 6.5 of 10: of the new burst of 8, 1.5 are left, refilled at the new rate
        // from now on (half a token in 180 s).
        assert_eq!(s.available("u", &email), 1);
        clock.advance(Duration::from_secs(179));
        assert_eq!(s.available("u", &email), 1);
        clock.advance(Duration::from_secs(1));
        assert_eq!(s.available("u", &email), 2);
        let r = take(&s, "u", &email, 10);
        assert_eq!((r.tokens_consumed, r.rule.burst_rate), (2, 8));
        // The hello bucket went with its rule: /hello is the default rule's now, full.
        assert!(take(&s, "u", &hello, 1).rule.is_default);
        assert_eq!(s.available("u", &hello), 4);
    }

    #[test]
    fn raising_a_burst_gives_the_new_room_at_once() {
        let clock = ManualClock::new();
        let email = Target::operation("send_email");
        let rules = |burst| {
            RuleSet::builder()
                .default_rule(RefillRate::per_second(1), 5)
                .operation("Send Email", "^send_email$", RefillRate::per_hour(1), burst)
                .build()
                .unwrap()
        };
        let s = EmbeddedSource::new(rules(3)).with_clock(clock.clone());
        assert_eq!(take(&s, "u", &email, 3).tokens_remaining, 0);
        assert_eq!(take(&s, "u", &email, 1).tokens_consumed, 0);
        // The limit goes from 3 to 100: u used 3, so 97 are there now.
        s.replace_rules(rules(100));
        assert_eq!(s.available("u", &email), 97);
        let r = take(&s, "u", &email, 5);
        assert_eq!((r.tokens_consumed, r.tokens_remaining), (5, 92));
        // And back to 10: u has used 8 of them.
        s.replace_rules(rules(10));
        assert_eq!(s.available("u", &email), 2);
        // Down to 5: more used than the new burst, nothing left (never less).
        s.replace_rules(rules(5));
        assert_eq!(s.available("u", &email), 0);
        assert_eq!(s.available("v", &email), 5);
    }

    #[test]
    fn huge_requests_do_not_overflow() {
        let s = source(&ManualClock::new());
        let r = take(&s, "u", &Target::Default, u64::MAX);
        assert_eq!((r.tokens_consumed, r.tokens_remaining), (5, 0));
    }

    proptest! {
        /// Over any run, one bucket never grants more than burst + refill·t.
        #[test]
        fn never_grants_more_than_burst_plus_refill(
            tokens in 1u64..20,
            period_ms in 1u64..100_000_000,
            burst in 1u64..50,
            steps in proptest::collection::vec((0u64..3_000_000_000, 1u64..10), 1..200),
            partial in any::<bool>(),
        ) {
            let clock = ManualClock::new();
            let rate = RefillRate::new(tokens, period_ms).unwrap();
            let rules = RuleSet::builder()
                .default_rule(rate, burst)
                .build()
                .unwrap();
            let s = EmbeddedSource::new(rules).with_clock(clock.clone()).with_partial_grants(partial);
            let (per_ns, unit) = rate.units();
            let mut granted: u128 = 0;
            let mut elapsed: u128 = 0;
            for (dt, n) in steps {
                clock.advance(Duration::from_nanos(dt));
                elapsed += u128::from(dt);
                let r = s.consume_now(ConsumeRequest::new("u", &Target::Default, n)).unwrap();
                prop_assert!(r.tokens_consumed <= n);
                prop_assert!(r.tokens_remaining <= burst);
                granted += u128::from(r.tokens_consumed);
                // granted ≤ burst + rate·t, in bucket units to stay exact.
                prop_assert!(granted * unit <= u128::from(burst) * unit + elapsed * per_ns);
            }
        }

        /// A bucket left alone long enough is full again, and never more than full.
        #[test]
        fn refills_to_exactly_burst(
            tokens in 1u64..1000,
            period_ms in 1u64..2_592_000_000,
            burst in 1u64..1000,
            take_n in 1u64..1000,
        ) {
            let rate = RefillRate::new(tokens, period_ms).unwrap();
            let scale = Scale::new(rate, burst);
            let mut b = Bucket::full(scale, Timestamp::ZERO);
            let got = b.take(take_n, true, scale);
            prop_assert_eq!(got, take_n.min(burst));
            let need = rate.time_for(burst).unwrap();
            // One nanosecond short of the time the missing tokens need: not yet full.
            let missing = take_n.min(burst);
            let almost = Timestamp::ZERO + rate.time_for(missing).unwrap() - Duration::from_nanos(1);
            let mut early = b;
            early.refill(almost, scale);
            prop_assert!(!early.is_full(scale));
            let far = Timestamp::ZERO + need + Duration::from_secs(1);
            b.refill(far, scale);
            prop_assert_eq!(b.tokens(scale), burst);
            prop_assert!(b.is_full(scale));
        }
    }
}
