//! One sick node of a Redis Cluster is one sick node: a 6-node cluster (3 primaries, 3
//! replicas, `cluster-node-timeout` 1000 ms) started by the test, a primary killed or stopped
//! (`SIGSTOP`) under load. Keys on the other primaries are served throughout; the sick
//! primary's keys get outage errors within the timeout, never a hang, and are served again as
//! soon as its replica is promoted; a limiter's breaker does not open for every key; an app's
//! leased tokens carry it through the failover. Every wait is a poll with a deadline.
#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lightrate_core::{
    BreakerState, ConsumeRequest, ConsumeTokensResponse, DecisionSource, Error, Limiter,
    OnUnavailable, RefillRate, RuleSet, Target, TokenSource,
};
use lightrate_redis::test_util::RedisCluster;
use lightrate_redis::RedisSource;

const TIMEOUT: Duration = Duration::from_millis(500);
/// What a loaded two-core machine may add to the timeout.
const MARGIN: Duration = Duration::from_millis(400);
/// How long a failover may take here (detection ~1 s, election ~1 s, a loaded machine).
const FAILOVER: Duration = Duration::from_secs(15);
/// How soon after the replica's promotion its slots must be served.
const SERVED_AGAIN: Duration = Duration::from_secs(1);

/// One cluster at a time: three 6-node clusters failing over at once on two cores would test
/// the machine, not the code.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn target() -> Target<'static> {
    Target::operation("send_email")
}

fn source(cluster: &RedisCluster, rules: RuleSet) -> RedisSource {
    RedisSource::builder(rules)
        .application_id(support::unique_app())
        .timeout(TIMEOUT)
        .connect_cluster(cluster.urls())
        .unwrap()
}

/// Users and the slots of their buckets.
type Users = Vec<(String, u16)>;

/// Users whose buckets live on the primary `victim`, and users whose buckets live elsewhere
/// (`n` of each), with their slots.
fn users(cluster: &RedisCluster, source: &RedisSource, victim: usize, n: usize) -> (Users, Users) {
    let (mut sick, mut healthy) = (Vec::new(), Vec::new());
    for i in 0.. {
        if sick.len() >= n && healthy.len() >= n {
            break;
        }
        let user = format!("user-{i}");
        let slot = cluster.key_slot(&source.bucket_key(&user, &target()));
        let on_victim = cluster.primary_of(slot, 0) == Some(victim);
        let group = if on_victim { &mut sick } else { &mut healthy };
        if group.len() < n {
            group.push((user, slot));
        }
    }
    (sick, healthy)
}

async fn consume(source: &RedisSource, user: &str, n: u64) -> Result<ConsumeTokensResponse, Error> {
    source
        .consume_tokens(ConsumeRequest::new(user, &target(), n))
        .await
}

/// What a load task saw: every call's start (from the test's start), latency, and outcome.
#[derive(Default)]
struct Seen {
    calls: Vec<(Duration, Duration, Result<(), Error>)>,
}

/// What load tasks have done so far, for the test to wait on.
#[derive(Default)]
struct Progress {
    calls: AtomicU64,
    failures: AtomicU64,
    /// A call was answered after a failure of the same group.
    recovered: AtomicBool,
}

/// Consumes one token for each of `users` in turn until `stop`.
fn load(
    source: Arc<RedisSource>,
    users: Vec<String>,
    start: Instant,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
) -> tokio::task::JoinHandle<Seen> {
    tokio::spawn(async move {
        let mut seen = Seen::default();
        for user in users.iter().cycle() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let at = start.elapsed();
            let result = consume(&source, user, 1).await.map(drop);
            let failed = result.is_err();
            seen.calls.push((at, start.elapsed() - at, result));
            progress.calls.fetch_add(1, Ordering::Relaxed);
            if failed {
                progress.failures.fetch_add(1, Ordering::Relaxed);
                // As a client would after a 503: not a busy loop on a dead node.
                tokio::time::sleep(Duration::from_millis(5)).await;
            } else if progress.failures.load(Ordering::Relaxed) > 0 {
                progress.recovered.store(true, Ordering::Relaxed);
            }
        }
        seen
    })
}

/// Polls `condition` every 5 ms until it holds; fails past `limit`.
async fn until(limit: Duration, what: &str, condition: impl Fn() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn p50(latencies: &mut [Duration]) -> Duration {
    latencies.sort();
    latencies
        .get(latencies.len() / 2)
        .copied()
        .unwrap_or_default()
}

/// Waits (off the runtime's threads) until every running node names a running primary other
/// than `victim` for `slot`; the time from `start` when it did.
async fn promoted(
    cluster: &Arc<Mutex<RedisCluster>>,
    victim: usize,
    slot: u16,
    start: Instant,
) -> Duration {
    let cluster = cluster.clone();
    tokio::task::spawn_blocking(move || {
        let cluster = cluster.lock().unwrap();
        let running: Vec<usize> = (0..cluster.nodes().len())
            .filter(|&i| i != victim && cluster.nodes()[i].is_running())
            .collect();
        let done = cluster.wait_until(FAILOVER, |c| {
            running.iter().all(|&asked| {
                c.primary_of(slot, asked)
                    .is_some_and(|p| p != victim && running.contains(&p))
            })
        });
        assert!(done, "no replica promoted within {FAILOVER:?}");
        start.elapsed()
    })
    .await
    .unwrap()
}

/// Waits until the primary `victim` has sent everything to its replicas (so that what was
/// spent survives its death).
fn replicated(cluster: &RedisCluster, victim: usize) {
    let done = cluster.wait_replicated(victim, Duration::from_secs(10));
    assert!(done, "the replica did not catch up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_fails_only_its_own_keys_and_they_are_served_once_its_replica_is_promoted()
{
    let _serial = SERIAL.lock().await;
    let Some(cluster) = RedisCluster::start_with_replicas(3, 1) else {
        return;
    };
    // Buckets that do not refill within the test: what is spent stays spent.
    let rules = RuleSet::builder()
        .default_rule(RefillRate::per_hour(1), 10)
        .build()
        .unwrap();
    let source = Arc::new(source(&cluster, rules));
    let victim = cluster.primary_of(0, 0).unwrap();
    let (sick, healthy) = users(&cluster, &source, victim, 12);
    // Every user served before, and one of the victim's users spent to the last token.
    for (user, _) in sick.iter().chain(&healthy) {
        consume(&source, user, 1).await.unwrap();
    }
    let spent = &sick[0].0;
    assert_eq!(
        consume(&source, spent, 100).await.unwrap().tokens_consumed,
        9
    );
    replicated(&cluster, victim);

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let names = |group: &[(String, u16)], part: usize| -> Vec<String> {
        group
            .iter()
            .skip(part)
            .step_by(3)
            .map(|(u, _)| u.clone())
            .collect()
    };
    let (healthy_progress, sick_progress) =
        (Arc::<Progress>::default(), Arc::<Progress>::default());
    let healthy_tasks: Vec<_> = (0..3)
        .map(|part| {
            let progress = healthy_progress.clone();
            load(
                source.clone(),
                names(&healthy, part),
                start,
                stop.clone(),
                progress,
            )
        })
        .collect();
    let sick_task = load(
        source.clone(),
        names(&sick[1..], 0),
        start,
        stop.clone(),
        sick_progress.clone(),
    );
    until(FAILOVER, "traffic before the fault", || {
        sick_progress.calls.load(Ordering::Relaxed) >= 50
    })
    .await;
    let cluster = Arc::new(Mutex::new(cluster));
    let killed = start.elapsed();
    cluster.lock().unwrap().kill(victim);
    let promoted_at = promoted(&cluster, victim, sick[1].1, start).await;
    // Traffic until the victim's keys are served again (how soon is checked below).
    until(FAILOVER, "the victim's keys served again", || {
        sick_progress.recovered.load(Ordering::Relaxed)
    })
    .await;
    stop.store(true, Ordering::Relaxed);

    let mut healthy_calls = 0;
    for task in healthy_tasks {
        for (at, took, result) in task.await.unwrap().calls {
            healthy_calls += 1;
            assert!(result.is_ok(), "a healthy key failed {at:?} in: {result:?}");
            assert!(took < TIMEOUT + MARGIN, "a healthy key took {took:?}");
        }
    }
    let sick_calls = sick_task.await.unwrap().calls;
    let mut failed = 0;
    for (at, took, result) in &sick_calls {
        assert!(took < &(TIMEOUT + MARGIN), "a call took {took:?}");
        if let Err(e) = result {
            failed += 1;
            assert!(e.is_outage(), "{e:?}");
            assert!(e.is_partial(), "{e:?}");
            assert!(*at + *took >= killed, "failed before the kill: {e:?}");
        }
    }
    let last_failure = sick_calls
        .iter()
        .filter(|(_, _, r)| r.is_err())
        .map(|(at, took, _)| *at + *took)
        .max()
        .unwrap_or(killed);
    let served_again = sick_calls
        .iter()
        .find(|(at, _, r)| r.is_ok() && *at >= last_failure)
        .map(|(at, took, _)| *at + *took)
        .expect("the victim's keys were not served again");
    println!(
        "killed at {killed:?}, replica promoted at {promoted_at:?}, victim's keys served again at \
         {served_again:?}; {healthy_calls} healthy calls all served, {failed} of {} on the \
         victim failed",
        sick_calls.len()
    );
    assert!(failed > 0, "the kill was not felt");
    assert!(healthy_calls > 100, "{healthy_calls}");
    assert!(
        served_again <= promoted_at + SERVED_AGAIN,
        "served again {:?} after the promotion",
        served_again.saturating_sub(promoted_at)
    );
    // The spent bucket is still spent on the promoted replica.
    assert_eq!(consume(&source, spent, 1).await.unwrap().tokens_consumed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_primary_slows_only_its_own_keys_and_they_never_hang() {
    let _serial = SERIAL.lock().await;
    let Some(cluster) = RedisCluster::start_with_replicas(3, 1) else {
        return;
    };
    let source = Arc::new(source(&cluster, RuleSet::demo()));
    let victim = cluster.primary_of(0, 0).unwrap();
    let (sick, healthy) = users(&cluster, &source, victim, 12);
    for (user, _) in sick.iter().chain(&healthy) {
        consume(&source, user, 1).await.unwrap();
    }
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let names = |group: &[(String, u16)], part: usize| -> Vec<String> {
        group
            .iter()
            .skip(part)
            .step_by(3)
            .map(|(u, _)| u.clone())
            .collect()
    };
    // The healthy keys' own clients; the stalled keys' clients apart.
    let progress = Arc::<Progress>::default();
    let healthy_tasks: Vec<_> = (0..3)
        .map(|part| {
            let progress = progress.clone();
            load(
                source.clone(),
                names(&healthy, part),
                start,
                stop.clone(),
                progress,
            )
        })
        .collect();
    let sick_tasks: Vec<_> = (0..2)
        .map(|part| {
            let progress = Arc::default();
            load(
                source.clone(),
                names(&sick, part),
                start,
                stop.clone(),
                progress,
            )
        })
        .collect();
    // A baseline of healthy latencies before the fault.
    until(FAILOVER, "traffic before the fault", || {
        progress.calls.load(Ordering::Relaxed) >= 1_000
    })
    .await;
    cluster.nodes()[victim].pause();
    let paused_at = start.elapsed();
    // The fault itself: the node is stopped this long (its replica may take over meanwhile).
    tokio::time::sleep(Duration::from_secs(4)).await;
    cluster.nodes()[victim].resume();
    let resumed_at = start.elapsed();
    stop.store(true, Ordering::Relaxed);

    let (mut before_ms, mut during_ms) = (Vec::new(), Vec::new());
    for task in healthy_tasks {
        for (at, took, result) in task.await.unwrap().calls {
            assert!(result.is_ok(), "a healthy key failed {at:?} in: {result:?}");
            if at < paused_at {
                before_ms.push(took);
            } else if at + took <= resumed_at {
                during_ms.push(took);
            }
        }
    }
    let (mut timed_out, mut sick_calls) = (0, 0);
    for task in sick_tasks {
        for (_, took, result) in task.await.unwrap().calls {
            sick_calls += 1;
            assert!(
                took < TIMEOUT + MARGIN,
                "a stalled key's call took {took:?}"
            );
            if let Err(e) = result {
                assert!(e.is_outage(), "{e:?}");
                timed_out += 1;
            }
        }
    }
    let (p50_before, p50_during) = (p50(&mut before_ms), p50(&mut during_ms));
    println!(
        "healthy p50 {p50_before:?} before ({} calls), {p50_during:?} while stalled ({} calls); \
         {timed_out} of {sick_calls} stalled-key calls failed",
        before_ms.len(),
        during_ms.len()
    );
    assert!(timed_out > 0, "the stall was not felt");
    assert!(during_ms.len() > 100, "{}", during_ms.len());
    // Within 2x, with 1 ms of slack for sub-millisecond latencies on a shared machine.
    assert!(
        p50_during <= 2 * p50_before + Duration::from_millis(1),
        "healthy p50 {p50_before:?} before, {p50_during:?} during the stall"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limiter_keeps_serving_its_leases_and_other_nodes_keys_through_a_failover() {
    let _serial = SERIAL.lock().await;
    let Some(cluster) = RedisCluster::start_with_replicas(3, 1) else {
        return;
    };
    let rules = RuleSet::builder()
        .default_rule(RefillRate::per_second(1), 1000)
        .build()
        .unwrap();
    let redis = RedisSource::builder(rules.clone())
        .application_id(support::unique_app())
        .timeout(TIMEOUT)
        .connect_cluster(cluster.urls())
        .unwrap();
    let victim = cluster.primary_of(0, 0).unwrap();
    let (sick, healthy) = users(&cluster, &redis, victim, 6);
    // The app: leases of 300 tokens that last, no refills ahead (so that local hits need no
    // call at all), and a breaker that opens after 3 failures.
    let leased = Limiter::builder(redis.clone())
        .lease_size(300)
        .min_lease_size(300)
        .token_horizon(Duration::from_secs(60))
        .refill_ahead(false)
        .on_unavailable(OnUnavailable::Deny)
        .circuit_breaker(3, Duration::from_secs(30))
        .build();
    // Another app on one call per request, to see the breaker.
    let per_request = Limiter::builder(redis)
        .lease_size(1)
        .on_unavailable(OnUnavailable::Deny)
        .circuit_breaker(3, Duration::from_secs(30))
        .build();
    let app_user = &sick[0].0;
    // The first lease is small (the source's level unknown); the next ones are 300.
    for _ in 0..3 {
        assert!(leased
            .check(app_user, &target())
            .await
            .unwrap()
            .is_allowed());
    }
    let stats = leased.stats();
    assert!(stats.leased_tokens >= 300, "{stats:?}");
    let calls = stats.source_calls;
    for (user, _) in sick.iter().chain(&healthy) {
        assert!(per_request
            .check(user, &target())
            .await
            .unwrap()
            .is_allowed());
    }

    let cluster = Arc::new(Mutex::new(cluster));
    cluster.lock().unwrap().kill(victim);
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let watch = {
        let cluster = cluster.clone();
        let stop = stop.clone();
        let slot = sick[0].1;
        tokio::spawn(async move {
            let at = promoted(&cluster, victim, slot, start).await;
            stop.store(true, Ordering::Relaxed);
            at
        })
    };
    let (mut local_hits, mut healthy_served, mut sick_refused) = (0, 0, 0);
    while !stop.load(Ordering::Relaxed) {
        // The app's local tokens: no call, whatever Redis does.
        let hit = leased.check(app_user, &target()).await.unwrap();
        assert!(hit.is_allowed());
        assert_eq!(hit.source(), DecisionSource::LocalBucket);
        local_hits += 1;
        // Keys on the sick node follow the outage policy; the others are served by Redis.
        for (user, _) in &sick[1..] {
            let d = per_request.check(user, &target()).await.unwrap();
            if d.source() == DecisionSource::Unavailable {
                sick_refused += 1;
            }
        }
        for (user, _) in &healthy {
            let d = per_request.check(user, &target()).await.unwrap();
            assert!(d.is_allowed(), "{d:?}");
            assert_ne!(d.source(), DecisionSource::Unavailable);
            healthy_served += 1;
        }
        assert_eq!(per_request.stats().breaker, BreakerState::Closed);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let promoted_at = watch.await.unwrap();
    assert_eq!(
        leased.stats().source_calls,
        calls,
        "a local hit called Redis"
    );
    println!(
        "failover {promoted_at:?}: {local_hits} local hits, no call; {healthy_served} healthy \
         keys served, {sick_refused} refusals on the sick node's keys"
    );
    assert!(local_hits > 5 && healthy_served > 0 && sick_refused > 0);
}
