//! Waiting instead of refusing ([`Limiter::acquire`]): first come first served, refused at
//! once past the wait, cancel-safe, bounded calls; on a manual clock.

use super::*;

/// Jobs: 10 a second, burst 1. The default rule 1/s, burst 5.
fn rules() -> RuleSet {
    RuleSet::builder()
        .default_rule(RefillRate::per_second(1), 5)
        .operation("jobs", "^jobs$", RefillRate::per_second(10), 1)
        .build()
        .unwrap()
}

fn jobs(user: &str) -> [Limit<'_>; 1] {
    [Limit::new(user, Target::operation("jobs"))]
}

/// Lets the spawned tasks run until they wait again.
async fn run_tasks() {
    for _ in 0..64 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn waiters_are_served_first_come_first_served_at_the_refill_rate() {
    let s = setup_with(rules(), true, |b| b);
    let limiter = s.limiter.clone();
    assert!(limiter
        .acquire(&jobs("alice"), Duration::ZERO)
        .await
        .unwrap()
        .is_allowed());
    let order = Arc::new(Mutex::new(Vec::new()));
    for i in 0..5 {
        let (limiter, order) = (limiter.clone(), order.clone());
        tokio::spawn(async move {
            let r = limiter
                .acquire(&jobs("alice"), Duration::from_secs(2))
                .await
                .unwrap();
            assert!(r.is_allowed(), "waiter {i}: {r:?}");
            order.lock().unwrap().push(i);
            let _ = r.settle(&[]);
        });
        run_tasks().await;
    }
    assert!(order.lock().unwrap().is_empty(), "no token yet");
    assert_eq!(s.clock.sleepers(), 1, "only the head sleeps");
    // A token every 100 ms; each waiter wakes up to 2 ms after it (jitter).
    for served in 1..=5 {
        s.clock.advance(Duration::from_millis(103));
        run_tasks().await;
        assert_eq!(
            order.lock().unwrap().len(),
            served,
            "one a tenth of a second"
        );
        assert!(s.clock.sleepers() <= 1);
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
    assert_eq!(s.limiter.inner.waiting.queues(), 0, "the queue is gone");
}

#[tokio::test]
async fn a_request_that_would_wait_too_long_is_refused_at_once() {
    let s = setup_with(rules(), true, |b| b);
    assert!(s
        .limiter
        .acquire(&jobs("alice"), Duration::ZERO)
        .await
        .unwrap()
        .is_allowed());
    // Its token comes in 100 ms: more than 50.
    let refused = s
        .limiter
        .acquire(&jobs("alice"), Duration::from_millis(50))
        .await
        .unwrap();
    assert!(!refused.is_allowed());
    assert!(
        refused.retry_after() >= Duration::from_millis(90),
        "{refused:?}"
    );
    assert_eq!(s.clock.sleepers(), 0, "it did not wait");

    // Behind three waiters (300 ms of tokens), a wait of 250 ms is not enough either.
    for _ in 0..3 {
        let limiter = s.limiter.clone();
        tokio::spawn(async move {
            let r = limiter
                .acquire(&jobs("alice"), Duration::from_secs(5))
                .await;
            let _ = r.map(|r| r.settle(&[]));
        });
        run_tasks().await;
    }
    let behind = s
        .limiter
        .acquire(&jobs("alice"), Duration::from_millis(250))
        .await
        .unwrap();
    assert!(!behind.is_allowed());
    assert!(
        behind.retry_after() >= Duration::from_millis(300),
        "{behind:?}"
    );
}

#[tokio::test]
async fn a_waiter_that_goes_away_takes_nothing() {
    let s = setup_with(rules(), true, |b| b);
    assert!(s
        .limiter
        .acquire(&jobs("alice"), Duration::ZERO)
        .await
        .unwrap()
        .is_allowed());
    let limiter = s.limiter.clone();
    let gone = tokio::spawn(async move {
        let _ = limiter
            .acquire(&jobs("alice"), Duration::from_secs(2))
            .await;
        unreachable!("aborted before its token came");
    });
    run_tasks().await;
    assert_eq!(s.clock.sleepers(), 1);
    gone.abort();
    run_tasks().await;
    assert_eq!(s.clock.sleepers(), 0, "it left");
    assert_eq!(s.limiter.inner.waiting.queues(), 0);
    // Its token is the next request's.
    s.clock.advance(Duration::from_millis(100));
    let next = s
        .limiter
        .acquire(&jobs("alice"), Duration::ZERO)
        .await
        .unwrap();
    assert!(next.is_allowed(), "{next:?}");
}

#[tokio::test]
async fn a_thousand_waiters_cost_calls_per_token_not_per_waiter() {
    let s = setup_with(rules(), true, |b| b);
    let served = Arc::new(AtomicU64::new(0));
    let order = Arc::new(Mutex::new(Vec::new()));
    for i in 0..1_000u64 {
        let (limiter, served, order) = (s.limiter.clone(), served.clone(), order.clone());
        tokio::spawn(async move {
            let r = limiter
                .acquire(&jobs("alice"), Duration::from_secs(200))
                .await
                .unwrap();
            assert!(r.is_allowed());
            order.lock().unwrap().push(i);
            served.fetch_add(1, Ordering::SeqCst);
            let _ = r.settle(&[]);
        });
    }
    run_tasks().await;
    let calls_before = s.source.call_count();
    // A token every 100 ms, and each waiter wakes up to 2 ms after it (jitter).
    let mut most_awake = 0;
    for _ in 0..1_000 {
        s.clock.advance(Duration::from_millis(103));
        run_tasks().await;
        most_awake = most_awake.max(s.clock.sleepers());
    }
    assert_eq!(served.load(Ordering::SeqCst), 1_000);
    let order = order.lock().unwrap();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "first come, first served"
    );
    assert!(most_awake <= 1, "only the head waits on the clock");
    let calls = s.source.call_count() - calls_before;
    assert!(calls <= 1_100, "{calls} calls for 1 000 tokens");
    assert!(s.source.granted() <= 1_001 + 1, "{}", s.source.granted());
}

#[tokio::test]
async fn a_queue_of_its_whole_wait_is_served_though_each_waiter_wakes_late() {
    // The demo's `jobs` (5 a second, burst 1) with a wait of 2 s: 10 waiters fit, 2 do not.
    // The clock moves 205 ms at a time, so each token is taken 5 ms after it came and the
    // full bucket loses that refill: the last waiter's token comes 45 ms after its 2 s.
    let s = setup_with(RuleSet::demo(), true, |b| b);
    let limits = [Limit::new("eve", Target::operation("jobs"))];
    let r = s.limiter.acquire(&limits, Duration::ZERO).await.unwrap();
    let _ = r.settle(&[]);
    let results = Arc::new(Mutex::new(Vec::new()));
    for _ in 0..12 {
        let (limiter, results) = (s.limiter.clone(), results.clone());
        tokio::spawn(async move {
            let limits = [Limit::new("eve", Target::operation("jobs"))];
            let r = limiter
                .acquire(&limits, Duration::from_secs(2))
                .await
                .unwrap();
            results
                .lock()
                .unwrap()
                .push((r.is_allowed(), r.retry_after()));
            let _ = r.settle(&[]);
        });
    }
    run_tasks().await;
    let refused_at_once = results.lock().unwrap().clone();
    assert_eq!(refused_at_once.len(), 2);
    for (allowed, retry_after) in refused_at_once {
        assert!(
            !allowed && retry_after > Duration::from_secs(2),
            "{retry_after:?}"
        );
    }
    for step in 1..=10 {
        s.clock.advance(Duration::from_millis(205));
        run_tasks().await;
        let results = results.lock().unwrap();
        assert_eq!(results.len(), 2 + step);
        assert!(
            results.iter().skip(2).all(|(allowed, _)| *allowed),
            "{results:?}"
        );
    }
}

#[tokio::test]
async fn a_waiter_asks_again_when_a_reservation_gives_tokens_back() {
    // LLM tokens, 10 a second, burst 1 000: 1 000 held; a waiter for 500 would wait 50 s.
    let rules = RuleSet::builder()
        .default_rule(RefillRate::per_second(1), 5)
        .operation("tokens", "^llm_tokens$", RefillRate::per_second(10), 1_000)
        .build()
        .unwrap();
    let s = setup_with(rules, true, |b| b);
    let tokens = |cost| [Limit::new("al", Target::operation("llm_tokens")).with_cost(cost)];
    let held = s.limiter.reserve(&tokens(1_000)).await.unwrap();
    assert!(held.is_allowed());
    let done = Arc::new(Mutex::new(None));
    let (limiter, result) = (s.limiter.clone(), done.clone());
    tokio::spawn(async move {
        let r = limiter
            .acquire(&tokens(500), Duration::from_secs(60))
            .await
            .unwrap();
        *result.lock().unwrap() = Some(r.is_allowed());
        let _ = r.settle(&[500]);
    });
    run_tasks().await;
    assert_eq!(*done.lock().unwrap(), None, "it waits");
    // The held one used 100: 900 back, and the waiter is served without the clock moving.
    let _ = held.settle(&[100]);
    run_tasks().await;
    assert_eq!(*done.lock().unwrap(), Some(true));
}
