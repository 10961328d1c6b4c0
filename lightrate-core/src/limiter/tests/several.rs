//! Several limits in one decision, all or nothing, on a manual clock.

use super::*;

/// Per second (2/s, burst 5), per day (12), per organisation (1/min, burst 8), a scarce
/// operation (burst 3) and an ample one; the default rule 1/s, burst 5.
fn rules() -> RuleSet {
    RuleSet::builder()
        .default_rule(RefillRate::per_second(1), 5)
        .operation("per second", "^sec$", RefillRate::per_second(2), 5)
        .operation("per day", "^day$", RefillRate::per_day(12), 12)
        .operation("per org", "^org$", RefillRate::per_minute(1), 8)
        .operation("scarce", "^scarce$", RefillRate::per_hour(1), 3)
        .operation(
            "ample",
            "^ample$",
            RefillRate::per_second(1_000_000),
            1_000_000,
        )
        .build()
        .unwrap()
}

fn op(name: &'static str) -> Target<'static> {
    Target::operation(name)
}

async fn check_all(s: &Setup, limits: &[Limit<'_>]) -> Decisions {
    s.limiter.check_all(limits).await.unwrap()
}

/// Tokens the source granted under `rule` (its id).
fn granted_under(s: &Setup, rule: &str) -> u64 {
    let answers = s.source.answers.lock().unwrap();
    answers
        .iter()
        .filter(|(_, id, _, _)| id == rule)
        .map(|(_, _, granted, _)| granted)
        .sum()
}

#[tokio::test]
async fn the_per_second_limit_refusing_takes_nothing_from_the_day() {
    let s = setup_with(rules(), true, |b| b);
    let limits = [
        Limit::new("alice", op("sec")),
        Limit::new("alice", op("day")),
    ];
    let mut admitted = 0;
    // Ten requests a second for a minute: the day's 12 are all admitted, and only 12.
    for _ in 0..60 {
        let mut this_second = 0;
        for _ in 0..10 {
            let d = check_all(&s, &limits).await;
            if d.is_allowed() {
                this_second += 1;
            } else {
                assert!(d.refusing().count() >= 1);
                assert!(d.retry_after() > Duration::ZERO);
            }
        }
        assert!(this_second <= 5, "{this_second} in one second");
        admitted += this_second;
        s.clock.advance(Duration::from_secs(1));
    }
    assert_eq!(admitted, 12, "the refused requests drained the day");
    // Once the day is spent, it is the day that refuses, for hours.
    let d = check_all(&s, &limits).await;
    assert!(!d.is_allowed());
    assert!(d.retry_after() > Duration::from_secs(3600), "{d:?}");
}

#[tokio::test]
async fn one_user_over_many_organisations_is_limited_by_both() {
    // The stacking case: 25 requests of one user (`/hello`, burst 20), each of another
    // organisation (burst 8 each).
    let s = setup_with(rules(), true, |b| b);
    let hello = get("/hello");
    let orgs: Vec<String> = (0..25).map(|i| format!("org{i}")).collect();
    let mut admitted = 0;
    for org in &orgs {
        let d = check_all(
            &s,
            &[
                Limit::new("alice", get("/hello")),
                Limit::new(org, op("org")),
            ],
        )
        .await;
        if d.is_allowed() {
            admitted += 1;
        }
    }
    // The user's burst is... the default rule's 5 under these rules.
    let burst = s
        .limiter
        .check("nobody", &hello)
        .await
        .unwrap()
        .rule()
        .unwrap()
        .burst_rate();
    assert_eq!(admitted, burst);
    // The refused requests' organisations kept their whole budget: 8 each.
    for org in &orgs[burst as usize..] {
        let mut left = 0;
        for _ in 0..10 {
            if s.limiter.check(org, &op("org")).await.unwrap().is_allowed() {
                left += 1;
            }
        }
        assert_eq!(left, 8, "{org}");
    }
}

#[tokio::test]
async fn retry_after_is_the_longest_among_the_refusals() {
    let s = setup_with(rules(), true, |b| b);
    let limits = [
        Limit::new("bob", op("sec")).with_cost(5),
        Limit::new("bob", op("org")).with_cost(8),
    ];
    assert!(check_all(&s, &limits).await.is_allowed());
    let d = check_all(&s, &limits).await;
    assert!(!d.is_allowed());
    assert_eq!(d.refusing().count(), 2, "{d:?}");
    let per_second = d.get(0).unwrap().retry_after();
    let per_org = d.get(1).unwrap().retry_after();
    assert!(per_org > per_second);
    assert_eq!(d.retry_after(), per_org);
    assert_eq!(d.deciding().unwrap().retry_after(), per_org);
}

#[tokio::test]
async fn a_limit_that_refuses_locally_keeps_the_others_from_the_source() {
    let s = setup_with(rules(), true, |b| b);
    // Spend the scarce operation, until the denial cache knows it.
    while check(&s, "carol", &op("scarce")).await.is_allowed() {}
    let calls = s.source.call_count();
    let d = check_all(
        &s,
        &[
            Limit::new("carol", op("ample")),
            Limit::new("carol", op("scarce")),
        ],
    )
    .await;
    assert!(!d.is_allowed());
    assert_eq!(d.get(1).unwrap().source(), DecisionSource::DenialCache);
    // The ample limit had no bucket yet: it was not asked.
    assert!(d.get(0).is_none());
    assert_eq!(s.source.call_count(), calls);
}

#[tokio::test(start_paused = true)]
async fn two_misses_cost_one_round_trip() {
    let s = setup_with(rules(), true, |b| b);
    *s.source.delay.lock().unwrap() = Some(Duration::from_millis(20));
    let started = tokio::time::Instant::now();
    let d = check_all(
        &s,
        &[Limit::new("dave", op("sec")), Limit::new("dave", op("day"))],
    )
    .await;
    assert!(d.is_allowed());
    assert_eq!(started.elapsed(), Duration::from_millis(20));
    assert_eq!(s.source.call_count(), 2);
    assert!(d
        .iter()
        .all(|d| d.unwrap().source() == DecisionSource::TokenSource));
}

#[tokio::test]
async fn a_refusal_from_the_source_gives_the_others_tokens_back() {
    let s = setup_with(rules(), true, |b| b.min_lease_size(10));
    // The ample bucket holds tokens; the user's scarce one is spent at the source
    // by another process.
    assert!(check(&s, "acme", &op("ample")).await.is_allowed());
    assert!(check(&s, "acme", &op("ample")).await.is_allowed());
    let held = s.limiter.held_tokens();
    assert!(held > 0);
    for _ in 0..3 {
        let other = s
            .source
            .inner
            .consume_now(ConsumeRequest::new("erin", &op("scarce"), 1));
        assert_eq!(other.unwrap().tokens_consumed, 1);
    }
    let local_hits = s.limiter.stats().local_hits;
    let d = check_all(
        &s,
        &[
            Limit::new("acme", op("ample")),
            Limit::new("erin", op("scarce")),
        ],
    )
    .await;
    assert!(!d.is_allowed());
    // The local take went back before the source was asked (a take is not held across a
    // round trip), and was not taken again once the source refused.
    assert!(d.get(0).is_none());
    assert_eq!(d.get(1).unwrap().source(), DecisionSource::TokenSource);
    assert_eq!(s.limiter.held_tokens(), held, "the local token went back");
    assert_eq!(s.limiter.stats().local_hits, local_hits);
}

#[tokio::test]
async fn a_grant_given_back_serves_the_next_request() {
    let s = setup_with(rules(), true, |b| b);
    // The scarce limit refuses locally; the ample one's first request is granted by the
    // source and its token goes back to the bucket the lease filled.
    assert!(check(&s, "fay", &op("ample")).await.is_allowed());
    while check(&s, "fay", &op("scarce")).await.is_allowed() {}
    let granted = s.source.granted();
    let held = s.limiter.held_tokens();
    let d = check_all(
        &s,
        &[
            Limit::new("fay", op("ample")),
            Limit::new("fay", op("scarce")),
        ],
    )
    .await;
    assert!(!d.is_allowed());
    assert_eq!(s.limiter.held_tokens(), held);
    assert_eq!(s.source.granted(), granted);
    // Nothing was admitted: every granted token is held, admitted alone, or lost.
    let admitted_alone = 1 + 3;
    let stats = s.limiter.stats();
    assert_eq!(
        granted_under(&s, "rule_ample") + granted_under(&s, "rule_scarce"),
        admitted_alone + s.limiter.held_tokens() + stats.expired_tokens
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_on_a_scarce_and_an_ample_limit_admit_what_the_scarce_grants() {
    let s = setup_with(rules(), true, |b| b.refill_ahead(true));
    let admitted = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let limiter = s.limiter.clone();
            let admitted = admitted.clone();
            tokio::spawn(async move {
                for _ in 0..50 {
                    let d = limiter
                        .check_all(&[
                            Limit::new("gus", op("ample")),
                            Limit::new("gus", op("scarce")),
                        ])
                        .await
                        .unwrap();
                    if d.is_allowed() {
                        admitted.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(admitted.load(Ordering::SeqCst), 3);
    // The ample limit's tokens were taken only by the three admitted requests.
    let stats = s.limiter.stats();
    let ample = granted_under(&s, "rule_ample");
    let held = s.limiter.held_tokens();
    assert_eq!(ample, 3 + held + stats.expired_tokens, "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn a_wait_dropped_gives_back_what_it_took() {
    let s = setup_with(rules(), true, |b| b);
    assert!(check(&s, "hal", &op("org")).await.is_allowed());
    assert!(check(&s, "hal", &op("org")).await.is_allowed());
    let held = s.limiter.held_tokens();
    *s.source.delay.lock().unwrap() = Some(Duration::from_secs(10));
    let limits = [Limit::new("hal", op("org")), Limit::new("hal", op("day"))];
    let wait = s.limiter.check_all(&limits);
    // The client goes away while the day's limit asks the source.
    let timed_out = tokio::time::timeout(Duration::from_millis(5), wait).await;
    assert!(timed_out.is_err());
    assert_eq!(s.limiter.held_tokens(), held);
}

/// One step of random traffic over two limits.
#[derive(Clone, Debug)]
struct Step {
    first: usize,
    second: usize,
    cost: u64,
    advance_ms: u64,
}

fn step() -> impl Strategy<Value = Step> {
    (
        0..4usize,
        0..4usize,
        1..4u64,
        prop_oneof![Just(0u64), 0..3_000u64],
    )
        .prop_map(|(first, second, cost, advance_ms)| Step {
            first,
            second,
            cost,
            advance_ms,
        })
}

const TARGETS: [&str; 4] = ["sec", "day", "org", "scarce"];
const IDS: [&str; 4] = [
    "rule_per_second",
    "rule_per_day",
    "rule_per_org",
    "rule_scarce",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn no_token_leaves_a_limit_for_a_refused_request(steps in proptest::collection::vec(step(), 1..120)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let s = setup_with(rules(), true, |b| b);
            let mut admitted = [0u64; 4];
            for step in &steps {
                s.clock.advance(Duration::from_millis(step.advance_ms));
                let limits = [
                    Limit::new("u", op(TARGETS[step.first])).with_cost(step.cost),
                    Limit::new("u", op(TARGETS[step.second])),
                ];
                let d = s.limiter.check_all(&limits).await.unwrap();
                if d.is_allowed() {
                    admitted[step.first] += step.cost;
                    admitted[step.second] += 1;
                } else {
                    // The retry-after is the longest of the refusals.
                    let longest = d.refusing().map(|(_, d)| d.retry_after()).max().unwrap();
                    prop_assert_eq!(d.retry_after(), longest);
                }
                // Held and lost, by rule id.
                let inner = &s.limiter.inner;
                let mut by_id: std::collections::HashMap<String, (u64, u64)> = Default::default();
                for (slot, held) in inner.buckets.held().0 {
                    let id = inner.routes.id_of(slot).unwrap().to_string();
                    by_id.entry(id).or_default().0 += held;
                }
                inner.counters.for_each_rule(|slot, c| {
                    if let Some(id) = inner.routes.id_of(slot) {
                        by_id.entry(id.to_string()).or_default().1 +=
                            crate::limiter::counters::read(&c.expired);
                    }
                });
                for (i, id) in IDS.iter().enumerate() {
                    let granted = granted_under(&s, id);
                    // Never more admitted than granted.
                    prop_assert!(admitted[i] <= granted, "{id}: {} > {granted}", admitted[i]);
                    let (held, expired) = by_id.get(*id).copied().unwrap_or_default();
                    // Every granted token is admitted, held, or lost: none left with a
                    // refused request.
                    prop_assert_eq!(granted, admitted[i] + held + expired, "{}", id);
                }
            }
            Ok(())
        })?;
    }
}
