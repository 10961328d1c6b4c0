//! Fleet-wide in-flight caps on a real Redis: two stores stand for two processes; a manual
//! clock, through the `test-util` hook, makes slots expire without waiting.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::time::{Duration, Instant};

use lightrate_core::{Acquired, Clock, ErrorKind, InFlight, InFlightSlot, ManualClock};
use lightrate_redis::test_util::{RedisCluster, RedisServer};
use lightrate_redis::{RedisInFlight, DEFAULT_SLOT_TTL};

const TTL: Duration = DEFAULT_SLOT_TTL;
const TIMEOUT: Duration = Duration::from_millis(300);
/// What a loaded two-core machine may add to the timeout.
const MARGIN: Duration = Duration::from_millis(400);
/// How long a spawned release or a background renewal may take to land.
const LANDS: Duration = Duration::from_secs(5);

/// A store ("one process") of application `app`, its time from `clock`; renewed only when a
/// test says (the background pass comes after the test is over).
fn store(url: &str, app: &str, clock: &ManualClock) -> RedisInFlight {
    RedisInFlight::builder()
        .application_id(app)
        .clock(clock.clone())
        .timeout(TIMEOUT)
        .renew_every(TTL - Duration::from_millis(1))
        .connect(url)
        .unwrap()
}

fn clock() -> ManualClock {
    let clock = ManualClock::new();
    clock.advance(Duration::from_secs(1_000));
    clock
}

async fn slot(cap: &InFlight, key: &str) -> Option<InFlightSlot> {
    cap.acquire(key).await.unwrap().into_slot()
}

async fn full(cap: &InFlight, key: &str) -> u32 {
    match cap.acquire(key).await.unwrap() {
        Acquired::Full { in_flight, max } => {
            assert_eq!(max, cap.max());
            in_flight
        }
        Acquired::Slot(_) => panic!("{key}: a slot past the cap"),
    }
}

/// The slots Redis holds under `key`.
async fn zcard(url: &str, key: &str) -> u32 {
    let mut redis = support::redis(url).await;
    redis::cmd("ZCARD")
        .arg(key)
        .query_async(&mut redis)
        .await
        .unwrap()
}

/// Polls `condition` every 5 ms until it holds; fails past [`LANDS`].
async fn until<F: std::future::Future<Output = bool>>(mut condition: impl FnMut() -> F) {
    let start = Instant::now();
    while !condition().await {
        assert!(start.elapsed() < LANDS, "not so within {LANDS:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflight_two_processes_share_a_cap_of_two() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (url, app, clock) = (redis.url(), support::unique_app(), clock());
    let one = InFlight::shared(2, store(&url, &app, &clock)).named("export");
    let two = InFlight::shared(2, store(&url, &app, &clock)).named("export");
    assert!(one.try_acquire_local("alice").is_none());

    let a = slot(&one, "alice").await.unwrap();
    let b = slot(&two, "alice").await.unwrap();
    assert_eq!(full(&two, "alice").await, 2);
    assert_eq!(full(&one, "alice").await, 2);
    // Per identifier, and per name.
    let bob = slot(&two, "bob").await.unwrap();
    let other_name = InFlight::shared(2, store(&url, &app, &clock)).named("upload");
    assert!(slot(&other_name, "alice").await.is_some());
    // Another application never shares a count.
    let other_app =
        InFlight::shared(2, store(&url, &support::unique_app(), &clock)).named("export");
    assert!(slot(&other_app, "alice").await.is_some());

    let key = store(&url, &app, &clock).slots_key("export", "alice");
    assert_eq!(zcard(&url, &key).await, 2);
    drop((a, b, bob));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflight_release_frees_a_slot_for_the_other_process() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (url, app, clock) = (redis.url(), support::unique_app(), clock());
    let (store_one, store_two) = (store(&url, &app, &clock), store(&url, &app, &clock));
    let key = store_one.slots_key("default", "alice");
    let one = InFlight::shared(1, store_one.clone());
    let two = InFlight::shared(1, store_two.clone());

    let a = slot(&one, "alice").await.unwrap();
    assert_eq!(store_one.held(), 1);
    assert_eq!(full(&two, "alice").await, 1);
    // Released and waited for.
    a.release().await.unwrap();
    assert_eq!(store_one.held(), 0);
    assert_eq!(zcard(&url, &key).await, 0);
    let b = slot(&two, "alice").await.unwrap();
    assert_eq!(full(&one, "alice").await, 1);
    // Dropped (the response sent, or the request's future dropped): released in the
    // background, at once forgotten by its store.
    drop(b);
    assert_eq!(store_two.held(), 0);
    until(|| async { zcard(&url, &key).await == 0 }).await;
    assert!(slot(&one, "alice").await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflight_killed_process_slots_expire_after_the_ttl() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (url, app, clock) = (redis.url(), support::unique_app(), clock());
    let dying = store(&url, &app, &clock);
    let one = InFlight::shared(2, dying.clone());
    let two = InFlight::shared(2, store(&url, &app, &clock));
    let held = [
        slot(&one, "alice").await.unwrap(),
        slot(&one, "alice").await.unwrap(),
    ];
    // Killed: no release, no renewal.
    dying.crash();
    drop(held);
    drop((one, dying));
    assert_eq!(full(&two, "alice").await, 2);
    // Its slots count for the TTL...
    clock.advance(TTL - Duration::from_millis(1));
    assert_eq!(full(&two, "alice").await, 2);
    // ...and not a millisecond longer.
    clock.advance(Duration::from_millis(1));
    let a = slot(&two, "alice").await.unwrap();
    let b = slot(&two, "alice").await.unwrap();
    assert_eq!(full(&two, "alice").await, 2);
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflight_renewal_keeps_a_slot_past_the_ttl() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (url, app, clock) = (redis.url(), support::unique_app(), clock());
    let long = store(&url, &app, &clock);
    let one = InFlight::shared(1, long.clone());
    let two = InFlight::shared(1, store(&url, &app, &clock));
    let a = slot(&one, "alice").await.unwrap();
    clock.advance(TTL * 2 / 3);
    assert_eq!(long.renew().await.unwrap(), 1);
    // Past the TTL of the slot as taken: renewed, it still counts.
    clock.advance(TTL * 2 / 3);
    assert_eq!(full(&two, "alice").await, 1);
    assert_eq!(long.renew().await.unwrap(), 1);
    clock.advance(TTL - Duration::from_millis(1));
    assert_eq!(full(&two, "alice").await, 1);
    // Not renewed for a whole TTL: it expires, and the renewal finds it lost.
    clock.advance(Duration::from_millis(1));
    let b = slot(&two, "alice").await.unwrap();
    assert_eq!(long.renew().await.unwrap(), 0);
    assert_eq!(long.held(), 0);
    // A lost slot's release does not free the other process's slot.
    a.release().await.unwrap();
    assert_eq!(full(&one, "alice").await, 1);
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflight_background_renewal_runs_every_interval() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (url, clock) = (redis.url(), clock());
    let store = RedisInFlight::builder()
        .application_id(support::unique_app())
        .clock(clock.clone())
        .renew_every(Duration::from_millis(20))
        .connect(&url)
        .unwrap();
    let key = store.slots_key("default", "alice");
    let cap = InFlight::shared(1, store.clone());
    let _a = slot(&cap, "alice").await.unwrap();
    let expiry = || async {
        let mut redis = support::redis(&url).await;
        let members: Vec<(String, u64)> = redis::cmd("ZRANGE")
            .arg(&key)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut redis)
            .await
            .unwrap();
        assert_eq!(members.len(), 1);
        members[0].1
    };
    let ms = |clock: &ManualClock| clock.now().as_nanos() / 1_000_000;
    assert_eq!(expiry().await, ms(&clock) + TTL.as_millis() as u64);
    clock.advance(Duration::from_secs(10));
    let renewed = ms(&clock) + TTL.as_millis() as u64;
    until(|| async { expiry().await == renewed }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflight_redis_down_is_an_outage_within_the_timeout() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let (url, app, clock) = (redis.url(), support::unique_app(), clock());
    let cap = InFlight::shared(2, store(&url, &app, &clock));
    let held = slot(&cap, "alice").await.unwrap();
    redis.kill();
    for key in ["alice", "bob"] {
        let start = Instant::now();
        let e = cap.acquire(key).await.unwrap_err();
        let took = start.elapsed();
        assert!(e.is_outage(), "{e:?}");
        assert!(
            matches!(e.kind(), ErrorKind::Network | ErrorKind::Timeout),
            "{e:?}"
        );
        assert!(took < TIMEOUT + MARGIN, "{took:?}");
    }
    // A release that cannot reach Redis is an outage too (the slot is left to expire).
    let e = held.release().await.unwrap_err();
    assert!(e.is_outage(), "{e:?}");
    // A Redis stalled (no answer at all): a timeout.
    redis.restart();
    let cap = InFlight::shared(2, store(&url, &app, &clock));
    assert!(slot(&cap, "carol").await.is_some());
    redis.pause();
    let start = Instant::now();
    let e = cap.acquire("carol").await.unwrap_err();
    let took = start.elapsed();
    redis.resume();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e:?}");
    assert!(took >= TIMEOUT && took < TIMEOUT + MARGIN, "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflight_cluster_shares_a_cap_across_two_stores() {
    let Some(cluster) = RedisCluster::start(3) else {
        return;
    };
    let (app, clock) = (support::unique_app(), clock());
    let stores: Vec<RedisInFlight> = (0..2)
        .map(|_| {
            RedisInFlight::builder()
                .application_id(&app)
                .clock(clock.clone())
                .connect_cluster(cluster.urls())
                .unwrap()
        })
        .collect();
    let one = InFlight::shared(2, stores[0].clone()).named("export");
    let two = InFlight::shared(2, stores[1].clone()).named("export");
    let users: Vec<String> = (0..12).map(|i| format!("user-{i}")).collect();
    // The identifiers' keys are spread over the nodes.
    let primaries: std::collections::HashSet<usize> = users
        .iter()
        .map(|u| {
            let slot = cluster.key_slot(&stores[0].slots_key("export", u));
            cluster.primary_of(slot, 0).unwrap()
        })
        .collect();
    assert!(primaries.len() >= 2, "{primaries:?}");
    let mut held = Vec::new();
    for user in &users {
        held.push(slot(&one, user).await.unwrap());
        held.push(slot(&two, user).await.unwrap());
        assert_eq!(full(&one, user).await, 2, "{user}");
        assert_eq!(full(&two, user).await, 2, "{user}");
    }
    // A slot released by one process is the other's to take.
    let released = held.swap_remove(0);
    released.release().await.unwrap();
    assert!(slot(&two, &users[0]).await.is_some());
    assert_eq!(stores[0].held() + stores[1].held(), 2 * users.len() - 1);
    drop(held);
}
