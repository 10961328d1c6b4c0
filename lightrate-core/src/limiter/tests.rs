//! The limiter's behaviours, each on a manual clock over a counting source.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, StatusCode};
use proptest::prelude::*;

use super::*;

mod reserve;
mod several;
mod wait;
use crate::clock::{Clock, Timestamp};
use crate::{
    ConsumeRequest, ConsumeTokensResponse, EmbeddedSource, Error, ErrorKind, ManualClock,
    RefillRate, RuleSet, RuleSpec, Target, TokenSource,
};

/// One call the source received.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Call {
    user: String,
    target: String,
    tokens: u64,
    default_match: Option<u64>,
}

/// An embedded source that counts, records, and fails or lies on demand.
#[derive(Debug)]
struct TestSource {
    inner: EmbeddedSource,
    calls: Mutex<Vec<Call>>,
    granted: AtomicU64,
    next_errors: Mutex<VecDeque<Error>>,
    always_error: Mutex<Option<Error>>,
    delay: Mutex<Option<Duration>>,
    exaggerate: AtomicU64,
    /// (user, rule id, granted, when) of every answer.
    answers: Mutex<Vec<(String, String, u64, Timestamp)>>,
    clock: ManualClock,
}

impl TestSource {
    fn new(inner: EmbeddedSource, clock: ManualClock) -> Arc<Self> {
        Arc::new(TestSource {
            answers: Mutex::default(),
            clock,
            inner,
            calls: Mutex::default(),
            granted: AtomicU64::new(0),
            next_errors: Mutex::default(),
            always_error: Mutex::default(),
            delay: Mutex::default(),
            exaggerate: AtomicU64::new(0),
        })
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn call_count(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    fn granted(&self) -> u64 {
        self.granted.load(Ordering::SeqCst)
    }

    fn fail_always(&self, error: Option<Error>) {
        *self.always_error.lock().unwrap() = error;
    }
}

impl TokenSource for TestSource {
    async fn consume_tokens(
        &self,
        request: ConsumeRequest<'_>,
    ) -> Result<ConsumeTokensResponse, Error> {
        self.calls.lock().unwrap().push(Call {
            user: request.user_identifier.to_owned(),
            target: request.target.to_string(),
            tokens: request.tokens_requested,
            default_match: request.tokens_requested_for_default_bucket_match,
        });
        let delay = *self.delay.lock().unwrap();
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let queued = self.next_errors.lock().unwrap().pop_front();
        if let Some(error) = queued.or_else(|| self.always_error.lock().unwrap().clone()) {
            return Err(error);
        }
        let mut answer = self.inner.consume_now(request)?;
        self.answers.lock().unwrap().push((
            request.user_identifier.to_owned(),
            answer.rule.id.clone(),
            answer.tokens_consumed,
            self.clock.now(),
        ));
        self.granted
            .fetch_add(answer.tokens_consumed, Ordering::SeqCst);
        answer.tokens_consumed += self.exaggerate.load(Ordering::SeqCst);
        Ok(answer)
    }
}

struct Setup {
    limiter: Limiter,
    source: Arc<TestSource>,
    clock: ManualClock,
}

fn setup_with(
    rules: RuleSet,
    partial: bool,
    configure: impl FnOnce(LimiterBuilder) -> LimiterBuilder,
) -> Setup {
    let clock = ManualClock::new();
    // Start away from the epoch, like a real clock.
    clock.advance(Duration::from_secs(1000));
    let source = TestSource::new(
        EmbeddedSource::new(rules)
            .with_clock(clock.clone())
            .with_partial_grants(partial),
        clock.clone(),
    );
    let limiter = configure(
        Limiter::builder(source.clone())
            .clock(clock.clone())
            .refill_ahead(false),
    )
    .build();
    Setup {
        limiter,
        source,
        clock,
    }
}

fn setup(configure: impl FnOnce(LimiterBuilder) -> LimiterBuilder) -> Setup {
    setup_with(RuleSet::demo(), true, configure)
}

fn email() -> Target<'static> {
    Target::operation("send_email")
}

fn get(path: &'static str) -> Target<'static> {
    Target::path(Method::GET, path)
}

async fn check(s: &Setup, user: &str, target: &Target<'_>) -> Decision {
    s.limiter.check(user, target).await.unwrap()
}

/// The sizes of the leases the source was asked for, in order.
fn asks(s: &Setup) -> Vec<u64> {
    s.source.calls().iter().map(|c| c.tokens).collect()
}

/// A rule with tokens to spare: 10 000 per second, burst 1 000 000.
fn ample() -> RuleSet {
    RuleSet::builder()
        .default_rule(RefillRate::per_second(10_000), 1_000_000)
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_hot_bucket_moves_to_the_memo_with_every_token_and_dies_there_as_anywhere() {
    let s = setup_with(ample(), true, |b| b.lease_size(100).min_lease_size(100));
    let hot = get("/hot");
    // Learning the rule, then a lease.
    assert!(check(&s, "alice", &hot).await.is_allowed());
    assert!(check(&s, "alice", &hot).await.is_allowed());
    assert_eq!(s.limiter.inner.buckets.shared(), 0);
    let granted = s.source.granted();
    assert!(granted > 50, "a lease of many: {granted}");
    // Every token is spent locally: through the map twice, then through this thread's memo.
    let mut admitted = 2;
    while let Some(decision) = s.limiter.check_local("alice", &hot, 1) {
        assert!(decision.is_allowed());
        assert_eq!(decision.source(), DecisionSource::LocalBucket);
        admitted += 1;
    }
    assert_eq!(
        s.limiter.inner.buckets.shared(),
        1,
        "served twice in a row: moved"
    );
    assert_eq!(admitted, granted, "no token lost or doubled by the move");
    assert_eq!(s.source.call_count(), 2);
    let stats = s.limiter.stats();
    assert_eq!((stats.expired_tokens, stats.leased_tokens), (0, granted));

    // Refilled, the memoized bucket's tokens still die at their horizon...
    assert!(check(&s, "alice", &hot).await.is_allowed());
    assert!(s.limiter.check_local("alice", &hot, 1).is_some());
    s.clock.advance(Duration::from_secs(3600));
    assert!(s.limiter.check_local("alice", &hot, 1).is_none());
    // ...and once swept, the memo of a dead bucket answers nothing: the source is asked.
    s.limiter.sweep();
    assert!(s.limiter.check_local("alice", &hot, 1).is_none());
    let calls = s.source.call_count();
    assert!(check(&s, "alice", &hot).await.is_allowed());
    assert_eq!(s.source.call_count(), calls + 1);
    // The memo still holds the dead bucket: once a lease fills the new one (the first call
    // learned the rule again), the next hits find it in the map and spend it without a call.
    assert!(check(&s, "alice", &hot).await.is_allowed());
    let calls = s.source.call_count();
    for _ in 0..5 {
        let decision = s.limiter.check_local("alice", &hot, 1);
        assert_eq!(
            decision.map(|d| (d.is_allowed(), d.source())),
            Some((true, DecisionSource::LocalBucket))
        );
    }
    assert_eq!(s.source.call_count(), calls);
    let stats = s.limiter.stats();
    assert_eq!(stats.leased_tokens, s.source.granted());
}

#[tokio::test]
async fn with_nothing_known_a_lease_asks_for_one_request() {
    let s = setup(|b| b);
    let d = check(&s, "alice", &email()).await;
    assert!(d.is_allowed());
    assert_eq!(d.source(), DecisionSource::TokenSource);
    assert_eq!(d.rule().unwrap().burst_rate(), 10);
    assert_eq!(
        s.source.calls()[0],
        Call {
            user: "alice".into(),
            target: "operation send_email".into(),
            tokens: 1,
            default_match: Some(1),
        }
    );
    let stats = s.limiter.stats();
    assert_eq!((stats.leased_tokens, stats.allowed_by_source), (1, 1));
    assert_eq!(stats.live_buckets, 1);
    assert_eq!(
        s.limiter.rule_id(&d.rule().unwrap()).as_deref(),
        Some("rule_send_email")
    );
}

#[tokio::test]
async fn leases_grow_with_demand_and_shrink_when_it_falls() {
    let s = setup_with(ample(), true, |b| b);
    let target = get("/busy");
    // 1000 requests per second: the first answer tells the rule (ample: it refills 1 000
    // tokens in 100 ms), the second request measures the demand (one token a millisecond), and
    // the second lease covers a second of it at once (what the rule refills in 100 ms), however
    // young the demand; then leases follow the demand, towards three quarters of the token
    // horizon of it (3 750).
    for _ in 0..2000 {
        assert!(check(&s, "u", &target).await.is_allowed());
        s.clock.advance(Duration::from_millis(1));
    }
    let busy = asks(&s);
    assert_eq!(busy[..2], [1, 1 + 1_000], "the rule, then the demand");
    let largest = *busy.iter().max().unwrap();
    assert!((1_000..=3_750).contains(&largest), "{busy:?}");
    assert!(busy.len() <= 6, "{busy:?}");
    let stats = s.limiter.stats();
    assert!(stats.local_hits > 1900, "{stats:?}");
    // One request per second: what is held expires, and leases fall to three quarters of the
    // horizon of that demand (3.75 tokens) plus the request waiting: 4, a call per 4 requests.
    let before = busy.len();
    for _ in 0..20 {
        s.clock.advance(Duration::from_secs(1));
        assert!(check(&s, "u", &target).await.is_allowed());
    }
    let quiet = &asks(&s)[before..];
    assert!(quiet.len() <= 6, "{quiet:?}");
    assert_eq!(quiet[quiet.len() - 2..], [4, 4], "{quiet:?}");
}

#[tokio::test]
async fn near_the_limit_leases_shrink_to_the_request_and_strand_nothing() {
    // Four processes share one source; 10 per hour, burst 10: every process asks for exactly
    // what each request costs, so exactly the first 10 of 16 are admitted.
    let clock = ManualClock::new();
    clock.advance(Duration::from_secs(1000));
    let rules = RuleSet::builder()
        .default_rule(RefillRate::per_second(1), 5)
        .operation("Send Email", "^send_email$", RefillRate::per_hour(10), 10)
        .build()
        .unwrap();
    let source = TestSource::new(
        EmbeddedSource::new(rules).with_clock(clock.clone()),
        clock.clone(),
    );
    let fleet: Vec<Limiter> = (0..4)
        .map(|_| {
            Limiter::builder(source.clone())
                .clock(clock.clone())
                .build()
        })
        .collect();
    let mut allowed = Vec::new();
    for i in 0..16 {
        let d = fleet[i % 4].check("u", &email()).await.unwrap();
        allowed.push(d.is_allowed());
        if !d.is_allowed() {
            // The true wait for a token of a 10-per-hour rule (6 minutes from the last answer).
            assert!((355..=360).contains(&d.retry_after_secs()), "{d:?}");
        }
        clock.advance(Duration::from_millis(250));
    }
    assert_eq!(allowed, [vec![true; 10], vec![false; 6]].concat());
    assert!(source.calls().iter().all(|c| c.tokens == 1));
}

#[tokio::test]
async fn denial_cache_denies_without_calls_until_a_token_can_exist() {
    let s = setup(|b| b);
    for _ in 0..10 {
        assert!(check(&s, "u", &email()).await.is_allowed());
    }
    // The last lease emptied the source, which said when its next token comes: the denial
    // cache answers until just before then, without calls.
    let calls = s.source.call_count();
    let d = check(&s, "u", &email()).await;
    assert!(!d.is_allowed());
    assert_eq!(d.source(), DecisionSource::DenialCache);
    assert_eq!(d.retry_after(), Duration::from_millis(999));
    assert_eq!(d.retry_after_secs(), 1);
    s.clock.advance(Duration::from_millis(998));
    for _ in 0..50 {
        let d = check(&s, "u", &email()).await;
        assert_eq!(d.source(), DecisionSource::DenialCache);
        assert_eq!(d.retry_after(), Duration::from_millis(1));
        assert_eq!(s.source.inner.available("u", &email()), 0);
    }
    assert_eq!(s.source.call_count(), calls);
    assert_eq!(s.limiter.stats().denied_by_denial_cache, 51);
    // The moment a token can exist, the source is asked again.
    s.clock.advance(Duration::from_millis(2));
    let d = check(&s, "u", &email()).await;
    assert!(d.is_allowed());
    assert_eq!(s.source.call_count(), calls + 1);
    // Another user was never affected.
    assert!(check(&s, "v", &email()).await.is_allowed());
}

#[tokio::test]
async fn a_daily_quotas_tokens_live_until_one_would_have_refilled() {
    // 1 000 a day: one token refills in 86.4 s, far past the 5 s horizon. Leased tokens of
    // the day's quota that a process cannot spend at once (another limit holds it back) stay
    // spendable that long, instead of being lost for the rest of the day every 5 s.
    let rules = RuleSet::builder()
        .default_rule(RefillRate::per_second(1), 5)
        .operation("day", "^day$", RefillRate::per_day(1_000), 1_000)
        .build()
        .unwrap();
    let s = setup_with(rules, true, |b| {
        b.min_lease_size(10).rule_ttl(Duration::from_secs(600))
    });
    let day = Target::operation("day");
    for _ in 0..3 {
        assert!(check(&s, "u", &day).await.is_allowed());
    }
    let held = s.limiter.bucket_statuses()[0].tokens;
    assert!(held > 0, "a lease left tokens in the bucket");
    let rule = check(&s, "u", &day).await.rule().unwrap();
    let life = super::lease::token_life(DEFAULT_TOKEN_HORIZON, rule);
    assert_eq!(life, RefillRate::per_day(1_000).time_for(1).unwrap());
    // A minute later (past the horizon), still spent locally: no call.
    s.clock.advance(Duration::from_secs(60));
    let calls = s.source.call_count();
    assert_eq!(
        check(&s, "u", &day).await.source(),
        DecisionSource::LocalBucket
    );
    assert_eq!(s.source.call_count(), calls);
    // Past one token's refill time, they are gone, as any leased token past its life.
    s.clock.advance(Duration::from_secs(30));
    assert!(s.limiter.check_local("u", &day, 1).is_none());
    assert_eq!(
        check(&s, "u", &day).await.source(),
        DecisionSource::TokenSource
    );
    // Every token held but the two spent since (the rule's look, the minute's).
    assert_eq!(s.limiter.stats().expired_tokens, held - 2);
}

#[test]
fn a_tokens_life_is_the_horizon_or_one_tokens_refill_for_slow_rules() {
    use super::lease::{token_life, MAX_TOKEN_LIFE};
    let rule = |refill_rate| RuleSummary {
        slot: 0,
        burst_rate: 100,
        refill_rate,
        is_default: false,
    };
    let h = Duration::from_secs(5);
    // The rules people write that refill a token within the horizon: the horizon.
    assert_eq!(token_life(h, rule(RefillRate::per_second(10))), h);
    assert_eq!(token_life(h, rule(RefillRate::per_minute(100))), h);
    assert_eq!(token_life(h, rule(RefillRate::per_hour(1_000))), h);
    // Slower: one token's refill, so that the fleet admits at most one token more than
    // `burst + refill·T`.
    assert_eq!(
        token_life(h, rule(RefillRate::per_hour(100))),
        Duration::from_secs(36)
    );
    assert_eq!(
        token_life(h, rule(RefillRate::per_day(1_000))),
        Duration::from_millis(86_400)
    );
    // At most an hour; a rule that never refills, an hour (its bound is its burst).
    assert_eq!(token_life(h, rule(RefillRate::per_day(12))), MAX_TOKEN_LIFE);
    assert_eq!(
        token_life(h, rule(RefillRate::per_second(0))),
        MAX_TOKEN_LIFE
    );
    // A horizon set longer than that is kept.
    let long = Duration::from_secs(7_200);
    assert_eq!(token_life(long, rule(RefillRate::per_day(12))), long);
}

#[tokio::test]
async fn a_leased_token_expires_at_the_horizon() {
    let s = setup_with(ample(), true, |b| b.token_horizon(Duration::from_secs(2)));
    let target = get("/busy");
    for _ in 0..300 {
        check(&s, "u", &target).await;
        s.clock.advance(Duration::from_millis(1));
    }
    let held = s.limiter.bucket_statuses()[0].tokens;
    assert!(held > 0, "demand made the last lease ask for more than one");
    assert!(s.limiter.check_local("u", &target, 1).is_some());
    // The last lease started within the last millisecond or so; 2 s later its tokens are gone.
    s.clock.advance(Duration::from_secs(2));
    assert!(s.limiter.check_local("u", &target, 1).is_none());
    let d = check(&s, "u", &target).await;
    assert_eq!(d.source(), DecisionSource::TokenSource);
    let stats = s.limiter.stats();
    assert_eq!(stats.expired_tokens, held - 1);
    let statuses = s.limiter.bucket_statuses();
    assert_eq!(statuses.len(), 1);
    assert!(!statuses[0].expired);
}

#[tokio::test]
async fn refill_ahead_keeps_steady_traffic_local() {
    let s = setup_with(ample(), true, |b| b.refill_ahead(true));
    let target = get("/anything");
    let mut waited = 0;
    for _ in 0..3000 {
        let d = check(&s, "u", &target).await;
        assert!(d.is_allowed());
        if d.source() != DecisionSource::LocalBucket {
            waited += 1;
        }
        s.clock.advance(Duration::from_millis(1));
        // Let the background lease run, as a server's other tasks would.
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    }
    // Once demand is known, the next lease lands before the bucket runs dry.
    assert!(waited < 20, "{waited} requests waited for the source");
    let calls = s.source.call_count();
    assert!(calls < 3000 / 20, "{calls} calls");
}

/// One user's 40 requests 50 ms apart on a rule (`GET /hello`) with the limiter's defaults
/// and refill-ahead: the sizes of the leases asked for, how many requests waited for the
/// source, and how many were allowed.
async fn forty_paced(refill: RefillRate, burst: u64) -> (Vec<u64>, usize, usize) {
    let rules = RuleSet::builder()
        .default_rule(RefillRate::per_second(1), 5)
        .path(Method::GET, "^/hello", refill, burst)
        .build()
        .unwrap();
    let s = setup_with(rules, true, |b| b.refill_ahead(true));
    let (mut waited, mut allowed) = (0, 0);
    for _ in 0..40 {
        let d = check(&s, "u", &get("/hello")).await;
        allowed += usize::from(d.is_allowed());
        waited += usize::from(d.source() == DecisionSource::TokenSource);
        // Let a background lease run, as a server's other tasks would.
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        s.clock.advance(Duration::from_millis(50));
    }
    (asks(&s), waited, allowed)
}

#[tokio::test]
async fn slow_rules_far_from_their_limit_lease_ahead() {
    // 100/minute, 1000/hour, 10 000/day: the refill is slow (1.7 a second down to one every
    // 8.6 s), but what is left is plenty next to the demand: leases grow past one token and
    // refill-ahead keeps the requests local. The SDKs' fixed lease of 5 makes 8 calls.
    for (refill, burst) in [
        (RefillRate::per_minute(100), 100),
        (RefillRate::per_hour(1000), 1000),
        (RefillRate::per_day(10_000), 10_000),
    ] {
        let (asked, waited, allowed) = forty_paced(refill, burst).await;
        assert_eq!(allowed, 40, "{refill}: {asked:?}");
        assert!(asked.len() <= 8, "{refill}: {asked:?}");
        assert!(asked.iter().any(|&n| n > 5), "{refill}: {asked:?}");
        // The rule, the others' take, the first speculative lease; then refill-ahead.
        assert!(waited <= 4, "{refill}: {waited} waited, {asked:?}");
        assert!(asked.len() > waited, "{refill}: no lease ahead, {asked:?}");
    }
}

#[tokio::test]
async fn near_its_limit_a_rule_leases_what_is_left_and_then_the_cost() {
    // 10 a second, burst 20, 20 requests a second for 2 s: the demand drains the source, so
    // leases follow what is left and end at one request's cost; every token the source has is
    // admitted, nothing more.
    let (asked, _, allowed) = forty_paced(RefillRate::per_second(10), 20).await;
    assert!(asked.iter().any(|&n| n > 5), "{asked:?}");
    assert_eq!(asked.last(), Some(&1), "{asked:?}");
    // 20 + 10 a second over the 1.95 s from the first request to the last: 39 tokens.
    assert_eq!(allowed, 39, "{asked:?}");
}

#[tokio::test]
async fn default_rule_targets_are_leased() {
    let s = setup(|b| b);
    assert!(check(&s, "u", &get("/items/1")).await.is_allowed());
    // The default rule is charged the lease (tokensRequestedForDefaultBucketMatch).
    let first = s.source.calls()[0].clone();
    assert_eq!((first.tokens, first.default_match), (1, Some(1)));
    // A new concrete path: only the source knows its rule; one request's cost again.
    assert!(check(&s, "u", &get("/items/2")).await.is_allowed());
    let second = s.source.calls()[1].clone();
    assert_eq!((second.target.as_str(), second.tokens), ("GET /items/2", 1));
    for _ in 0..3 {
        assert!(check(&s, "u", &get("/items/1")).await.is_allowed());
    }
    let d = check(&s, "u", &get("/items/3")).await;
    assert!(!d.is_allowed(), "the default burst of 5 is spent");
    assert_eq!(s.source.granted(), 5);
}

#[tokio::test]
async fn sdk_mode_charges_the_default_rule_per_request() {
    let s = setup(|b| b.lease_default_rule(false));
    for _ in 0..3 {
        let d = check(&s, "u", &get("/items/1")).await;
        assert!(d.is_allowed());
        assert_eq!(d.source(), DecisionSource::TokenSource);
    }
    let calls = s.source.calls();
    assert_eq!(calls.len(), 3);
    assert!(calls
        .iter()
        .all(|c| (c.tokens, c.default_match) == (1, Some(1))));
    // Exactly one token per request was charged.
    assert_eq!(s.source.granted(), 3);
    assert_eq!(s.limiter.stats().live_buckets, 0);
}

#[tokio::test(start_paused = true)]
async fn all_or_nothing_servers_are_asked_again_for_what_remains() {
    let rules = RuleSet::builder()
        .default_rule(RefillRate::per_second(1), 7)
        .build()
        .unwrap();
    let s = setup_with(rules, false, |b| b);
    *s.source.delay.lock().unwrap() = Some(Duration::from_millis(10));
    let tasks: Vec<_> = (0..9)
        .map(|_| {
            let limiter = s.limiter.clone();
            tokio::spawn(async move { limiter.check("u", &Target::Default).await })
        })
        .collect();
    let mut allowed = 0;
    for task in tasks {
        if task.await.unwrap().unwrap().is_allowed() {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 7);
    // 9 refused with 7 remaining; then the 7 asked for and granted.
    assert_eq!(asks(&s)[..2], [9, 7]);
}

#[tokio::test]
async fn sweeps_remove_buckets_nothing_needs() {
    let s = setup(|b| b.sweep_interval(Duration::from_secs(3600)));
    for user in 0..50 {
        check(&s, &format!("user-{user}"), &email()).await;
    }
    assert_eq!(s.limiter.stats().live_buckets, 50);
    s.clock.advance(Duration::from_secs(30));
    s.limiter.sweep();
    assert_eq!(s.limiter.stats().live_buckets, 50);
    s.clock.advance(Duration::from_secs(30));
    s.limiter.sweep();
    let stats = s.limiter.stats();
    assert_eq!(stats.live_buckets, 0);
    // The target cache expired too.
    assert_eq!(stats.cached_targets, 0);
}

#[tokio::test]
async fn rule_ttl_makes_a_target_ask_the_source_again() {
    let s = setup(|b| b.rule_ttl(Duration::from_secs(30)));
    check(&s, "u", &email()).await;
    assert_eq!(s.source.call_count(), 1);
    s.clock.advance(Duration::from_secs(30));
    assert!(s.limiter.check_local("u", &email(), 1).is_none());
    let d = check(&s, "u", &email()).await;
    assert!(d.is_allowed());
    assert_eq!(asks(&s), [1, 1]);
}

#[tokio::test]
async fn new_targets_resolve_through_known_matchers() {
    let s = setup(|b| b);
    check(&s, "u", &get("/hello")).await;
    let d = check(&s, "u", &get("/hello/world")).await;
    assert!(d.is_allowed());
    // The source was asked for the (user, rule) bucket, not to resolve the new path.
    assert_eq!(
        s.limiter.rule_id(&d.rule().unwrap()).as_deref(),
        Some("rule_hello")
    );
    assert_eq!(s.source.calls()[1].target, "GET /hello/world");
    // Now in the exact cache: the hot path resolves it (and finds the bucket empty).
    assert!(s.limiter.stats().cached_targets >= 2);
}

#[tokio::test]
async fn ambiguous_matchers_defer_to_the_source() {
    let rules = RuleSet::builder()
        .default_rule(RefillRate::per_second(1), 5)
        .rule(RuleSpec::path(Method::GET, "^/a/b", RefillRate::per_second(1), 7).with_id("b"))
        .rule(RuleSpec::path(Method::GET, "^/a", RefillRate::per_second(1), 9).with_id("a"))
        .build()
        .unwrap();
    let s = setup_with(rules, true, |b| b);
    // Learn B first: once "^/a" is known it would claim /a/b/c locally (the SDKs' matcher
    // semantics), and only the source would know better.
    check(&s, "u", &get("/a/b/c")).await;
    check(&s, "u", &get("/a/x")).await;
    assert_eq!(s.source.call_count(), 2);
    // Both learned matchers match /a/b/new: only the source knows its rule order.
    let d = check(&s, "u", &get("/a/b/new")).await;
    assert_eq!(s.source.call_count(), 3);
    assert_eq!(s.limiter.rule_id(&d.rule().unwrap()).as_deref(), Some("b"));
}

#[tokio::test]
async fn outage_policies() {
    for policy in [
        OnUnavailable::Allow,
        OnUnavailable::Deny,
        OnUnavailable::Error,
    ] {
        let s = setup(|b| b.on_unavailable(policy));
        s.source
            .fail_always(Some(Error::new(ErrorKind::Timeout, "slow")));
        let result = s.limiter.check("u", &email()).await;
        match policy {
            OnUnavailable::Allow => {
                let d = result.unwrap();
                assert!(d.is_allowed());
                assert_eq!(d.source(), DecisionSource::Unavailable);
                assert_eq!(d.unavailable_kind(), Some(ErrorKind::Timeout));
                assert_eq!(s.limiter.stats().allowed_unavailable, 1);
            }
            OnUnavailable::Deny => {
                let d = result.unwrap();
                assert!(!d.is_allowed());
                assert_eq!(d.source(), DecisionSource::Unavailable);
                assert!(d.retry_after() >= Duration::from_secs(1));
                assert_eq!(s.limiter.stats().denied_unavailable, 1);
            }
            OnUnavailable::Error => {
                assert_eq!(result.unwrap_err().kind(), ErrorKind::Timeout);
            }
        }
        assert_eq!(s.limiter.stats().outage_errors, 1);
    }
}

#[tokio::test]
async fn circuit_breaker_stops_calls_then_one_probe_closes_it() {
    let s = setup(|b| {
        b.circuit_breaker(3, Duration::from_secs(5))
            .on_unavailable(OnUnavailable::Deny)
    });
    s.source.fail_always(Some(Error::from_status(
        StatusCode::SERVICE_UNAVAILABLE,
        "down",
    )));
    for _ in 0..3 {
        check(&s, "u", &email()).await;
    }
    assert_eq!(s.source.call_count(), 3);
    assert_eq!(s.limiter.stats().breaker, BreakerState::Open);
    s.clock.advance(Duration::from_secs(2));
    for _ in 0..20 {
        let d = check(&s, "u", &email()).await;
        assert!(!d.is_allowed());
        assert_eq!(d.unavailable_kind(), Some(ErrorKind::Unavailable));
        assert_eq!(d.retry_after(), Duration::from_secs(3));
    }
    assert_eq!(
        s.source.call_count(),
        3,
        "no calls while the circuit is open"
    );
    s.clock.advance(Duration::from_secs(3));
    assert_eq!(s.limiter.stats().breaker, BreakerState::HalfOpen);
    s.source.fail_always(None);
    let d = check(&s, "u", &email()).await;
    assert!(d.is_allowed());
    assert_eq!(s.source.call_count(), 4);
    assert_eq!(s.limiter.stats().breaker, BreakerState::Closed);
}

#[tokio::test]
async fn configuration_errors_follow_the_policy_without_opening_the_circuit() {
    let s = setup(|b| {
        b.circuit_breaker(1, Duration::from_secs(5))
            .configuration_error_backoff(Duration::from_secs(10))
            .on_unavailable(OnUnavailable::Deny)
    });
    s.source.fail_always(Some(Error::from_status(
        StatusCode::UNAUTHORIZED,
        "Invalid API key",
    )));
    for _ in 0..20 {
        let d = check(&s, "u", &email()).await;
        assert!(!d.is_allowed());
        assert_eq!(d.unavailable_kind(), Some(ErrorKind::Unauthorized));
    }
    let stats = s.limiter.stats();
    assert_eq!(
        s.source.call_count(),
        1,
        "held off after a configuration error"
    );
    assert_eq!(stats.configuration_errors, 1);
    assert_eq!(stats.outage_errors, 0);
    assert_eq!(stats.breaker, BreakerState::Closed);
    s.clock.advance(Duration::from_secs(10));
    check(&s, "u", &email()).await;
    assert_eq!(s.source.call_count(), 2);
}

#[tokio::test]
async fn a_source_that_grants_more_than_asked_is_not_believed() {
    let s = setup(|b| b.on_unavailable(OnUnavailable::Deny));
    s.source.exaggerate.store(100, Ordering::SeqCst);
    for _ in 0..10 {
        let d = check(&s, "u", &email()).await;
        assert!(!d.is_allowed());
        assert_eq!(d.unavailable_kind(), Some(ErrorKind::Decode));
    }
    let stats = s.limiter.stats();
    assert_eq!(stats.leased_tokens, 0);
    assert!(stats.outage_errors >= 5);
    assert_eq!(stats.breaker, BreakerState::Open);
}

#[tokio::test]
async fn unusable_identifiers_are_rejected_without_a_call() {
    let s = setup(|b| b);
    for user in [String::new(), " ".into(), "x".repeat(2000)] {
        let e = s.limiter.check(&user, &email()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
    }
    assert_eq!(s.source.call_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_request_does_not_strand_those_waiting_with_it() {
    let s = setup(|b| b);
    *s.source.delay.lock().unwrap() = Some(Duration::from_secs(1));
    let first = tokio::spawn({
        let limiter = s.limiter.clone();
        async move { limiter.check("u", &email()).await }
    });
    let second = tokio::spawn({
        let limiter = s.limiter.clone();
        async move { limiter.check("u", &email()).await }
    });
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    first.abort();
    let d = second.await.unwrap().unwrap();
    assert!(d.is_allowed());
    assert_eq!(d.source(), DecisionSource::TokenSource);
    assert_eq!(s.source.call_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn two_hundred_cold_misses_share_the_burst_and_never_over_admit() {
    let s = setup(|b| b);
    *s.source.delay.lock().unwrap() = Some(Duration::from_millis(100));
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let limiter = s.limiter.clone();
            tokio::spawn(async move { limiter.check("new-user", &get("/hello")).await })
        })
        .collect();
    let mut allowed = 0;
    for task in tasks {
        let d = task.await.unwrap().unwrap();
        if d.is_allowed() {
            allowed += 1;
        } else {
            assert_eq!(d.source(), DecisionSource::TokenSource);
            // The source is empty: the next token is a second away.
            assert_eq!(d.retry_after_secs(), 1);
        }
    }
    // The burst of 20, all of it, and nothing more; in one or two calls.
    assert_eq!(allowed, 20);
    assert_eq!(s.source.granted(), 20);
    assert!(s.source.call_count() <= 2, "{:?}", asks(&s));
}

#[tokio::test(start_paused = true)]
async fn no_request_is_denied_while_the_source_has_tokens() {
    // 32 clients of one user, each sending 50 requests one after the other, on a source 20 ms
    // away with tokens for all of them.
    let s = setup_with(ample(), true, |b| b.refill_ahead(true));
    *s.source.delay.lock().unwrap() = Some(Duration::from_millis(20));
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let limiter = s.limiter.clone();
            tokio::spawn(async move {
                let mut denied = 0;
                for _ in 0..50 {
                    let d = limiter.check("hot", &get("/hello")).await.unwrap();
                    if !d.is_allowed() {
                        denied += 1;
                    }
                }
                denied
            })
        })
        .collect();
    let mut denied = 0;
    for task in tasks {
        denied += task.await.unwrap();
    }
    assert_eq!(denied, 0);
    let calls = s.source.call_count();
    // Waiters ride one lease each round trip: far fewer calls than requests.
    assert!(calls <= 1600 / 16, "{calls} calls: {:?}", asks(&s));
    assert!(s.limiter.stats().leased_tokens >= 1600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_threads_over_shared_keys_admit_exactly_what_was_granted() {
    // The clock never moves: the source has 4000 + 3000 per user, and nothing more.
    let rules = RuleSet::builder()
        .default_rule(RefillRate::per_second(1_000_000), 4000)
        .operation("op", "^op$", RefillRate::per_second(1_000_000), 3000)
        .build()
        .unwrap();
    let s = setup_with(rules, true, |b| b.refill_ahead(true).lease_size(7));
    let admitted = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let limiter = s.limiter.clone();
            let admitted = admitted.clone();
            tokio::spawn(async move {
                for i in 0..3000u64 {
                    let user = ["a", "b"][((i + t) % 2) as usize];
                    let target = if i % 3 == 0 {
                        Target::operation("op")
                    } else {
                        Target::path(Method::GET, "/x")
                    };
                    if limiter.check(user, &target).await.unwrap().is_allowed() {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    // Background leases may still be landing on the other worker: wait for the last one (a
    // lease counts its tokens once it has filed them).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let quiet = |s: &Setup| {
        let answered = s.source.answers.lock().unwrap().len();
        s.source.call_count() == answered && s.limiter.stats().leased_tokens == s.source.granted()
    };
    while !quiet(&s) {
        assert!(std::time::Instant::now() < deadline, "leases never landed");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let held = s.limiter.held_tokens();
    let stats = s.limiter.stats();
    let admitted = admitted.load(Ordering::Relaxed);
    assert_eq!(stats.leased_tokens, s.source.granted());
    assert_eq!(admitted + held + stats.expired_tokens, s.source.granted());
    assert!(admitted <= s.source.granted());
    assert_eq!(s.source.granted(), 14_000);
    // No lease asked for more than the cap.
    assert!(s.source.calls().iter().all(|c| c.tokens <= 7));
    assert!(admitted >= 14_000 - 2 * 2 * 7);
}

/// One step of random traffic.
#[derive(Clone, Debug)]
struct Step {
    advance_ms: u64,
    user: usize,
    target: usize,
    cost: u64,
}

fn step() -> impl Strategy<Value = Step> {
    (
        prop_oneof![Just(0u64), 0u64..500, 0u64..70_000],
        0usize..3,
        0usize..4,
        1u64..=2,
    )
        .prop_map(|(advance_ms, user, target, cost)| Step {
            advance_ms,
            user,
            target,
            cost,
        })
}

const TARGETS: [fn() -> Target<'static>; 4] = [
    email,
    || get("/hello"),
    || get("/items/1"),
    || Target::operation("other"),
];

fn run_invariants(steps: Vec<Step>, refill_ahead: bool) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let horizon = Duration::from_secs(5);
        let s = setup(|b| b.refill_ahead(refill_ahead).token_horizon(horizon));
        let mut admitted_tokens = 0u64;
        for step in steps {
            s.clock.advance(Duration::from_millis(step.advance_ms));
            let user = format!("user-{}", step.user);
            let target = TARGETS[step.target]();
            let now = s.clock.now();
            let d = s
                .limiter
                .check_cost(&user, &target, step.cost)
                .await
                .unwrap();
            let rule = s.limiter.rule_id(&d.rule().unwrap()).unwrap().to_string();
            let available = s.source.inner.available(&user, &target);
            match (d.source(), d.is_allowed()) {
                (DecisionSource::LocalBucket, _) => {
                    // A leased token is spent within the horizon of the grant that brought it.
                    let answers = s.source.answers.lock().unwrap();
                    let last_grant = answers
                        .iter()
                        .rev()
                        .find(|(u, r, granted, _)| *u == user && *r == rule && *granted > 0)
                        .map(|(.., at)| *at);
                    prop_assert!(
                        last_grant.is_some(),
                        "a local token with no grant behind it"
                    );
                    let age = now.saturating_duration_since(last_grant.unwrap());
                    let life = super::lease::token_life(horizon, d.rule().unwrap());
                    prop_assert!(age < life, "{age:?}");
                }
                (DecisionSource::DenialCache, _) => {
                    // Never while the source could grant a token.
                    prop_assert_eq!(available, 0);
                }
                (DecisionSource::TokenSource, false) => {
                    // Denied by the source only when it had less than the request needed.
                    prop_assert!(available < step.cost, "{available} left, {d:?}");
                }
                _ => {}
            }
            if d.is_allowed() {
                admitted_tokens += step.cost;
            }
            if refill_ahead {
                for _ in 0..4 {
                    tokio::task::yield_now().await;
                }
            }
            let statuses = s.limiter.bucket_statuses();
            let stats = s.limiter.stats();
            let held: u64 = s.limiter.held_tokens();
            let granted = s.source.granted();
            // Never admits more than was granted.
            prop_assert!(admitted_tokens <= granted);
            // Every granted token went to a bucket or straight to a request...
            prop_assert_eq!(stats.leased_tokens + stats.per_request_tokens, granted);
            // ...and every leased token is admitted, held, or counted lost.
            let from_buckets = stats.leased_tokens - held - stats.expired_tokens;
            prop_assert!(admitted_tokens >= from_buckets);
            prop_assert!(admitted_tokens <= from_buckets + stats.per_request_tokens);
            // No bucket holds more than the source's burst.
            for b in &statuses {
                prop_assert!(b.tokens <= 20, "{:?}", b);
            }
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn invariants_hold_for_random_traffic(steps in proptest::collection::vec(step(), 1..150)) {
        run_invariants(steps, false)?;
    }

    #[test]
    fn invariants_hold_with_refill_ahead(steps in proptest::collection::vec(step(), 1..150)) {
        run_invariants(steps, true)?;
    }
}

/// Answers under rule "a" until told to switch to rule "b" (the server's rules changed),
/// granting whatever is asked.
#[derive(Debug, Default)]
struct Switching {
    to_b: std::sync::atomic::AtomicBool,
}

impl TokenSource for Switching {
    async fn consume_tokens(
        &self,
        request: ConsumeRequest<'_>,
    ) -> Result<ConsumeTokensResponse, Error> {
        let id = if self.to_b.load(Ordering::SeqCst) {
            "b"
        } else {
            "a"
        };
        Ok(ConsumeTokensResponse {
            tokens_remaining: 1_000_000,
            tokens_consumed: request.tokens_requested,
            throttles: 0,
            rule: crate::Rule {
                id: id.into(),
                name: id.into(),
                refill_rate: RefillRate::per_second(1_000_000),
                burst_rate: 1_000_000,
                is_default: false,
                matcher: Some("^x$".into()),
                http_method: None,
            },
            retry_after_ms: None,
        })
    }
}

#[tokio::test]
async fn a_target_whose_rule_changes_is_never_served_from_a_stale_memo() {
    let source = Arc::new(Switching::default());
    let clock = ManualClock::new();
    clock.advance(Duration::from_secs(1));
    let limiter = Limiter::builder(source.clone())
        .clock(clock.clone())
        .refill_ahead(false)
        .build();
    let x = Target::operation("x");
    let rule_of = |d: Decision| limiter.rule_id(&d.rule().unwrap()).unwrap().to_string();
    // Enough demand that bucket a holds tokens.
    for _ in 0..50 {
        let d = limiter.check("u", &x).await.unwrap();
        assert_eq!(rule_of(d), "a");
        clock.advance(Duration::from_millis(1));
    }
    assert!(limiter.check_local("u", &x, 1).is_some(), "served from a");
    // Drain a, then the source says x now falls under b.
    while limiter.check_local("u", &x, 1).is_some() {}
    source.to_b.store(true, Ordering::SeqCst);
    let d = limiter.check("u", &x).await.unwrap();
    assert_eq!(
        (rule_of(d), d.source()),
        ("b".into(), DecisionSource::TokenSource)
    );
    // Every later decision, local hits of this thread's memo included, goes to b.
    let mut local = 0;
    for _ in 0..50 {
        clock.advance(Duration::from_millis(1));
        let d = limiter.check("u", &x).await.unwrap();
        assert_eq!(rule_of(d), "b");
        local += usize::from(d.source() == DecisionSource::LocalBucket);
    }
    assert!(local > 0);
}

#[tokio::test]
async fn at_the_cap_idle_buckets_go_first_and_nothing_is_admitted_past_a_grant() {
    let s = setup_with(ample(), true, |b| {
        b.max_buckets(100).bucket_ttl(Duration::from_secs(1))
    });
    let target = get("/x");
    let mut admitted = 0u64;
    // A user who holds tokens: leases grow with its demand.
    for _ in 0..300 {
        admitted += u64::from(check(&s, "regular", &target).await.is_allowed());
        s.clock.advance(Duration::from_millis(1));
    }
    let local = |s: &Setup| {
        let hit = s.limiter.check_local("regular", &target, 1);
        hit.is_some_and(|d| d.is_allowed())
    };
    assert!(local(&s));
    admitted += 1;
    // 99 users once each, then a second and a half of quiet: idle.
    for u in 0..99 {
        admitted += u64::from(check(&s, &format!("idle-{u}"), &target).await.is_allowed());
    }
    s.clock.advance(Duration::from_millis(1500));
    // A flood: the idle users make room first; the regular user's tokens are still there.
    for u in 0..50 {
        admitted += u64::from(check(&s, &format!("new-{u}"), &target).await.is_allowed());
    }
    let stats = s.limiter.stats();
    assert!(stats.live_buckets <= 100, "{stats:?}");
    assert!(stats.evicted_buckets >= 49, "{stats:?}");
    assert!(local(&s));
    admitted += 1;
    // A bigger flood: the cap holds, and what was lost is counted, never admitted.
    for u in 0..1000 {
        admitted += u64::from(check(&s, &format!("flood-{u}"), &target).await.is_allowed());
    }
    let stats = s.limiter.stats();
    assert!(stats.live_buckets <= 100, "{stats:?}");
    assert_eq!(admitted, 300 + 1 + 99 + 50 + 1 + 1000);
    assert_eq!(
        stats.leased_tokens,
        admitted + s.limiter.held_tokens() + stats.expired_tokens,
        "{stats:?}"
    );
}

/// Tokio's paused clock as the limiter's and the source's: the test moves time (every sleep in
/// it, the source's latency included), nothing else does.
#[derive(Clone, Copy, Debug)]
struct PausedClock(tokio::time::Instant);

impl Clock for PausedClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_nanos(1_000_000_000_000 + self.0.elapsed().as_nanos() as u64)
    }
}

/// An embedded source `latency` away (it grants half-way), recording what it was asked and
/// when it answered.
struct Distant {
    inner: EmbeddedSource,
    latency: Duration,
    asked: Mutex<Vec<u64>>,
    answered: Mutex<Vec<tokio::time::Instant>>,
}

impl TokenSource for Distant {
    async fn consume_tokens(
        &self,
        request: ConsumeRequest<'_>,
    ) -> Result<ConsumeTokensResponse, Error> {
        self.asked.lock().unwrap().push(request.tokens_requested);
        tokio::time::sleep(self.latency / 2).await;
        let answer = self.inner.consume_now(request)?;
        tokio::time::sleep(self.latency / 2).await;
        self.answered
            .lock()
            .unwrap()
            .push(tokio::time::Instant::now());
        Ok(answer)
    }
}

/// What a cold key went through: how many requests, which of them waited for the source
/// (issued when), the leases asked, the answers' times, denials.
struct ColdRun {
    requests: usize,
    waited_at: Vec<tokio::time::Instant>,
    asked: Vec<u64>,
    answered: Vec<tokio::time::Instant>,
    denied: usize,
}

/// One user's requests on `GET /hot` from cold, at a constant `rate` (per second) for
/// `length`, on a rule with `refill` per second and `burst`, the source `latency` away, with
/// the limiter's defaults (refill-ahead on) but `lease_size`.
async fn cold_key(
    rate: u64,
    length: Duration,
    refill: RefillRate,
    burst: u64,
    latency: Duration,
    lease_size: u64,
) -> ColdRun {
    let clock = PausedClock(tokio::time::Instant::now());
    let rules = RuleSet::builder()
        .default_rule(RefillRate::per_second(1), 5)
        .path(Method::GET, "^/hot", refill, burst)
        .build()
        .unwrap();
    let source = Arc::new(Distant {
        inner: EmbeddedSource::new(rules).with_clock(clock),
        latency,
        asked: Mutex::default(),
        answered: Mutex::default(),
    });
    let limiter = Limiter::builder(source.clone())
        .clock(clock)
        .lease_size(lease_size)
        .build();
    let target = get("/hot");
    let start = tokio::time::Instant::now();
    let mut requests = 0;
    let mut denied = 0;
    let mut slow = tokio::task::JoinSet::new();
    // Requests are issued in whole milliseconds: `rate / 1000` each, or one every
    // `1000 / rate`.
    let mut due = 0.0f64;
    let mut tick = 0u64;
    while Duration::from_millis(tick) < length {
        tokio::time::sleep_until(start + Duration::from_millis(tick)).await;
        due += rate as f64 / 1000.0;
        while due >= 1.0 {
            due -= 1.0;
            requests += 1;
            match limiter.check_local("cold", &target, 1) {
                Some(d) => denied += usize::from(!d.is_allowed()),
                None => {
                    let limiter = limiter.clone();
                    let at = tokio::time::Instant::now();
                    slow.spawn(async move {
                        let d = limiter.check("cold", &get("/hot")).await.unwrap();
                        (at, d)
                    });
                }
            }
        }
        tick += 1;
    }
    let mut waited_at = Vec::new();
    while let Some(done) = slow.join_next().await {
        let (at, d) = done.unwrap();
        denied += usize::from(!d.is_allowed());
        if d.source() == DecisionSource::TokenSource {
            waited_at.push(at);
        }
    }
    waited_at.sort();
    let asked = source.asked.lock().unwrap().clone();
    let answered = source.answered.lock().unwrap().clone();
    ColdRun {
        requests,
        waited_at,
        asked,
        answered,
        denied,
    }
}

#[tokio::test(start_paused = true)]
async fn a_cold_key_on_an_ample_rule_is_local_after_the_second_answer_at_any_rate() {
    // A rule far from scarce (10^9 a second): from 10 to 10^6 requests a second, the first
    // answer tells the rule, the requests that waited for it tell the demand, and the second
    // answer brings a lease that covers the demand with the next lease started ahead: no
    // request issued after the second answer waits for the source.
    for latency_ms in [1, 20, 50] {
        let latency = Duration::from_millis(latency_ms);
        for rate in [10, 100, 1_000, 10_000, 100_000, 1_000_000] {
            // A lease holds at most `lease_size`: where a round trip brings more than a
            // quarter of the default cap (10 000), the cap is raised.
            let cap = if rate as f64 * latency.as_secs_f64() * 4.0 > DEFAULT_LEASE_SIZE as f64 {
                MAX_LEASE_SIZE
            } else {
                DEFAULT_LEASE_SIZE
            };
            let length = Duration::from_millis(if rate >= 100_000 { 400 } else { 3_000 });
            let run = cold_key(
                rate,
                length,
                RefillRate::per_second(1_000_000_000),
                1_000_000_000,
                latency,
                cap,
            )
            .await;
            let at = format!("{rate}/s, {latency_ms} ms: asked {:?}", run.asked);
            assert_eq!(run.denied, 0, "{at}");
            assert!(run.answered.len() >= 2, "{at}");
            let second = run.answered[1];
            let late: Vec<_> = run.waited_at.iter().filter(|&&t| t > second).collect();
            assert!(
                late.is_empty(),
                "{at}: {} waited after the second answer",
                late.len()
            );
            // Those that waited came within the first two round trips (and the millisecond
            // each batch of arrivals is issued in).
            let two_round_trips = (latency * 2 + Duration::from_millis(2)).as_secs_f64();
            assert!(
                run.waited_at.len() as f64 <= rate as f64 * two_round_trips + 2.0,
                "{at}: {} of {} waited",
                run.waited_at.len(),
                run.requests
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_cold_key_on_a_scarce_rule_leases_no_more_than_its_share() {
    // 100 a minute, burst 100, the source 20 ms away, 1000 requests a second: the first
    // answer says 99 are left and nothing of the others' take is known yet, so a lease takes
    // beyond the requests waiting for it at most an eighth of what is left; and the rule
    // refills too little in 100 ms (a sixth of a token) to lease more of it.
    let run = cold_key(
        1_000,
        Duration::from_millis(200),
        RefillRate::per_minute(100),
        100,
        Duration::from_millis(20),
        DEFAULT_LEASE_SIZE,
    )
    .await;
    assert_eq!(run.asked[0], 1, "the rule");
    // The second lease: the ~19 that waited for the first answer, and an eighth of the 99
    // left (12), nothing more.
    let waited_for_first = run
        .waited_at
        .iter()
        .filter(|&&t| t <= run.answered[0])
        .count() as u64;
    assert!(run.asked[1] <= waited_for_first + 99 / 8, "{:?}", run.asked);
    // Never more admitted than the burst and the refill of 200 ms.
    let admitted = run.requests - run.denied;
    assert!(admitted <= 100, "{admitted}");
}
